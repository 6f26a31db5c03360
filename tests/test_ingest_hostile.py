"""Hostile input: every good row lands, every bad row is quarantined with the right reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.intake import arrow_path
from ingest.intake.job import IngestConfig, ingest
from ingest.lake import feedback_dataset, quarantine_table
from ingest.privacy import Pseudonymizer
from ingest.intake.records import TOO_DEEP

LIMIT = 1000  # max_text_chars for these tests


def event(i, **overrides):
    record = {"event_id": f"e-{i}", "timestamp": "2026-11-20T03:12:45Z", "user_id": f"user-{i}@corp.example",
              "conversation_id": f"c-{i}", "model_version": "prod-v3",
              "prompt": [{"role": "user", "content": f"question {i}"}], "completion": f"answer {i}", "label": "up"}
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not _DROP}


_DROP = object()


def dumps(record) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


GOOD = [
    dumps(event(1)),
    dumps(event(2, prompt="a plain string prompt", label="DOWN")),
    dumps(event(3, label="thumbs_up", timestamp="2026-11-19T23:59:59")),  # naive means UTC
    dumps(event(4, label=True, metadata={"latency_ms": 812, "tags": ["a", "b"]})),
    dumps(event(5, label=-1, timestamp="2026-11-20T01:30:00+02:00")),  # 2026-11-19 in UTC
    dumps(event(6, label=1, user_id=_DROP, conversation_id=None)),
    dumps(event(7, label="Thumbs_Down", prompt=[{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "hello"},
                                                {"role": "user", "content": "and?"}])),
    dumps(event(8, completion="Ünïcödé ✓ 你好 🎉", label=False)),
    dumps(event(9, extra_field={"anything": 1})),
    dumps(event(10, completion="x" * LIMIT)),  # exactly at the limit
]

BAD = [  # (raw line, reason)
    (b'{"event_id": "e-100", "timestamp": ', "malformed_json"),
    (b"not json at all", "malformed_json"),
    (b"[" * 100_000, TOO_DEEP.value),
    (b'{"event_id": "e-130", "metadata": ' + b"[" * 1_000 + b"]" * 1_000 + b"}", TOO_DEEP.value),
    (b'{"event_id": "e-101", "completion": "\xff\xfe bad bytes", "label": "up"}', "invalid_utf8"),
    (b'{"event_id":"e-102","timestamp":"2026-11-20T03:12:45Z","prompt":"p","completion":"\\ud800","label":"up"}',
     "invalid_utf8"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (dumps(event(103, event_id=_DROP)), "missing_field"),
    (dumps(event(104, completion=_DROP)), "missing_field"),
    (dumps(event(105, label=_DROP)), "missing_field"),
    (dumps(event(106, prompt=_DROP)), "missing_field"),
    (dumps(event(107, timestamp=_DROP)), "missing_field"),
    (dumps(event(108, event_id=108)), "wrong_type"),
    (dumps(event(109, completion=5)), "wrong_type"),
    (dumps(event(110, user_id=42)), "wrong_type"),
    (dumps(event(111, metadata="not an object")), "wrong_type"),
    (dumps(event(112, timestamp="yesterday")), "bad_timestamp"),
    (dumps(event(113, timestamp=1700000000)), "bad_timestamp"),
    (dumps(event(114, prompt=[])), "bad_prompt"),
    (dumps(event(115, prompt=[{"role": "robot", "content": "x"}])), "bad_prompt"),
    (dumps(event(116, prompt="   ")), "bad_prompt"),
    (dumps(event(117, prompt=[{"role": "user"}])), "bad_prompt"),
    (dumps(event(118, label="meh")), "bad_label"),
    (dumps(event(119, label=0)), "bad_label"),
    (dumps(event(120, label=None)), "bad_label"),
    (dumps(event(121, label=2)), "bad_label"),
    (dumps(event(122, label=1.5)), "bad_label"),
    (b'{"event_id":"e-123","timestamp":"2026-11-20T03:12:45Z","prompt":"p","completion":"c","label":NaN}',
     "bad_label"),
    (b'{"event_id":"e-124","timestamp":"2026-11-20T03:12:45Z","prompt":"p","completion":"c","label":"up",'
     b'"label":"meh"}', "bad_label"),
    (dumps(event(125, completion="")), "empty_completion"),
    (dumps(event(126, completion="  \n\t ")), "empty_completion"),
    (dumps(event(127, completion="x" * (LIMIT + 1))), "text_too_long"),
    (dumps(event(128, prompt=[{"role": "user", "content": "y" * (LIMIT + 1)}])), "text_too_long"),
    (b'{"event_id": "e-129", "completion": "' + b"z" * (2 << 20) + b'"}', "text_too_long"),  # past the line limit
    (dumps(event(1, completion="a second event e-1")), "duplicate_event_id"),
    (b"", "blank_line"),
    (b"   \t", "blank_line"),
]


def write_corpus(path: Path) -> dict[int, str | None]:
    """Interleave good and bad lines; return {line number: expected reason, or None for good}."""
    lines, expected = [], {}
    bad = iter(BAD)
    for good in GOOD:
        for _ in range(4):
            item = next(bad, None)
            if item is not None:
                lines.append(item[0])
                expected[len(lines)] = item[1]
        lines.append(good)
        expected[len(lines)] = None
    for raw, reason in bad:
        lines.append(raw)
        expected[len(lines)] = reason
    path.write_bytes(b"\n".join(lines) + b"\n")
    return expected


def run(tmp_path: Path, vectorized: bool):
    source = tmp_path / "hostile.jsonl"
    expected = write_corpus(source)
    lake = tmp_path / f"lake-{vectorized}"
    config = IngestConfig(max_text_chars=LIMIT, insecure_dev_key=True, vectorized=vectorized)
    summary = ingest([source], lake, config, progress=False)
    return expected, summary, lake


@pytest.mark.parametrize("vectorized", [True, False])
def test_every_good_row_lands_every_bad_row_is_quarantined(tmp_path, vectorized):
    expected, summary, lake = run(tmp_path, vectorized)
    rows = feedback_dataset(lake).to_table()
    quarantine = quarantine_table(lake)

    good_lines = sorted(line for line, reason in expected.items() if reason is None)
    assert sorted(rows.column("source_line").to_pylist()) == good_lines
    got = dict(zip(quarantine.column("line").to_pylist(), quarantine.column("reason").to_pylist()))
    assert got == {line: reason for line, reason in expected.items() if reason is not None}

    s = summary.to_dict()
    assert s["lines"] == len(expected) == s["accepted"] + s["quarantined_total"]
    assert s["accepted"] == len(GOOD)
    assert s["quarantined"]["blank_line"] == 2


TYPED_BUT_BAD = [event(1), event(2, label="meh"), event(3, completion="  "), event(4, prompt=[]),
                 event(5, prompt=[{"role": "robot", "content": "x"}]), event(6, user_id=""),
                 event(7, completion="q" * (LIMIT + 1)), event(8, label="thumbs_down"), event(9, event_id=""),
                 event(1, completion="duplicate"), event(10, prompt="plain", label="Up")]


def test_vectorized_and_per_line_paths_write_the_same_lake(tmp_path):
    _, _, fast = run(tmp_path, True)
    _, _, slow = run(tmp_path, False)
    assert_same_lake(fast, slow)


def test_paths_agree_on_a_block_arrow_can_type(tmp_path):
    source = tmp_path / "typed.jsonl"
    source.write_bytes(b"\n".join(dumps(r) for r in TYPED_BUT_BAD))
    lakes = []
    for vectorized in (True, False):
        lakes.append(tmp_path / f"lake-{vectorized}")
        config = IngestConfig(max_text_chars=LIMIT, insecure_dev_key=True, scrub_pii=True, vectorized=vectorized)
        summary = ingest([source], lakes[-1], config, progress=False)
        assert summary.total("accepted") == 4  # e-1, e-6 (empty user_id means none), e-8, e-10
    assert_same_lake(*lakes)


def assert_same_lake(fast: Path, slow: Path):
    key = [("source_line", "ascending")]
    assert feedback_dataset(fast).to_table().sort_by(key).equals(feedback_dataset(slow).to_table().sort_by(key))
    assert quarantine_table(fast).sort_by([("line", "ascending")]).equals(
        quarantine_table(slow).sort_by([("line", "ascending")]))


def test_accepted_rows_hold_the_normalised_values(tmp_path):
    _, _, lake = run(tmp_path, True)
    rows = {r["event_id"]: r for r in feedback_dataset(lake).to_table().to_pylist()}
    assert rows["e-2"]["prompt"] == [{"role": "user", "content": "a plain string prompt"}]
    assert rows["e-2"]["desirable"] is False
    assert rows["e-3"]["timestamp"].isoformat() == "2026-11-19T23:59:59+00:00"
    assert rows["e-5"]["timestamp"].isoformat() == "2026-11-19T23:30:00+00:00"
    assert rows["e-5"]["date"] == "2026-11-19"
    assert json.loads(rows["e-4"]["metadata"]) == {"latency_ms": 812, "tags": ["a", "b"]}
    assert rows["e-6"]["user_id"] is None and rows["e-6"]["desirable"] is True
    assert [m["role"] for m in rows["e-7"]["prompt"]] == ["system", "user", "assistant", "user"]
    assert rows["e-8"]["completion"] == "Ünïcödé ✓ 你好 🎉"
    assert rows["e-1"]["completion"] == "answer 1"  # the first e-1 wins, not the later duplicate


def test_arrow_path_accepts_clean_rows_and_hands_back_exactly_the_rest():
    """A block Arrow can type, with semantic errors: the fast path must not accept any of them."""
    records = [event(1), event(2, label="meh"), event(3, completion="  "), event(4, prompt=[]),
               event(5, prompt=[{"role": "robot", "content": "x"}]), event(6, user_id=""),
               event(7, completion="q" * (LIMIT + 1)), event(8, label="thumbs_down"), event(9, event_id="")]
    block = b"\n".join(dumps(r) for r in records)
    result = arrow_path.parse_block(block, len(records), 1, "s.jsonl", LIMIT, Pseudonymizer(b"k"), False)
    assert result is not None, "Arrow should type this block"
    rows, rest, _, _ = result
    assert rows.column("event_id").to_pylist() == ["e-1", "e-8"]
    assert rest == [1, 2, 3, 4, 5, 6, 8]
    assert rows.column("desirable").to_pylist() == [True, False]


def test_user_ids_never_reach_parquet_in_the_clear(tmp_path):
    _, _, lake = run(tmp_path, True)
    rows = feedback_dataset(lake).to_table()
    raw_ids = {f"user-{i}@corp.example" for i in range(200)}
    assert not raw_ids & set(rows.column("user_id").drop_null().to_pylist())
    assert all(len(u) == 32 for u in rows.column("user_id").drop_null().to_pylist())
    for raw in quarantine_table(lake).column("raw").to_pylist():
        assert b"@corp.example" not in raw, raw[:120]
