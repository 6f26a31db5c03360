"""Foreign formats on the real data (tests/data): TRL and Langfuse (helpers shared with test_ingest_formats_more.py).

Each test renders HH-RLHF dialogues (or PandaLM pairs) in the tool's exact shape, ingests them, and checks
the lake against the same feedback written as a `--format events` file; hostile records go to quarantine
with their reason, and every record is accounted for.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import HH_PATH, PANDALM_PATH
from ingest.intake.formats.options import FormatOptions
from ingest.intake.job import IngestConfig, ingest
from ingest.lake import feedback_dataset, quarantine_table
from ingest.intake.records import split_hh_pair

T0 = "2026-11-20T03:00:00+00:00"


def config(fmt: str, **options) -> IngestConfig:
    from datetime import datetime

    return IngestConfig(format=fmt, insecure_dev_key=True, formats=FormatOptions(**options),
                        default_timestamp=datetime.fromisoformat(T0))


def hh(n: int, start: int = 0) -> list[tuple[list[dict], str, str]]:
    """(earlier turns, chosen answer, rejected answer) of real HH-RLHF pairs with two non-empty answers."""
    out = []
    with gzip.open(HH_PATH, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            pair = json.loads(line)
            messages, chosen, rejected = split_hh_pair(pair["chosen"], pair["rejected"])
            if chosen and rejected and chosen != rejected:
                out.append((messages, chosen, rejected))
            if len(out) == n:
                return out
    return out


def pandalm(n: int) -> list[tuple[str, str, str, bool]]:
    """(prompt, response1, response2, response1 is better by the annotators' majority) of real PandaLM items;
    items repeating an earlier (prompt, response1) are left out (the same line twice is a repeat)."""
    out, seen = [], set()
    for item in json.loads(PANDALM_PATH.read_text()):
        votes = [item[f"annotator{k}"] for k in (1, 2, 3)]
        prompt = item["instruction"] + ("\n\n" + item["input"] if item["input"] else "")
        if votes.count(1) == votes.count(2) or (prompt, item["response1"]) in seen:
            continue
        seen.add((prompt, item["response1"]))
        if all(isinstance(item[k], str) and item[k].strip() for k in ("response1", "response2")):
            out.append((prompt, item["response1"], item["response2"], votes.count(1) > votes.count(2)))
        if len(out) == n:
            break
    return out


def write_jsonl(path: Path, records) -> list[bytes]:
    lines = [r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode() for r in records]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def rows(lake: Path, keep_source: bool = False) -> list[dict]:
    drop = {"date"} | (set() if keep_source else {"source", "source_line"})
    table = feedback_dataset(lake).to_table().sort_by("event_id")
    return [{k: v for k, v in r.items() if k not in drop} for r in table.to_pylist()]


def assert_same_lake_as_events(tmp_path: Path, lake: Path, events: list[dict]) -> None:
    """The lake holds exactly the rows the equivalent `--format events` file gives (source columns aside:
    they name each file and its line)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(dir=tmp_path, prefix="events-"))
    source = folder / "equivalent-events.jsonl"
    write_jsonl(source, events)
    other = folder / "lake"
    summary = ingest([source], other, IngestConfig(insecure_dev_key=True), progress=False)
    assert summary.total("accepted") == len(events), summary.render()
    assert rows(lake) == rows(other)
    assert len(rows(lake)) == len(events)


def reasons(lake: Path) -> dict[int, str]:
    table = quarantine_table(lake)
    return dict(zip(table.column("line").to_pylist(), table.column("reason").to_pylist()))


def event(event_id, timestamp, prompt, completion, up, **optional):
    return {"event_id": event_id, "timestamp": timestamp, "prompt": prompt, "completion": completion,
            "label": "up" if up else "down", **{k: v for k, v in optional.items() if v is not None}}


# -- TRL --------------------------------------------------------------------------------------------------

def _trl_id(line: bytes, up: bool) -> str:  # the documented rule: a hash of the line, d/u for the label
    return f"trl-kto-{hashlib.sha256(line).hexdigest()[:32]}-{'d' if up else 'u'}"


def test_trl_unpaired_rows_conversational_and_standard(tmp_path, lake):
    records, expected = [], []
    for messages, chosen, rejected in hh(15):
        for answer, up in ((chosen, True), (rejected, False)):
            records.append({"prompt": messages, "completion": [{"role": "assistant", "content": answer}],
                            "label": up})
    for prompt, r1, r2, first_better in pandalm(10):
        records.append({"prompt": prompt, "completion": r1, "label": first_better})
    lines = write_jsonl(tmp_path / "kto.jsonl", records)
    for line, record in zip(lines, records):
        completion = record["completion"]
        text = completion if isinstance(completion, str) else completion[0]["content"]
        expected.append(event(_trl_id(line, record["label"]), T0, record["prompt"], text, record["label"]))

    summary = ingest([tmp_path / "kto.jsonl"], lake, config("trl-kto"), progress=False).to_dict()
    assert summary["lines"] == summary["accepted"] == len(records) == 40
    assert summary["quarantined_total"] == 0
    assert_same_lake_as_events(tmp_path, lake, expected)
    multi_turn = [r for r in rows(lake) if len(r["prompt"]) > 1]
    assert multi_turn and all(r["prompt"][-1]["role"] == "user" for r in multi_turn)


@pytest.mark.slow  # importing TRL and datasets takes ~15 s on 2 cores
def test_trl_paired_rows_split_exactly_as_trl_splits_them(tmp_path, lake):
    from datasets import Dataset
    from trl.data_utils import maybe_extract_prompt, maybe_unpair_preference_dataset

    records = []
    for i, (messages, chosen, rejected) in enumerate(hh(12)):
        full = [messages + [{"role": "assistant", "content": a}] for a in (chosen, rejected)]
        if i % 2:  # implicit prompt: TRL finds it as the longest shared prefix
            records.append({"chosen": full[0], "rejected": full[1]})
        else:
            records.append({"prompt": messages, "chosen": full[0][-1:], "rejected": full[1][-1:]})
    lines = write_jsonl(tmp_path / "paired.jsonl", records)
    summary = ingest([tmp_path / "paired.jsonl"], lake, config("trl-kto"), progress=False).to_dict()
    assert (summary["lines"], summary["accepted"], summary["quarantined_total"]) == (12, 24, 0)

    trl_rows = maybe_unpair_preference_dataset(Dataset.from_list([maybe_extract_prompt(r) for r in records]))
    assert len(trl_rows) == 24
    by_line = {}
    for line, record in zip(lines, records):
        by_line.setdefault(line, record)
    expected = []
    for k, row in enumerate(trl_rows):  # TRL puts all chosen rows first, then all rejected ones
        line = lines[k % len(records)]
        expected.append(event(_trl_id(line, row["label"]), T0, row["prompt"], row["completion"][0]["content"],
                              row["label"]))
    assert_same_lake_as_events(tmp_path, lake, expected)


def test_trl_hostile_rows_are_quarantined_with_their_reason(tmp_path, lake):
    (messages, chosen, _), = hh(1)
    good = {"prompt": messages, "completion": [{"role": "assistant", "content": chosen}], "label": True}
    bad = [
        ({"prompt": messages, "completion": chosen}, "missing_field"),  # no label
        ({"prompt": messages, "completion": chosen, "label": "yes"}, "bad_label"),
        ({"prompt": messages, "completion": 42, "label": False}, "wrong_type"),
        ({"completion": chosen, "label": True}, "missing_field"),
        ({"prompt": "p", "chosen": "a"}, "missing_field"),
        ({"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}, "wrong_type"),
        ({"prompt": [{"role": "robot", "content": "x"}], "completion": "c", "label": True}, "bad_prompt"),
        (b"[1, 2]", "not_an_object"),
        (b"{not json", "malformed_json"),
    ]
    write_jsonl(tmp_path / "hostile.jsonl", [good] + [r for r, _ in bad])
    summary = ingest([tmp_path / "hostile.jsonl"], lake, config("trl-kto"), progress=False).to_dict()
    assert summary["lines"] == summary["accepted"] + summary["quarantined_total"] == 1 + len(bad)
    assert reasons(lake) == {i + 2: reason for i, (_, reason) in enumerate(bad)}


# -- Langfuse ---------------------------------------------------------------------------------------------

def _lf_score(i, trace_id, obs_id, up, kind, name="thumbs"):
    score = {"id": f"score-{i}", "traceId": trace_id, "observationId": obs_id, "name": name, "source": "API",
             "timestamp": f"2026-11-20T04:{i % 60:02d}:00.000Z", "comment": None, "configId": None}
    if kind == "BOOLEAN":
        score.update(dataType="BOOLEAN", value=1 if up else 0, stringValue="True" if up else "False")
    elif kind == "NUMERIC":
        score.update(dataType="NUMERIC", value=1 if up else -1)
    else:
        score.update(dataType="CATEGORICAL", value=None, stringValue="thumbs_up" if up else "thumbs_down")
    return score


def _lf_generation(obs_id, trace_id, messages, answer, start):
    return {"id": obs_id, "traceId": trace_id, "type": "GENERATION", "name": "chat", "startTime": start,
            "endTime": start, "model": "claude-v1", "modelParameters": {"temperature": 0.7},
            "input": messages, "output": {"role": "assistant", "content": answer}, "level": "DEFAULT",
            "parentObservationId": None, "usage": {"input": 10, "output": 20, "unit": "TOKENS"}}


def _langfuse_world(tmp_path: Path):
    """A nested export (traces with their observations and scores), a flat one (observations) and the scores
    of the flat one in a file of their own; a session whose first turn is rated; expected events."""
    nested, flat, scores, expected = [], [], [], []
    kinds = ("BOOLEAN", "NUMERIC", "CATEGORICAL")
    for i, (messages, chosen, rejected) in enumerate(hh(24)):
        for side, answer, up in (("c", chosen, True), ("r", rejected, False)):
            trace_id, obs_id, k = f"trace-{i}{side}", f"obs-{i}{side}", 2 * i + (side == "r")
            start = f"2026-11-19T{i % 24:02d}:00:00.000Z"
            trace = {"id": trace_id, "name": "chat", "timestamp": start, "userId": f"user-{i % 5}",
                     "sessionId": f"session-{i}", "release": "v3", "version": "2", "input": messages,
                     "output": None, "metadata": {}, "tags": []}
            gen = _lf_generation(obs_id, trace_id, messages, answer, start)
            score = _lf_score(k, trace_id, obs_id, up, kinds[k % 3])
            judge = _lf_score(1000 + k, trace_id, obs_id, True, "NUMERIC", name="helpfulness-judge")
            if i < 12:
                nested.append({**trace, "observations": [gen], "scores": [score, judge]})
            else:
                flat += [trace, gen]
                scores += [score, judge]
            expected.append(event(score["id"], score["timestamp"], messages, answer, up, user_id=f"user-{i % 5}",
                                  conversation_id=f"session-{i}", model_version="claude-v1"))
    # A two-turn session rated on its first turn: that turn's own input is the prompt, not the whole chat.
    (messages, chosen, _), = hh(1, start=40)
    first_q = [messages[0]]
    for turn, (inp, out) in enumerate([(first_q, "Turn one answer."), (first_q + [
            {"role": "assistant", "content": "Turn one answer."}, {"role": "user", "content": "And then?"}], chosen)]):
        flat.append({"id": f"conv-turn-{turn}", "timestamp": f"2026-11-20T0{turn}:00:00Z", "userId": "user-9",
                     "sessionId": "conv", "release": "v4", "input": inp, "output": out})
    scores.append({"id": "score-turn-0", "traceId": "conv-turn-0", "observationId": None, "name": "thumbs",
                   "dataType": "BOOLEAN", "value": 0, "timestamp": "2026-11-20T05:00:00Z"})
    expected.append(event("score-turn-0", "2026-11-20T05:00:00Z", first_q, "Turn one answer.", False,
                          user_id="user-9", conversation_id="conv", model_version="v4"))
    write_jsonl(tmp_path / "traces-nested.jsonl", nested)
    write_jsonl(tmp_path / "observations.jsonl", flat)
    write_jsonl(tmp_path / "scores.jsonl", scores)
    return [tmp_path / n for n in ("traces-nested.jsonl", "observations.jsonl", "scores.jsonl")], expected


def test_langfuse_nested_and_flat_exports_joined_across_files(tmp_path, lake):
    sources, expected = _langfuse_world(tmp_path)
    summary = ingest(sources, lake, config("langfuse"), progress=False)
    d = summary.to_dict()
    assert d["quarantined_total"] == 0, d["quarantined"]
    assert d["accepted"] == len(expected) == 49
    assert d["ignored"] == {"helpfulness-judge": 48}
    assert d["unrated"] == 1  # the session's second turn
    # Every rating is an accepted row or an ignored score; every scores.jsonl line is one of them.
    by_name = {s.source: s for s in summary.sources}
    assert by_name["scores.jsonl"].lines == by_name["scores.jsonl"].accepted + sum(
        by_name["scores.jsonl"].ignored.values())
    assert_same_lake_as_events(tmp_path, lake, expected)
    located = {r["event_id"]: (r["source"], r["source_line"]) for r in rows(lake, keep_source=True)}
    assert located["score-0"] == ("traces-nested.jsonl", 1)
    assert located["score-turn-0"][0] == "scores.jsonl"  # a row belongs to its rating's file
    assert all(r["user_id"] and not r["user_id"].startswith("user-") for r in rows(lake))


def test_langfuse_hostile_scores_and_records(tmp_path, lake):
    (messages, chosen, _), = hh(1)
    gen = _lf_generation("obs-1", "trace-1", messages, chosen, "2026-11-19T00:00:00Z")
    ok = _lf_score(1, "trace-1", "obs-1", True, "NUMERIC")
    bad = [
        ({**ok, "id": "s2", "traceId": None, "observationId": None}, "missing_field"),  # no join key
        ({**ok, "id": "s3", "observationId": "obs-missing"}, "orphan_feedback"),
        ({**ok, "id": "s4", "value": "high"}, "bad_label"),  # NUMERIC holding a string
        ({**ok, "id": "s5", "value": 0.5}, "bad_label"),  # between the thresholds
        ({**ok, "id": "s6", "dataType": "BOOLEAN", "value": 2}, "bad_label"),
        ({**ok, "id": "s7", "dataType": "CATEGORICAL", "stringValue": "meh"}, "bad_label"),
        ({**ok, "id": "s8", "dataType": "TEXT"}, "wrong_type"),
        ({k: v for k, v in ok.items() if k != "id"}, "missing_field"),
        ({**ok, "id": "s10", "timestamp": "last tuesday"}, "bad_timestamp"),
        ({**gen, "id": 17}, "wrong_type"),
        ({**ok}, "duplicate_event_id"),
        (b'"a string"', "not_an_object"),
    ]
    records = [gen, ok, {**ok, "id": "s-other", "name": "accuracy"}] + [r for r, _ in bad]
    write_jsonl(tmp_path / "hostile.jsonl", records)
    summary = ingest([tmp_path / "hostile.jsonl"], lake, config("langfuse"), progress=False).to_dict()
    assert summary["accepted"] == 1 and summary["ignored"] == {"accuracy": 1}
    assert reasons(lake) == {i + 4: reason for i, (_, reason) in enumerate(bad)}
    # lines = generations + accepted + ignored + quarantined: nothing unaccounted for
    assert summary["lines"] == 1 + summary["accepted"] + 1 + summary["quarantined_total"]


def test_langfuse_orphan_score_is_rescued_by_a_later_run_and_reruns_change_nothing(tmp_path, lake):
    sources, expected = _langfuse_world(tmp_path)
    nested, observations, scores = sources
    first = ingest([nested, scores], lake, config("langfuse"), progress=False).to_dict()
    n_orphans = first["quarantined"]["orphan_feedback"]
    assert n_orphans == 25 and first["accepted"] == 24  # the flat half's scores wait for their generations

    second = ingest([observations, nested, scores], lake, config("langfuse"), progress=False).to_dict()
    assert (second["sources_read"], second["sources_skipped"], second["rescued"]) == (1, 2, n_orphans)
    assert_same_lake_as_events(tmp_path, lake, expected)
    rescued = {r["event_id"]: r for r in rows(lake, keep_source=True)}["score-turn-0"]
    assert rescued["source"] == "scores.jsonl"  # still names the rating's own file and line

    before = {p: p.read_bytes() for p in lake.rglob("*") if p.is_file()}
    observations_again = tmp_path / "observations-again.jsonl"  # new bytes, the same generations
    observations_again.write_bytes(observations.read_bytes() + b"\n")
    third = ingest([observations_again], lake, config("langfuse"), progress=False).to_dict()
    assert third["rescued"] == 0 and third["accepted"] == 0  # each orphan is rescued once
    after = {p: p.read_bytes() for p in lake.rglob("*") if p.is_file()}
    assert {p: b for p, b in after.items() if p in before} == before
    assert_same_lake_as_events(tmp_path, lake, expected)


def test_langfuse_scores_in_a_later_run_find_generations_an_earlier_run_stored(tmp_path, lake):
    sources, expected = _langfuse_world(tmp_path)
    nested, observations, scores = sources
    first = ingest([nested, observations], lake, config("langfuse"), progress=False).to_dict()
    assert (first["accepted"], first["unrated"]) == (24, 26)  # the flat half's scores are not there yet
    stored = pq.read_table(lake / "_generations" / "langfuse").column("generation").to_pylist()
    assert stored and not any(b'"user-' in blob for blob in stored)  # user ids stored as pseudonyms only

    second = ingest([scores], lake, config("langfuse"), progress=False).to_dict()
    assert (second["accepted"], second["quarantined_total"]) == (25, 0)
    assert_same_lake_as_events(tmp_path, lake, expected)  # pseudonymised once, not twice

    (messages, chosen, _), = hh(1)  # one answer rated again, by someone else, in a third run
    again = tmp_path / "scores-later.jsonl"
    write_jsonl(again, [{**_lf_score(7, "trace-3r", "obs-3r", True, "NUMERIC"), "id": "score-again"}])
    third = ingest([again], lake, config("langfuse"), progress=False).to_dict()
    assert third["accepted"] == 1
    row = {r["event_id"]: r for r in rows(lake)}
    assert row["score-again"]["completion"] == row["score-7"]["completion"]
    assert row["score-again"]["user_id"] == row["score-7"]["user_id"]


def test_cli_reads_numeric_stars_with_thresholds(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    (messages, chosen, rejected), = hh(1)
    records = [_lf_generation("o1", "t1", messages, chosen, "2026-11-19T00:00:00Z"),
               _lf_generation("o2", "t2", messages, rejected, "2026-11-19T00:00:00Z")]
    for k, stars in enumerate((5, 1, 3)):
        records.append({"id": f"s{k}", "traceId": f"t{k % 2 + 1}", "observationId": f"o{k % 2 + 1}",
                        "name": "user-feedback", "dataType": "NUMERIC", "value": stars,
                        "timestamp": "2026-11-19T01:00:00Z"})
    write_jsonl(tmp_path / "stars.jsonl", records)
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "stars.jsonl"), "--lake", str(tmp_path / "lake"),
                                      "--format", "langfuse", "--score-name", "user-feedback", "--up-at", "4",
                                      "--down-at", "2", "--insecure-dev-key", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["desirable"], summary["undesirable"], summary["quarantined"]) == (1, 1, {"bad_label": 1})
    bad = CliRunner().invoke(app, ["ingest", str(tmp_path / "stars.jsonl"), "--lake", str(tmp_path / "lake2"),
                                   "--format", "langfuse", "--up-at", "0", "--down-at", "1", "--insecure-dev-key"])
    assert bad.exit_code == 2 and "--down-at" in bad.output
