"""Every snapshot proves itself to every reader (issue 26).

A snapshot damaged in any way (labels moved between rows with the class counts unchanged, an edited
weight in stats.json, a torn stats.json, a flipped bit, a missing, extra or edited file, one written
before snapshots carried a proof) is refused by every reader with one error naming the file and the
command that repairs it; running that command repairs it (the damaged folder kept aside) and a second
run reuses it. A killed curate's work folder is removed by the next curate, and nothing else is.
Snapshot folders get the mode a plain mkdir gives, so a server running as another user can read them.
The same proof is checked on a snapshot in an object store (memory:// here, the code path of s3://).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import time
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fault_helpers import kill_at, tree
from flows.cli import app
from ingest import remote
from ingest.curate import store
from ingest.curate.pipeline import curate
from ingest.curate.rules import CurateConfig
from ingest.intake.job import IngestConfig, ingest
from ingest.curate.manifest import verify_snapshot
from ingest.curate.snapshot import (EVAL, TRAIN, SnapshotError, is_published, read_split, read_stats, split_files,
                             write_split, write_stats)

SINCE, UNTIL = "2026-11-19", "2026-11-20"  # a window, so the repair command must carry it


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """One lake and its snapshot for the window, built once; each test works on a copy of the snapshot."""
    root = tmp_path_factory.mktemp("built")
    source = root / "events.jsonl"
    source.write_text("\n".join(json.dumps({
        "event_id": f"e{i}", "timestamp": f"2026-11-{18 + i % 3}T10:00:00Z", "user_id": f"u{i % 7}",
        "prompt": f"question {i % 150}", "completion": f"answer {i % 300}", "label": "up" if i % 5 else "down"})
        for i in range(600)) + "\n")
    ingest([source], root / "lake", IngestConfig(insecure_dev_key=True), progress=False)
    stats = curate(root / "lake", root / "snapshots", date.fromisoformat(SINCE), date.fromisoformat(UNTIL))
    path = Path(stats["path"])
    return {"lake": root / "lake", "path": path, "rows": {s: read_split(path, s) for s in (TRAIN, EVAL)}}


@pytest.fixture
def snapshot(built, tmp_path) -> Path:
    return Path(shutil.copytree(built["path"], tmp_path / "snapshots" / built["path"].name))


# --- the damage: each returns the file it damaged (relative to the snapshot) ----------------------------------

def move_labels(snap: Path) -> str:
    """Every train label moved one row on: the class counts (and so the weights) are unchanged."""
    part = split_files(snap, TRAIN)[0]
    table = pq.read_table(part)
    labels = table["desirable"].to_pylist()
    moved = labels[1:] + labels[:1]
    assert moved != labels and sum(moved) == sum(labels)
    pq.write_table(table.set_column(table.schema.get_field_index("desirable"), "desirable",
                                    [moved]).cast(table.schema), part)
    return str(part.relative_to(snap))


def edit_stats(change):
    def damage(snap: Path) -> str:
        stats = json.loads((snap / "stats.json").read_text())
        change(stats)
        (snap / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        return "stats.json"
    return damage


def tear(name: str, keep: float):
    def damage(snap: Path) -> str:
        data = (snap / name).read_bytes()
        (snap / name).write_bytes(data[:int(len(data) * keep)])
        return name
    return damage


def flip_bit(snap: Path) -> str:
    part = split_files(snap, EVAL)[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    return str(part.relative_to(snap))


def delete_file(snap: Path) -> str:
    part = split_files(snap, EVAL)[0]
    part.unlink()
    return str(part.relative_to(snap))


def extra_file(snap: Path) -> str:
    shutil.copy(split_files(snap, TRAIN)[0], snap / TRAIN / "extra.parquet")
    return "train/extra.parquet"


def edit_manifest(snap: Path) -> str:
    manifest = json.loads((snap / "manifest.json").read_text())
    manifest["files"][0]["rows"] += 1
    (snap / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return "manifest.json"


DAMAGE = {
    "labels moved, counts unchanged": move_labels,
    "weight edited": edit_stats(lambda s: s.update(desirable_weight=s["desirable_weight"] * 2)),
    "count edited": edit_stats(lambda s: s["counts"].update(train=s["counts"]["train"] + 1)),
    "written before the proof": edit_stats(lambda s: s.pop("proof")),
    "stats torn to nothing": tear("stats.json", 0.0),
    "stats torn in half": tear("stats.json", 0.5),
    "stats missing its last bytes": tear("stats.json", 0.99),
    "a bit flipped in a data file": flip_bit,
    "a data file deleted": delete_file,
    "an extra data file": extra_file,
    "manifest edited": edit_manifest,
    "manifest torn": tear("manifest.json", 0.5),
}


def advice(message: str, lake: Path) -> list[str]:
    """The command the error says to run, LAKE being the lake, as `thumbs` arguments."""
    command = re.search(r"run `([^`]+)`", message).group(1)
    args = shlex.split(command)
    assert args[:2] == ["thumbs", "curate"]
    return [str(lake) if a == "LAKE" else a for a in args[2:]]


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_every_reader_refuses_a_damaged_snapshot_with_one_error_naming_the_file(damage, snapshot, tmp_path):
    assert read_stats(snapshot)["snapshot_id"] == snapshot.name  # proven once: this process remembers it
    damaged = damage(snapshot)

    errors = []
    for read in (read_stats, lambda s: read_split(s, TRAIN), lambda s: read_split(s, EVAL)):
        with pytest.raises(SnapshotError) as caught:
            read(snapshot)
        errors.append(str(caught.value))
    assert len(set(errors)) == 1
    message = errors[0]
    assert f"{snapshot}/{damaged}" in message and "thumbs curate --lake LAKE --out" in message
    assert ".damaged-" in message and "\n" not in message
    assert not is_published(snapshot)  # what curate's reuse check and the nightly flow's cache key ask
    assert any(damaged in problem for problem in verify_snapshot(snapshot))

    verified = invoke("curate", "--verify-only", snapshot)
    assert verified.exit_code == 1 and damaged in verified.output
    trained = invoke("train", "--snapshot", snapshot, "--base-model", tmp_path / "no-model", "--out", tmp_path / "run")
    assert trained.exit_code == 2 and damaged in trained.output and "damaged" in trained.output
    assert trained.exception is None or isinstance(trained.exception, SystemExit)  # no traceback
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_following_the_advice_repairs_the_snapshot_and_keeps_the_damaged_one(damage, snapshot, built):
    damage(snapshot)
    evidence = tree(snapshot)
    with pytest.raises(SnapshotError) as caught:
        read_split(snapshot)
    args = advice(str(caught.value), built["lake"])

    repaired = invoke("curate", *args)
    assert repaired.exit_code == 0, repaired.output
    assert f"wrote snapshot {snapshot.name}" in repaired.output
    assert {s: read_split(snapshot, s) for s in (TRAIN, EVAL)} == built["rows"]
    assert verify_snapshot(snapshot) == [] and is_published(snapshot)
    aside = [p for p in snapshot.parent.iterdir() if p.name.startswith(f".damaged-{snapshot.name}-")]
    assert len(aside) == 1 and tree(aside[0]) == evidence  # kept whole, as evidence

    again = invoke("curate", *args)  # no loop: the repaired snapshot is reused
    assert again.exit_code == 0 and f"unchanged, reusing snapshot {snapshot.name}" in again.output
    assert len([p for p in snapshot.parent.iterdir() if p.name.startswith(".damaged-")]) == 1


@pytest.mark.parametrize("damage", [DAMAGE["weight edited"], DAMAGE["stats torn in half"]],
                         ids=["from stats.json", "from manifest.json, stats.json torn"])
def test_the_advice_carries_the_config_that_built_the_snapshot(damage, built, tmp_path):
    out = tmp_path / "snapshots"
    config = CurateConfig(eval_fraction=0.2, n_buckets=4)
    path = Path(curate(built["lake"], out, config=config)["path"])
    rows = read_split(path, EVAL)
    damage(path)
    with pytest.raises(SnapshotError) as caught:
        read_stats(path)
    message = str(caught.value)
    assert "--eval-fraction 0.2 --config CONFIG" in message and '{"n_buckets": 4}' in message
    (tmp_path / "curate.yaml").write_text(re.search(r"YAML file holding (\{.*?\})", message).group(1))
    args = [str(tmp_path / "curate.yaml") if a == "CONFIG" else a for a in advice(message, built["lake"])]
    repaired = invoke("curate", *args)
    assert repaired.exit_code == 0 and f"wrote snapshot {path.name}" in repaired.output, repaired.output
    assert read_split(path, EVAL) == rows


def test_a_whole_snapshot_and_its_copy_read_and_verify(snapshot, built):
    assert is_published(snapshot) and verify_snapshot(snapshot) == []
    assert read_split(snapshot) == built["rows"][TRAIN] and "proof" not in read_stats(snapshot)
    ok = invoke("curate", "--verify-only", snapshot)
    assert ok.exit_code == 0 and "verified" in ok.output


# --- a killed curate's work folder ------------------------------------------------------------------------

def _owner(folder: Path, **change) -> None:
    owner = folder / "owner.json"
    owner.write_text(json.dumps({**json.loads(owner.read_text()), **change}))


def test_a_killed_curates_work_folder_is_removed_by_the_next_curate_and_nothing_else(built, tmp_path):
    out = tmp_path / "snapshots"
    window = ["--since", SINCE, "--until", UNTIL]
    kill_at("curate.mid_snapshot", "curate", "--lake", built["lake"], "--out", out, *window, workdir=tmp_path)
    [killed] = [p for p in out.iterdir() if p.name.startswith(f".{built['path'].name}.")]
    template = Path(shutil.copytree(killed, tmp_path / "template"))
    sid = built["path"].name
    old = time.time() - 4 * 24 * 3600

    def neighbour(name: str, **owner) -> Path:
        folder = Path(shutil.copytree(template, out / name))
        if owner:
            _owner(folder, **owner)
        return folder

    ours_elsewhere_old = neighbour(f".{sid}.1.oldother", host="elsewhere")
    os.utime(ours_elsewhere_old / "owner.json", (old, old))
    neighbour(f".{sid}.2.aliveone", pid=os.getpid())                    # its writer is running: kept
    neighbour(f".{sid}.3.recentot", host="elsewhere")                   # another host's, recent: kept
    (neighbour(f".{sid}.4.noowner0") / "owner.json").unlink()          # no owner file: not provably ours
    (neighbour(f".{sid}.5.tornown0") / "owner.json").write_text('{"pid": 1')
    neighbour(f".damaged-{sid}-20261120T000000000000Z")                 # evidence, never removed
    neighbour(".cache")
    neighbour(f".{sid}.6.toolongname")                                  # not our name pattern
    neighbour(f"{sid[:-1]}x.7.abcdefgh")
    (out / f".{sid}.8.symlink0").symlink_to(neighbour("target"))
    (out / f".{sid}.9.afile000").write_text("not a folder")
    expected_kept = sorted(p.name for p in out.iterdir() if p not in (killed, ours_elsewhere_old))

    rerun = invoke("curate", "--lake", built["lake"], "--out", out, *window)
    assert rerun.exit_code == 0, rerun.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected_kept, sid])
    assert (out / "target" / "owner.json").is_file()  # the link's target untouched

    neighbour(f".{sid}.{json.loads((template / 'owner.json').read_text())['pid']}.again000")
    reused = invoke("curate", "--lake", built["lake"], "--out", out, *window)  # a reusing curate cleans too
    assert reused.exit_code == 0 and "unchanged, reusing" in reused.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected_kept, sid])


# --- who can read a snapshot ------------------------------------------------------------------------------

def _hand_built(folder: Path, rows: list[dict]) -> None:
    import pyarrow as pa

    for split in (TRAIN, EVAL):
        write_split(folder, split, pa.Table.from_pylist(rows))
    write_stats(folder, {"snapshot_id": folder.name, "desirable_weight": 1.0, "undesirable_weight": 1.0})


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027])
@pytest.mark.parametrize("builder", ["curate", "write_stats"])
def test_snapshot_folders_and_files_get_the_mode_a_plain_mkdir_gives(umask, builder, built, tmp_path):
    previous = os.umask(umask)
    try:
        if builder == "curate":
            path = Path(curate(built["lake"], tmp_path / "snapshots", date.fromisoformat(SINCE),
                               date.fromisoformat(UNTIL))["path"])
        else:
            path = tmp_path / "snapshots" / "by-hand"
            _hand_built(path, built["rows"][EVAL][:4])
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(path.parent)): p.stat().st_mode & 0o777 for p in [path, *path.rglob("*")]}
    want = {name: (0o777 if (path.parent / name).is_dir() else 0o666) & ~umask for name in modes}
    assert modes == want and len(modes) >= 6
    assert read_split(path, EVAL)  # and it reads back whole


# --- the same proof on an object store -------------------------------------------------------------------

STORE_DAMAGE = {k: DAMAGE[k] for k in ("labels moved, counts unchanged", "weight edited", "written before the proof",
                                        "stats torn in half", "manifest edited")}


@pytest.mark.parametrize("damage", [None, *STORE_DAMAGE.values()], ids=["whole", *STORE_DAMAGE.keys()])
def test_a_snapshot_in_a_store_is_held_to_the_same_proof(damage, snapshot, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    url = f"memory://thumbs-{tmp_path.name}/snapshots/{snapshot.name}"
    store.publish_snapshot(snapshot, url)
    damaged = None
    if damage is not None:  # damage what the store holds: a local copy, then each changed object put back
        staged = Path(shutil.copytree(snapshot, tmp_path / "staged"))
        before = tree(staged)
        damaged = damage(staged)
        fs = fsspec.filesystem("memory")
        for rel, digest in tree(staged).items():
            if before.get(rel) != digest:
                fs.pipe_file(f"{url}/{rel}", (staged / rel).read_bytes())
        for rel in before.keys() - tree(staged).keys():
            fs.rm_file(f"{url}/{rel}")

    verified = invoke("curate", "--verify-only", url)
    if damaged is None:
        assert verified.exit_code == 0 and "verified" in verified.output
        assert read_split(store.local_snapshot(url)) == read_split(snapshot)
        return
    assert verified.exit_code == 1 and damaged in verified.output
    with pytest.raises(SnapshotError, match=re.escape(damaged)):
        store.local_snapshot(url)
