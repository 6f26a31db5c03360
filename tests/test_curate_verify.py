"""A snapshot that proves itself: a faulty sink makes curate refuse to publish; --verify-only catches tampering."""

from __future__ import annotations

import json
import os
from pathlib import Path

import apache_beam as beam
import pytest
from typer.testing import CliRunner

from flows.cli import app
from ingest.curate.pipeline import CurateError, curate, parquet_writer
from ingest.curate.rules import CurateConfig
from ingest.intake.job import IngestConfig, ingest
from ingest.curate.manifest import check_stats

CONFIG = CurateConfig(eval_fraction=0.2, n_buckets=4)


class DroppingWriter(beam.PTransform):
    """The real Parquet sink, then the first file it committed deleted: a sink (or runner) that loses a file."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, batches):
        return (batches | parquet_writer(self.prefix) | beam.combiners.ToList()
                | beam.Map(lambda names: [os.remove(name) for name in sorted(names)[:1]]))


class StrayFileWriter(beam.PTransform):
    """The real sink, plus a leftover temp folder in the split (what some runners leave behind)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, batches):
        folder = os.path.join(os.path.dirname(self.prefix), "beam-temp-part-123")
        return (batches | parquet_writer(self.prefix) | beam.combiners.ToList()
                | beam.Map(lambda _: os.makedirs(folder, exist_ok=True)))


@pytest.fixture
def small_lake(tmp_path, lake) -> Path:
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(json.dumps({
        "event_id": f"e{i}", "timestamp": f"2026-11-{18 + i % 3}T10:00:00Z", "user_id": f"u{i % 7}",
        "prompt": f"question {i % 150}", "completion": f"answer {i % 300}", "label": "up" if i % 3 else "down"})
        for i in range(600)) + "\n")
    ingest([source], lake, IngestConfig(insecure_dev_key=True), progress=False)
    return lake


def test_a_sink_that_drops_a_file_makes_curate_refuse_to_publish(small_lake, tmp_path):
    out = tmp_path / "snapshots"
    with pytest.raises(CurateError) as caught:
        curate(small_lake, out, config=CONFIG, writer=DroppingWriter)
    message = str(caught.value)
    assert "refused to publish" in message and "FnApiRunner" in message
    assert "train rows: stats say" in message and "the files say 0" in message
    assert list(out.iterdir()) == []  # nothing visible, no temp folder left either
    good = curate(small_lake, out, config=CONFIG)  # the same job with the real sink publishes
    assert good["counts"]["train"] > 0 and [p.name for p in out.iterdir()] == [good["snapshot_id"]]


def test_a_leftover_temp_folder_is_refused(small_lake, tmp_path):
    out = tmp_path / "snapshots"
    with pytest.raises(CurateError, match=r"unexpected entry (train|eval)/beam-temp-part-123"):
        curate(small_lake, out, config=CONFIG, writer=StrayFileWriter)
    assert list(out.iterdir()) == []


def verify(path):
    return CliRunner().invoke(app, ["curate", "--verify-only", str(path)])


def test_verify_only_passes_a_published_snapshot_and_catches_each_kind_of_change(small_lake, tmp_path):
    path = Path(curate(small_lake, tmp_path / "snapshots", config=CONFIG)["path"])
    ok = verify(path)
    assert ok.exit_code == 0 and "verified" in ok.output
    manifest = json.loads((path / "manifest.json").read_text())
    assert {e["path"].split("/")[0] for e in manifest["files"]} == {"train", "eval"}

    stats_text = (path / "stats.json").read_text()
    stats = json.loads(stats_text)
    stats["counts"]["train"] += 1
    (path / "stats.json").write_text(json.dumps(stats))
    bad = verify(path)
    assert bad.exit_code == 1 and "train rows: stats say" in bad.output
    (path / "stats.json").write_text(stats_text)

    victim = path / manifest["files"][0]["path"]
    data = victim.read_bytes()
    victim.unlink()
    gone = verify(path)
    assert gone.exit_code == 1 and f"{manifest['files'][0]['path']}: in the manifest, missing on disk" in gone.output
    victim.write_bytes(data)
    (path / "train" / "extra.parquet").write_bytes(data)
    extra = verify(path)
    assert extra.exit_code == 1 and "train/extra.parquet: on disk, not in the manifest" in extra.output
    (path / "train" / "extra.parquet").unlink()
    assert verify(path).exit_code == 0


def test_verify_only_on_a_folder_that_is_no_snapshot_says_so(tmp_path):
    result = verify(tmp_path)
    assert result.exit_code == 1 and "no stats.json" in result.output


def test_count_arithmetic_catches_a_lost_bucket_of_counts():
    """Hand-made stats: a runner that lost one bucket's dropped-tie count no longer adds up."""
    counts = {"events_in": 10, "removed_duplicate_event_id": 1, "removed_superseded_vote": 1, "votes": 8,
              "removed_merged_into_example": 2, "examples": 6, "dropped_tie": 2, "train": 3, "eval": 1,
              "train_desirable": 2, "train_undesirable": 1, "eval_desirable": 1, "eval_undesirable": 0}
    stats = {"counts": counts, "n_desirable": 2, "n_undesirable": 1, "desirable_weight": 1.0,
             "undesirable_weight": 2.0, "balance_ratio": 1.0, "balance_in_band": True, "config": {}}
    entries = [{"path": "train/a.parquet", "rows": 3, "desirable": 2}, {"path": "eval/a.parquet", "rows": 1,
                                                                         "desirable": 1}]
    assert check_stats(stats, entries, events_in=10) == []
    lost = {**stats, "counts": {**counts, "dropped_tie": 1}}
    assert check_stats(lost, entries, events_in=10) == [
        "counts do not add up (examples = train + eval + dropped): expected 5, got 6"]
    assert check_stats(stats, entries, events_in=11) == ["counts do not add up (events_in): expected 11, got 10"]
