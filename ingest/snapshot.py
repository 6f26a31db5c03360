"""A curated snapshot on disk: the one module that knows its layout. Curate writes through it; training,
evaluation, verification and the flows read through it.

    SNAPSHOTS/<snapshot_id>/train/*.parquet       the train split: the lake schema + votes_up, votes_down
    SNAPSHOTS/<snapshot_id>/eval/*.parquet        the eval split (prompts never in train)
    SNAPSHOTS/<snapshot_id>/stats.json            counts by stage and reason, class weights, window, config, inputs
    SNAPSHOTS/<snapshot_id>/manifest.json         every data file with bytes, sha256, rows (ingest/manifest.py)
    SNAPSHOTS/.cache/<snapshot_id>/<kind>/        what later stages derive from it (training's reference
                                                  log-probs: kind "refcache"); never inside the snapshot

A published snapshot is never rewritten: caches live beside it, so `thumbs curate --verify-only`
still finds exactly the files curate wrote. `desirable` is the resolved label (a thumbs-up is True).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds

TRAIN, EVAL = "train", "eval"
SPLITS = (TRAIN, EVAL)
STATS = "stats.json"
MANIFEST = "manifest.json"
CACHES = ".cache"
EXAMPLE_COLUMNS = ("prompt", "completion", "desirable")


class SnapshotError(ValueError):
    """The folder is not a (finished) `thumbs curate` snapshot, or its files cannot be read."""


def split_dir(snapshot: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise SnapshotError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(snapshot) / split


def split_files(snapshot: str | Path, split: str) -> list[Path]:
    """The split's Parquet files, sorted (hidden temp files skipped)."""
    folder = split_dir(snapshot, split)
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".")) if folder.is_dir() else []


def stats_path(snapshot: str | Path) -> Path:
    return Path(snapshot) / STATS


def manifest_path(snapshot: str | Path) -> Path:
    return Path(snapshot) / MANIFEST


def is_published(snapshot: str | Path) -> bool:
    """stats.json is written last, inside the temp folder that is renamed into place: its presence means done."""
    return stats_path(snapshot).is_file()


def read_stats(snapshot: str | Path) -> dict:
    path = stats_path(snapshot)
    if not path.is_file():
        raise SnapshotError(f"{path} not found: {snapshot} is not a finished `thumbs curate` snapshot")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SnapshotError(f"{path} is unreadable ({err}): curate the snapshot again") from err


def read_split(snapshot: str | Path, split: str | None = None, columns: tuple = EXAMPLE_COLUMNS) -> list:
    """Rows of a split (default: train) as dicts, in file order (deterministic); {prompt, completion, desirable}."""
    split = split or TRAIN
    files = split_files(snapshot, split)
    if not files:
        raise SnapshotError(f"no {split} Parquet files under {split_dir(snapshot, split)}: is {snapshot} a "
                            "`thumbs curate` snapshot?")
    return ds.dataset([str(f) for f in files], format="parquet").to_table(columns=list(columns)).to_pylist()


def cache_dir(snapshot: str | Path, kind: str) -> Path:
    """Where a later stage caches what it derives from this snapshot: beside it, never in it."""
    snapshot = Path(snapshot).resolve()
    return snapshot.parent / CACHES / snapshot.name / kind


def write_split(snapshot: str | Path, split: str, table, name: str = "part-00000") -> Path:
    """One Parquet file of a split, for snapshots built outside Beam (tests, benchmarks); curate's sink
    writes the same folder through `split_dir`."""
    import pyarrow.parquet as pq

    folder = split_dir(snapshot, split)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.parquet"
    pq.write_table(table, path)
    return path


def write_stats(snapshot: str | Path, stats: dict) -> Path:
    """stats.json, the snapshot's completion mark: written last."""
    path = stats_path(snapshot)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return path
