"""`thumbs curate` end to end on real data: PandaLM's conflicting annotators, HH-RLHF, imbalance, re-runs."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from conftest import HH_PATH, PANDALM_PATH
from flows.cli import app
from ingest.curate.pipeline import curate
from ingest.curate.rules import CurateConfig
from ingest.intake.job import IngestConfig, ingest

T0 = datetime(2026, 11, 20, tzinfo=timezone.utc)


def pandalm_events(path: Path) -> list[dict]:
    """Each annotator is a user; 1 = first response better, 2 = second better, 0 = tie (no vote)."""
    events = []
    for item in json.loads(path.read_text()):
        prompt = item["instruction"] + ("\n\n" + item["input"] if item["input"].strip() else "")
        for a in (1, 2, 3):
            verdict = item[f"annotator{a}"]
            if verdict == 0:
                continue
            for which in (1, 2):
                events.append({
                    "event_id": f"pandalm-{item['idx']}-a{a}-r{which}",
                    "timestamp": (T0 + timedelta(seconds=item["idx"])).isoformat(),
                    "user_id": f"annotator-{a}", "prompt": prompt, "completion": item[f"response{which}"],
                    "label": "up" if verdict == which else "down"})
    return events


def hand_majority(events: list[dict]) -> tuple[dict, int, int]:
    """Plain Python: latest vote per (user, example), then majority; ties dropped."""
    def norm(text):
        return " ".join(text.split())
    latest = {}
    for e in sorted(events, key=lambda e: (e["timestamp"], e["event_id"])):
        latest[(e["user_id"], norm(e["prompt"]), norm(e["completion"]))] = e["label"] == "up"
    votes = defaultdict(list)
    for (_, p, c), up in latest.items():
        votes[(p, c)].append(up)
    conflicting = sum(1 for v in votes.values() if any(v) and not all(v))
    ties = sum(1 for v in votes.values() if sum(v) * 2 == len(v))
    labels = {k: sum(v) * 2 > len(v) for k, v in votes.items() if sum(v) * 2 != len(v)}
    return labels, conflicting, ties


def read_snapshot(path: str) -> list[dict]:
    return ds.dataset([str(p) for p in sorted(Path(path).glob("*/*.parquet"))], format="parquet").to_table().to_pylist()


def test_pandalm_conflicts_and_labels_match_a_hand_computed_majority(tmp_path, lake):
    items = json.loads(PANDALM_PATH.read_text())
    disagree = sum(1 for i in items if len({i["annotator1"], i["annotator2"], i["annotator3"]}) > 1)
    assert disagree == 120  # the real conflicting labels tests/data/README.md promises
    events = pandalm_events(PANDALM_PATH)
    source = tmp_path / "pandalm.jsonl"
    source.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    summary = ingest([source], lake, IngestConfig(insecure_dev_key=True), progress=False)
    # Real data: some PandaLM responses are the JSON value `true` and some are empty; ingest quarantines them.
    typed = [e for e in events if isinstance(e["completion"], str)]
    texts = [e for e in typed if e["completion"].strip()]
    assert summary.quarantined == {"wrong_type": len(events) - len(typed), "empty_completion": len(typed) - len(texts)}

    stats = curate(lake, tmp_path / "snapshots", config=CurateConfig(eval_fraction=0.1))
    expected, conflicting, ties = hand_majority(texts)
    counts = stats["counts"]
    assert counts["events_in"] == len(texts)
    assert counts["examples_with_conflicting_votes"] == conflicting > 0
    assert counts["dropped_tie"] == ties  # 0 here: no pair ends with an even split after ties (0) are skipped
    got = {(" ".join(r["prompt"][0]["content"].split()), " ".join(r["completion"].split())): r["desirable"]
           for r in read_snapshot(stats["path"])}
    assert got == expected
    assert counts["train"] + counts["eval"] == len(expected)
    strict = curate(lake, tmp_path / "snapshots", config=CurateConfig(eval_fraction=0.1, policy="drop-conflicts"))
    assert strict["counts"]["dropped_conflict"] == conflicting
    assert strict["counts"]["train"] + strict["counts"]["eval"] == len(expected) - conflicting


def test_hh_rlhf_loses_nothing_it_should_not(tmp_path, lake):
    ingest([HH_PATH], lake, IngestConfig(format="hh", insecure_dev_key=True), progress=False)
    stats = curate(lake, tmp_path / "snapshots")
    c = stats["counts"]
    assert c["events_in"] == c["examples"] == c["train"] + c["eval"] == 4620
    assert sum(v for k, v in c.items() if k.startswith(("removed_", "dropped_"))) == 0
    assert (stats["n_desirable"], stats["n_undesirable"]) == (c["train_desirable"], c["train_undesirable"])
    rows = read_snapshot(stats["path"])
    assert len(rows) == 4620 and len({r["event_id"] for r in rows}) == 4620
    train_prompts = {str(r["prompt"]) for r in ds.dataset(str(Path(stats["path"]) / "train")).to_table().to_pylist()}
    eval_prompts = {str(r["prompt"]) for r in ds.dataset(str(Path(stats["path"]) / "eval")).to_table().to_pylist()}
    assert eval_prompts and not train_prompts & eval_prompts


def _imbalanced_lake(tmp_path: Path, lake: Path) -> None:
    source = tmp_path / "imbalanced.jsonl"
    source.write_text("\n".join(json.dumps({
        "event_id": f"e{i}", "timestamp": f"2026-11-{18 + i % 3}T10:00:00Z", "user_id": f"u{i}",
        "prompt": f"question {i}", "completion": f"answer {i}", "label": "up" if i % 11 == 0 else "down"})
        for i in range(2200)) + "\n")
    ingest([source], lake, IngestConfig(insecure_dev_key=True), progress=False)


def test_one_desirable_per_ten_undesirable_gets_weights_inside_the_band(tmp_path, lake):
    _imbalanced_lake(tmp_path, lake)
    stats = curate(lake, tmp_path / "snapshots")
    ratio = stats["n_undesirable"] / stats["n_desirable"]
    assert 9 < ratio < 11
    assert stats["undesirable_weight"] == 1.0 and stats["desirable_weight"] == pytest.approx(ratio)
    assert stats["balance_in_band"] is True
    assert 1.0 - 1e-9 <= stats["desirable_weight"] * stats["n_desirable"] / stats["n_undesirable"] <= 4 / 3


def test_rerun_is_a_noop_with_the_same_id_and_a_window_changes_it(tmp_path, lake):
    _imbalanced_lake(tmp_path, lake)
    out = tmp_path / "snapshots"
    runner = CliRunner()
    first = runner.invoke(app, ["curate", "--lake", str(lake), "--out", str(out), "--json"])
    assert first.exit_code == 0, first.output
    stats = json.loads(first.stdout[first.stdout.index("{"):])
    files = {p: p.stat().st_mtime_ns for p in Path(stats["path"]).rglob("*")}
    again = curate(lake, out)
    assert again["snapshot_id"] == stats["snapshot_id"] and again["reused"] is True
    assert {p: p.stat().st_mtime_ns for p in Path(stats["path"]).rglob("*")} == files
    narrower = curate(lake, out, since=datetime(2026, 11, 19).date())
    assert narrower["snapshot_id"] != stats["snapshot_id"]
    assert narrower["counts"]["events_in"] < stats["counts"]["events_in"]
    assert sorted(p.name for p in out.iterdir()) == sorted([stats["snapshot_id"], narrower["snapshot_id"]])


def test_too_few_examples_stop_with_a_clear_error_and_leave_nothing(tmp_path, lake):
    _imbalanced_lake(tmp_path, lake)
    out = tmp_path / "snapshots"
    result = CliRunner().invoke(app, ["curate", "--lake", str(lake), "--out", str(out), "--min-per-class", "1000"])
    assert result.exit_code == 2
    assert "desirable (thumbs-up)" in result.output and "at least 1000" in result.output
    assert list(out.iterdir()) == []
