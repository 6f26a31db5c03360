"""Ingest of the real data (tests/data), the derived formats, idempotency, crash safety, privacy and the CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import HH_PATH, ROOT
from flows.cli import app
from ingest.intake.job import IngestConfig, ingest
from ingest.lake import feedback_dataset, quarantine_table

DEV = IngestConfig(insecure_dev_key=True)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _render_hh(messages) -> str:
    return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)


def test_hh_rlhf_ingests_to_the_exact_counts_and_keeps_the_texts(lake):
    config = IngestConfig(format="hh", insecure_dev_key=True)
    summary = ingest([HH_PATH], lake, config, progress=False).to_dict()
    assert summary["lines"] == 2312
    assert (summary["accepted"], summary["desirable"], summary["undesirable"]) == (4620, 2308, 2312)
    assert summary["quarantined"] == {"empty_completion": 4}
    assert summary["accepted"] + summary["quarantined_total"] == 4624

    rows = feedback_dataset(lake).to_table().to_pylist()
    with gzip.open(HH_PATH, "rt", encoding="utf-8") as f:
        source = [json.loads(line) for line in f]
    for row in rows:
        pair = source[row["source_line"] - 1]
        dialogue = pair["chosen"] if row["desirable"] else pair["rejected"]
        rebuilt = _render_hh(row["prompt"]) + "\n\nAssistant: " + row["completion"]
        assert _squash(rebuilt) == _squash(dialogue), row["source_line"]
    silent = quarantine_table(lake)
    assert sorted(silent.column("line").to_pylist()) == [87, 517, 926, 1104]
    for line in silent.column("line").to_pylist():
        assert source[line - 1]["chosen"].rstrip().endswith("Assistant:")


def test_pairs_format_gives_one_desirable_and_one_undesirable_with_stable_ids(tmp_path, lake):
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "",
         "timestamp": "2026-11-18T10:00:00Z"},
    ]) + "\n")
    config = IngestConfig(format="pairs", insecure_dev_key=True, default_timestamp=None)
    summary = ingest([source], lake, config, progress=False)
    assert summary.total("accepted") == 3 and summary.quarantined == {"empty_completion": 1}
    rows = feedback_dataset(lake).to_table().sort_by("event_id").to_pylist()
    assert sorted((r["completion"], r["desirable"]) for r in rows) == [("4", True), ("5", False), ("Hello!", True)]
    ids_first = sorted(r["event_id"] for r in rows)

    copy = tmp_path / "pairs-copy-with-one-more.jsonl"
    copy.write_text(source.read_text() + json.dumps({"prompt": "x", "chosen": "y", "rejected": "z"}) + "\n")
    other = tmp_path / "lake2"
    ingest([copy], other, config, progress=False)
    ids_again = {r["event_id"] for r in feedback_dataset(other).to_table().to_pylist()}
    assert set(ids_first) < ids_again  # the same lines give the same ids in another file


def _snapshot(lake: Path) -> dict[str, str]:
    return {str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(lake.rglob("*")) if p.is_file()}


def test_ingesting_the_same_sources_again_changes_nothing_on_disk(tmp_path, lake):
    renamed = tmp_path / "same-bytes-other-name.jsonl.gz"
    renamed.write_bytes(HH_PATH.read_bytes())
    config = IngestConfig(format="hh", insecure_dev_key=True)
    ingest([HH_PATH], lake, config, progress=False)
    before = _snapshot(lake)
    again = ingest([HH_PATH, renamed], lake, config, progress=False)
    assert [s.status for s in again.sources] == ["skipped", "skipped"]
    assert _snapshot(lake) == before


def _write_events(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"event_id": f"e-{i}", "timestamp": f"2026-11-{18 + i % 3}T12:00:00Z",
                                "user_id": f"u-{i % 97}", "prompt": f"prompt {i % 1000}",
                                "completion": f"completion {i}", "label": "up" if i % 4 == 0 else "down"}) + "\n")


@pytest.mark.slow
def test_a_run_killed_half_way_leaves_nothing_partial_and_a_rerun_finishes(tmp_path, lake):
    source = tmp_path / "big.jsonl"
    _write_events(source, 300_000)
    cmd = [sys.executable, "-m", "flows.cli", "ingest", str(source), "--lake", str(lake), "--insecure-dev-key",
           "--format", "events"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(lake.rglob(".*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # kill it once it is writing
    assert proc.poll() is None, "the ingest finished before it could be killed; make the source larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(lake.rglob(".*.tmp")), "killed while writing: its temporary files are still there"
    visible = [p for p in lake.rglob("*.parquet") if not p.name.startswith(".")]
    for part in visible:  # whatever is visible is whole
        pq.read_table(part)
    assert not (lake / "_sources").exists() or not any((lake / "_sources").iterdir())

    done = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accepted"] == 300_000
    ids = feedback_dataset(lake).to_table(columns=["event_id"]).column("event_id")
    assert len(ids) == 300_000 == len(set(ids.to_pylist()))
    assert not list(lake.rglob(".*.tmp")), "the re-run should clear the killed run's temporary files"


def test_pii_is_masked_and_counted(tmp_path, lake):
    source = tmp_path / "pii.jsonl"
    source.write_text(json.dumps({
        "event_id": "e-1", "timestamp": "2026-11-20T03:12:45Z", "user_id": "alice",
        "prompt": [{"role": "user", "content": "my mail is alice@example.com, call me on +1 415-555-2671"}],
        "completion": "Sure, I will write to alice@example.com.", "label": "up"}) + "\n")
    summary = ingest([source], lake, IngestConfig(insecure_dev_key=True, scrub_pii=True), progress=False)
    assert (summary.total("emails_masked"), summary.total("phones_masked")) == (2, 1)
    row = feedback_dataset(lake).to_table().to_pylist()[0]
    assert row["prompt"][0]["content"] == "my mail is [EMAIL], call me on [PHONE]"
    assert row["completion"] == "Sure, I will write to [EMAIL]."
    assert row["user_id"] != "alice"


def test_the_pseudonym_depends_on_the_key(tmp_path, monkeypatch):
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps({"event_id": "e", "timestamp": "2026-11-20T00:00:00Z", "user_id": "alice",
                                  "prompt": "p", "completion": "c", "label": "up"}) + "\n")
    pseudonyms = []
    for key in ("key-one", "key-two", "key-one"):
        monkeypatch.setenv("THUMBS_PSEUDONYM_KEY", key)
        lake = tmp_path / f"lake-{len(pseudonyms)}"
        ingest([source], lake, IngestConfig(), progress=False)
        pseudonyms.append(feedback_dataset(lake).to_table().column("user_id")[0].as_py())
    assert pseudonyms[0] == pseudonyms[2] != pseudonyms[1]


runner = CliRunner()


def test_cli_refuses_to_run_without_a_key(tmp_path):
    source = tmp_path / "one.jsonl"
    source.write_text("{}\n")
    result = runner.invoke(app, ["ingest", str(source), "--lake", str(tmp_path / "lake")])
    assert result.exit_code == 2
    assert "THUMBS_PSEUDONYM_KEY" in result.output


def test_cli_reports_json_and_exits_nonzero_only_for_an_unreadable_source(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"event_id":"e","timestamp":"2026-11-20T00:00:00Z","prompt":"p","completion":"c","label":"up"}\n'
                    "garbage\n")
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(gzip.compress(b'{"a": 1}\n' * 1000)[:60])
    missing = tmp_path / "missing.jsonl"
    lake = tmp_path / "lake"
    args = ["ingest", str(good), str(corrupt), str(missing), "--lake", str(lake), "--insecure-dev-key", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["accepted"], summary["quarantined"], summary["sources_failed"]) == (1, {"malformed_json": 1}, 2)
    assert "missing.jsonl" in result.stderr and "corrupt.jsonl.gz" in result.stderr
    assert not (lake / "quarantine" / "corrupt").exists()
    assert len(list((lake / "_sources").iterdir())) == 1  # the corrupt source left nothing behind
    assert not [p for p in lake.rglob("*") if p.name.startswith(".")]
