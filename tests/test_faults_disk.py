"""A full disk under the lake, the snapshot folder, the checkpoint folder and the export folder: one clear
error naming the path (exit 1, no traceback), nothing half-written left, and the same command succeeds
once space is freed. Each disk is a small tmpfs mounted for the test (root only; skipped elsewhere).
"""

from __future__ import annotations

import errno
import json
import os
import random
import string
import subprocess
from pathlib import Path

import pytest

from fault_helpers import thumbs, tree

pytestmark = pytest.mark.slow


class SmallDisk:
    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def fill(self, leave: int = 0) -> None:
        """Take every free byte but `leave` (rounded to pages): the next large write fails with ENOSPC."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (1 << 20, 1 << 12):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError as err:
                    assert err.errno == errno.ENOSPC
        finally:
            os.close(fd)
        os.truncate(self.filler, max(0, self.filler.stat().st_size - leave))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); the CI runs as root")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def events(path: Path, n: int = 3000) -> Path:
    """Incompressible texts, so a few MB of Parquet really need a few MB of disk."""
    rng = random.Random(0)
    text = lambda k: "".join(rng.choices(string.ascii_letters, k=k))  # noqa: E731
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"event_id": f"e{i}", "timestamp": f"2026-11-{10 + i % 10}T03:00:00Z",
                                "user_id": f"u{i % 50}", "prompt": f"question {i % 300} {text(200)}",
                                "completion": text(600), "label": "up" if i % 3 else "down"}) + "\n")
    return path


def assert_one_clear_error(result, path: Path) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1, result.stderr
    assert f"no space left on the device holding {path}" in result.stderr, result.stderr
    assert "free space there" in result.stderr


def test_a_full_disk_under_the_lake(disk, tmp_path):
    from ingest.lake import feedback_dataset

    source = events(tmp_path / "events.jsonl")
    disk.resize("512k")
    lake = disk.path / "lake"
    full = thumbs("ingest", source, "--lake", lake, "--insecure-dev-key", "--quiet")
    assert_one_clear_error(full, lake)
    assert tree(lake) == {}  # not a temp file left either

    disk.resize("64m")
    again = thumbs("ingest", source, "--lake", lake, "--insecure-dev-key", "--quiet")
    assert again.returncode == 0 and "1 source(s) read" in again.stdout, again.stderr
    assert feedback_dataset(lake).count_rows() == 3000


def test_a_full_disk_under_the_lake_for_a_foreign_format(disk, tmp_path):
    """The foreign formats write in a thread beside the reading (ingest/intake/formats/batch.py `Writes`): its
    error reaches the command as the same one clear error, and nothing of the run is left."""
    from ingest.lake import feedback_dataset

    source = tmp_path / "trl.jsonl"
    with source.open("w") as f:
        for line in events(tmp_path / "events.jsonl").read_text().splitlines():
            event = json.loads(line)
            f.write(json.dumps({"prompt": event["prompt"], "completion": event["completion"],
                                "label": event["label"] == "up"}) + "\n")
    disk.resize("512k")
    lake = disk.path / "lake"
    full = thumbs("ingest", source, "--format", "trl-kto", "--lake", lake, "--insecure-dev-key", "--quiet")
    assert_one_clear_error(full, lake)
    assert tree(lake) == {}

    disk.resize("64m")
    again = thumbs("ingest", source, "--format", "trl-kto", "--lake", lake, "--insecure-dev-key", "--quiet")
    assert again.returncode == 0 and "1 source(s) read" in again.stdout, again.stderr
    assert feedback_dataset(lake).count_rows() == 3000


def test_a_full_disk_under_the_snapshot_folder(disk, tmp_path):
    source = events(tmp_path / "events.jsonl")
    assert thumbs("ingest", source, "--lake", tmp_path / "lake", "--insecure-dev-key", "--quiet").returncode == 0
    disk.resize("256k")
    out = disk.path / "snapshots"
    full = thumbs("curate", "--lake", tmp_path / "lake", "--out", out)
    assert_one_clear_error(full, out)
    assert tree(out) == {}  # the hidden work folder is gone too

    disk.resize("64m")
    again = thumbs("curate", "--lake", tmp_path / "lake", "--out", out, "--json")
    assert again.returncode == 0, again.stderr
    assert (out / json.loads(again.stdout)["snapshot_id"] / "stats.json").exists()


def test_a_full_disk_under_the_checkpoint_folder(disk, hh_snapshot, tiny_model, tmp_path):
    (tmp_path / "train.yaml").write_text("max_steps: 4\ncheckpoint_every: 2\nmicro_batch_size: 4\nmax_length: 128\n"
                                         "max_prompt_length: 96\nquantize: none\n")
    out = disk.path / "adapter"
    out.mkdir()
    disk.fill(leave=16 << 10)  # room for metrics.jsonl, not for a checkpoint
    args = ["train", "--snapshot", hh_snapshot, "--base-model", tiny_model, "--config", tmp_path / "train.yaml",
            "--out", out]
    full = thumbs(*args)
    assert_one_clear_error(full, out / "checkpoints" / "step-0000002")
    assert [p.name for p in (out / "checkpoints").iterdir()] == []  # no half checkpoint, not even a hidden one

    disk.free()
    again = thumbs(*args)
    assert again.returncode == 0, again.stderr
    assert (out / "thumbs_meta.json").exists() and (out / "adapter_model.safetensors").exists()


def test_a_full_disk_under_the_export_folder(disk, hh_snapshot, tiny_model, tmp_path):
    from evaluation.evaluate import EvalConfig, evaluate
    from training.config import TrainConfig
    from training.trainer import train

    adapter = tmp_path / "run"
    train(hh_snapshot, str(tiny_model), adapter, TrainConfig(max_steps=1, micro_batch_size=4, max_length=128,
                                                            max_prompt_length=96, quantize="none",
                                                            checkpoint_every=0), log=lambda s: None)
    evaluate(adapter, hh_snapshot, config=EvalConfig(generation_prompts=0, resamples=20, device="cpu"),
             log=lambda s: None)
    registry = tmp_path / "registry"
    assert thumbs("promote", "--adapter", adapter, "--registry", registry, "--force").returncode == 0
    out = disk.path / "serve"
    disk.fill(leave=4 << 10)
    full = thumbs("export", "production", "--registry", registry, "--out", out)
    assert_one_clear_error(full, out)
    assert sorted(p.name for p in disk.path.iterdir()) == ["filler"]  # no staging folder left

    disk.free()
    again = thumbs("export", "production", "--registry", registry, "--out", out)
    assert again.returncode == 0, again.stderr
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "serving.json"}
