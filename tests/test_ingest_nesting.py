"""JSON nested past records.MAX_DEPTH is quarantined before any parser sees it, in every format and on both
ingest paths; the good lines around it land. Each ingest runs in a subprocess: Arrow's reader used to
segfault at 10,000 levels, which must fail the test, not end pytest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ingest.intake.records import MAX_DEPTH, TOO_DEEP

T0 = "2026-11-20T03:00:00+00:00"
NS0 = 1_763_600_000_000_000_000
DEEP = (1_000, 100_000)  # Python's json gives up near 1,000, Arrow crashed near 10,000


def nested(depth: int) -> str:
    """A JSON value `depth` levels deep, alternating arrays and objects."""
    opens = "".join("[" if i % 2 else '{"k":' for i in range(depth))
    closes = "".join("]" if i % 2 else "}" for i in reversed(range(depth)))
    return opens + "1" + closes


def _otel(i: int, input_messages=None) -> dict:
    def attr(key, value):
        return {"key": key, "value": value}

    messages = input_messages or json.dumps([{"role": "user", "parts": [{"type": "text", "content": f"q{i}"}]}])
    output = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": f"a{i}"}]}])
    evaluation = {"name": "gen_ai.evaluation.result", "timeUnixNano": str(NS0 + i),
                  "attributes": [attr("gen_ai.evaluation.name", {"stringValue": "thumbs"}),
                                 attr("gen_ai.evaluation.score.value", {"doubleValue": 1.0})]}
    span = {"traceId": f"{i:032x}", "spanId": f"{i:016x}", "startTimeUnixNano": str(NS0 + i),
            "attributes": [attr("gen_ai.input.messages", {"stringValue": messages}),
                           attr("gen_ai.output.messages", {"stringValue": output})], "events": [evaluation]}
    return {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}


# Per format: the records of one rated answer (the last one is where nesting is planted), and its events.
GOOD = {
    "events": (lambda i: [{"event_id": f"e{i}", "timestamp": T0, "prompt": f"q{i}", "completion": "a",
                           "label": "up"}], 1),
    "pairs": (lambda i: [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"}], 2),
    "hh": (lambda i: [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: good",
                       "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad"}], 2),
    "trl-kto": (lambda i: [{"prompt": f"q{i}", "completion": "a", "label": True}], 1),
    "langfuse": (lambda i: [{"id": f"t{i}", "input": f"q{i}", "output": "a", "timestamp": T0, "scores": [
        {"id": f"s{i}", "traceId": f"t{i}", "name": "thumbs", "dataType": "BOOLEAN", "value": 1,
         "timestamp": T0}]}], 1),
    "langsmith": (lambda i: [
        {"id": f"r{i}", "run_type": "llm", "trace_id": f"r{i}", "start_time": T0,
         "inputs": {"messages": [{"role": "user", "content": f"q{i}"}]},
         "outputs": {"role": "assistant", "content": "a"}},
        {"id": f"f{i}", "run_id": f"r{i}", "key": "thumbs", "score": 1, "created_at": T0}], 1),
    "otel-genai": (lambda i: [_otel(i)], 1),
    "openai": (lambda i: [{"object": "chat.completion", "id": f"c{i}", "created": 1_763_600_000, "model": "m",
                           "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}}],
                           "metadata": {"thumbs": "up"}}], 1),
}
CASES = [("events", True), ("events", False)] + [(fmt, True) for fmt in GOOD if fmt != "events"]

INGEST = textwrap.dedent("""
    import json, sys
    from datetime import datetime
    from ingest.intake.job import IngestConfig, ingest
    from ingest.lake import feedback_dataset, quarantine_table
    source, lake, fmt, vectorized = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    config = IngestConfig(format=fmt, insecure_dev_key=True, vectorized=vectorized,
                          default_timestamp=datetime.fromisoformat("2026-11-20T03:00:00+00:00"))
    s = ingest([source], lake, config, progress=False).sources[0]
    q = quarantine_table(lake)
    print(json.dumps({"status": s.status, "error": s.error, "lines": s.lines, "accepted": s.accepted,
                      "quarantined": sorted(zip(q.column("line").to_pylist(), q.column("reason").to_pylist())),
                      "completions": sorted(feedback_dataset(lake).to_table().column("completion").to_pylist())}))
""")


def ingest_in_subprocess(path: Path, lake: Path, fmt: str, vectorized: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", INGEST, str(path), str(lake), fmt, "1" if vectorized else "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"ingest died with {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.splitlines()[-1])


def with_field(record: dict, value: str) -> str:
    """The record's JSON with one more field holding `value` (raw JSON text, too deep for json.dumps)."""
    return json.dumps(record, ensure_ascii=False)[:-1] + f', "zz": {value}}}'


@pytest.mark.parametrize("fmt,vectorized", CASES)
def test_deep_lines_are_quarantined_and_the_good_lines_land(tmp_path, fmt, vectorized):
    make, events_each = GOOD[fmt]
    lines, deep_lines = [], []
    for i in range(8):
        records = [json.dumps(r, ensure_ascii=False) for r in make(i)]
        if i in (2, 5):  # a value nested 1,000 and 100,000 deep in the rated record
            records[-1] = with_field(make(i)[-1], nested(DEEP[i == 5]))
            deep_lines.append(len(lines) + len(records))
        elif i == 7:  # exactly at the bound: nothing wrong with it
            records[-1] = with_field(make(i)[-1], nested(MAX_DEPTH - 1))
        lines += records
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text("\n".join(lines) + "\n")

    out = ingest_in_subprocess(path, tmp_path / "lake", fmt, vectorized)
    assert out["status"] == "ingested", out["error"]
    assert out["quarantined"] == [[line, TOO_DEEP.value] for line in deep_lines]
    assert out["accepted"] == 6 * events_each  # the good ones before, between and after, and the one at the bound


@pytest.mark.parametrize("vectorized", [True, False])
def test_deep_values_anywhere_in_an_event_are_quarantined_but_brackets_in_text_are_not(tmp_path, vectorized):
    """Deep values in the prompt and in metadata, next to lines whose strings are full of brackets (which
    are text, not nesting: they must be accepted)."""
    base = {"event_id": "x", "timestamp": T0, "prompt": "q", "completion": "a", "label": "down"}
    lines = [
        json.dumps({**base, "event_id": "brackets", "completion": "[" * 5_000 + "{" * 5_000}),
        json.dumps({**base, "event_id": "escaped", "completion": '\\"' + "[" * 500 + '"'}),
        json.dumps(base)[:-1] + f', "metadata": {nested(DEEP[0])}}}',
        json.dumps(base)[:-1].replace('"prompt": "q"', f'"prompt": {nested(DEEP[1])}') + "}",
        json.dumps({**base, "event_id": "meta", "metadata": json.loads(nested(MAX_DEPTH - 1))}),
        "[" * DEEP[1],  # not even valid JSON: refused for its depth before any parser reads it
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = ingest_in_subprocess(path, tmp_path / "lake", "events", vectorized)
    assert out["quarantined"] == [[3, TOO_DEEP.value], [4, TOO_DEEP.value], [6, TOO_DEEP.value]]
    assert out["accepted"] == 3 and out["lines"] == 6
    assert "[" * 5_000 + "{" * 5_000 in out["completions"]


def test_a_json_string_attribute_nested_too_deep_is_quarantined(tmp_path):
    """OTel GenAI may hold messages as a JSON string: that string is bounded like a line."""
    lines = [json.dumps(_otel(0)), json.dumps(_otel(1, input_messages=nested(DEEP[1]))), json.dumps(_otel(2))]
    path = tmp_path / "otel.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = ingest_in_subprocess(path, tmp_path / "lake", "otel-genai", True)
    assert out["quarantined"] == [[2, TOO_DEEP.value]]
    assert out["accepted"] == 2
