"""A curated snapshot on disk: the one module that knows its layout. Curate writes through it; training,
evaluation, verification and the flows read through it, and every read checks the snapshot's proof first.

    SNAPSHOTS/<snapshot_id>/train/*.parquet       the train split: the lake schema + votes_up, votes_down
    SNAPSHOTS/<snapshot_id>/eval/*.parquet        the eval split (prompts never in train)
    SNAPSHOTS/<snapshot_id>/manifest.json         every data file with bytes, sha256, rows (ingest/curate/manifest.py)
    SNAPSHOTS/<snapshot_id>/stats.json            counts by stage and reason, class weights, window, config, inputs;
                                                  written last, with `proof`: the sha256 of manifest.json and of
                                                  stats.json's own content (so the chain covers every byte)
    SNAPSHOTS/.cache/<snapshot_id>/<kind>/        what later stages derive from it (training's reference
                                                  log-probs: kind "refcache"); never inside the snapshot
    SNAPSHOTS/.damaged-<snapshot_id>-<UTC time>/  a damaged snapshot curate moved aside before rebuilding it (evidence)

    stats = check("snapshots/3f2a9c0d1e4b5a6f")   # its stats once every file matches its proof, else SnapshotError

A published snapshot is never rewritten: caches live beside it, so `thumbs curate --verify-only`
still finds exactly the files curate wrote. `desirable` is the resolved label (a thumbs-up is True).
A damaged snapshot (a changed, missing or extra file, an edited or torn stats.json, one written before
snapshots carried a proof) is never read: one SnapshotError names the file and the command that repairs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

TRAIN, EVAL = "train", "eval"
SPLITS = (TRAIN, EVAL)
STATS = "stats.json"
MANIFEST = "manifest.json"
CACHES = ".cache"
DAMAGED = ".damaged-"
PROOF = "proof"
EXAMPLE_COLUMNS = ("prompt", "completion", "desirable")
_verified: dict[Path, tuple] = {}  # folder -> (what its files looked like when last proven, its stats)


class SnapshotError(ValueError):
    """The folder is not a (finished) `thumbs curate` snapshot, or its files cannot be read or are damaged."""


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
    """Finished and whole: stats.json (written last, in the temp folder renamed into place) is there and the
    proof holds for every file. A damaged snapshot is not published: curate moves it aside and rebuilds it."""
    try:
        check(snapshot)
    except SnapshotError:
        return False
    return True


def read_stats(snapshot: str | Path) -> dict:
    """stats.json, once the snapshot's proof holds (SnapshotError naming the file and the repair otherwise)."""
    return check(snapshot)


def read_split(snapshot: str | Path, split: str | None = None, columns: tuple = EXAMPLE_COLUMNS) -> list:
    """Rows of a split (default: train) as dicts, in file order (deterministic); {prompt, completion, desirable}.
    Checked against the proof first: a damaged snapshot raises SnapshotError, it is never half-read."""
    files = _checked_files(snapshot, split or TRAIN)
    return ds.dataset([str(f) for f in files], format="parquet").to_table(columns=list(columns)).to_pylist()


def iter_split(snapshot: str | Path, split: str | None = None, columns: tuple = EXAMPLE_COLUMNS,
               batch_rows: int = 4096) -> Iterator[dict]:
    """`read_split`'s rows one Parquet batch at a time (at most `batch_rows` as Python objects at once), for a
    split too large to hold as dicts. Checked against the proof before the first row, as read_split is."""
    files = _checked_files(snapshot, split or TRAIN)
    batches = (batch for f in files for batch in pq.ParquetFile(f).iter_batches(batch_rows, columns=list(columns)))
    return (row for batch in batches for row in batch.to_pylist())  # in file order, as read_split


def _checked_files(snapshot: str | Path, split: str) -> list:
    """The split's Parquet files, once the snapshot is checked against its proof."""
    check(snapshot)
    files = split_files(snapshot, split)
    if not files:
        raise SnapshotError(f"no {split} Parquet files under {split_dir(snapshot, split)}: is {snapshot} a "
                            "`thumbs curate` snapshot?")
    return files


def cache_dir(snapshot: str | Path, kind: str) -> Path:
    """Where a later stage caches what it derives from this snapshot: beside it, never in it."""
    snapshot = Path(snapshot).resolve()
    return snapshot.parent / CACHES / snapshot.name / kind


def write_split(snapshot: str | Path, split: str, table, name: str = "part-00000") -> Path:
    """One Parquet file of a split, for snapshots built outside Beam (tests, benchmarks); curate's sink
    writes the same folder through `split_dir`. `write_stats` afterwards seals the folder."""
    folder = split_dir(snapshot, split)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.parquet"
    pq.write_table(table, path)
    return path


def write_stats(snapshot: str | Path, stats: dict, entries: list[dict] | None = None, **manifest_fields) -> Path:
    """manifest.json, then stats.json with its proof: the snapshot's completion mark and seal, written last.

    `entries` are the data files as `describe_files` gives them (curate passes those it proved); by default
    the files as they are now. `manifest_fields` (curate: runner, events_in) go into manifest.json."""
    folder = Path(snapshot)
    folder.mkdir(parents=True, exist_ok=True)
    if entries is None:
        entries, _ = describe_files(folder)
    body = {k: v for k, v in stats.items() if k != PROOF}
    # the window and config again: what the repair advice needs, should stats.json be torn
    repeated = {k: body[k] for k in ("window", "config") if k in body}
    manifest = {"snapshot_id": body.get("snapshot_id"), **repeated, **manifest_fields, "files": entries}
    manifest_text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    manifest_path(folder).write_text(manifest_text)
    proof = {"manifest_sha256": _sha256(manifest_text.encode()), "stats_sha256": content_sha256(body)}
    path = stats_path(folder)
    path.write_text(json.dumps({**body, PROOF: proof}, indent=2, sort_keys=True) + "\n")
    return path


def content_sha256(stats: dict) -> str:
    """The sha256 of stats.json's content less its proof, in one canonical JSON form (key order, spacing)."""
    body = {k: v for k, v in stats.items() if k != PROOF}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())


def describe_files(folder: str | Path) -> tuple[list[dict], list[str]]:
    """Each split's Parquet files as manifest entries, and every entry that has no place in a snapshot (or
    cannot be read as Parquet)."""
    folder = Path(folder)
    data, stray = _entries(folder)
    entries = []
    for rel, path in data.items():
        try:
            table = pq.read_table(path, columns=["desirable"])
        except (OSError, ValueError) as err:  # not Parquet (any more): reported, never a crash
            stray.append(f"{rel} (unreadable: {err})")
            continue
        entries.append({"path": rel, "bytes": path.stat().st_size, "sha256": file_sha256(path),
                        "rows": table.num_rows, "desirable": int(pc.sum(table.column("desirable")).as_py() or 0)})
    return entries, stray


def _entries(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """{relative path: path} of the splits' Parquet files, and every other entry (none belongs in a snapshot)."""
    data, stray = {}, []
    for split in SPLITS:
        folder_of_split = split_dir(folder, split)
        for path in sorted(folder_of_split.iterdir()) if folder_of_split.is_dir() else ():
            rel = str(path.relative_to(folder))
            if path.is_file() and path.suffix == ".parquet" and not path.name.startswith("."):
                data[rel] = path
            else:
                stray.append(rel)
    stray += [path.name for path in sorted(folder.iterdir()) if path.name not in (*SPLITS, STATS, MANIFEST)]
    return data, stray


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- reading back: the proof, checked before any use ----------------------------------------------------

def check(snapshot: str | Path) -> dict:
    """The snapshot's stats once every file matches its proof; SnapshotError (one message naming the file and
    the command that repairs it) otherwise. Within one process a folder whose files have not changed since
    they were proven (same names, sizes, inodes and change times) is not hashed again."""
    folder = Path(snapshot)
    if not folder.is_dir():
        raise SnapshotError(f"no snapshot at {folder}: the folder does not exist (a snapshot is OUT/<snapshot_id> "
                            "of `thumbs curate --out OUT`)")
    seen, key = _fingerprint(folder), folder.resolve()
    if key in _verified and _verified[key][0] == seen:
        return json.loads(json.dumps(_verified[key][1]))  # a copy: callers may change it
    stats, problems = audit(folder)
    if problems:
        if stats is None and not manifest_path(folder).exists() and not any(split_dir(folder, s).exists()
                                                                            for s in SPLITS):
            raise SnapshotError(f"{folder} is not a `thumbs curate` snapshot: it has no {STATS}, "
                                f"{MANIFEST} nor {'/'.join(SPLITS)} folders (a snapshot is OUT/<snapshot_id>)")
        raise SnapshotError(damaged_message(folder, problems, stats))
    stats = {k: v for k, v in stats.items() if k != PROOF}  # the proof is this module's business
    _verified[key] = (seen, stats)
    return json.loads(json.dumps(stats))


def audit(snapshot: str | Path) -> tuple[dict | None, list[str]]:
    """(stats or None if unreadable, every way the folder differs from its proof); each problem starts with
    the file it is about. [] when stats.json's own hash, manifest.json's and every data file's hold."""
    folder = Path(snapshot)
    stats = _read_json(stats_path(folder))
    if stats is None:
        return None, [f"{STATS}: " + ("missing" if not stats_path(folder).exists() else "unreadable (torn or not "
                                      "JSON)") + ": not a finished `thumbs curate` snapshot, or a damaged one"]
    proof = stats.get(PROOF)
    if not isinstance(proof, dict):
        return stats, [f"{STATS}: carries no proof: written before snapshots were sealed, so nothing in it can be "
                       "checked; rebuild it"]
    problems = []
    if proof.get("stats_sha256") != content_sha256(stats):
        problems.append(f"{STATS}: changed after curate wrote it (its content no longer matches its sha256)")
    try:
        manifest_bytes = manifest_path(folder).read_bytes()
    except OSError:
        return stats, problems + [f"{MANIFEST}: missing"]
    if _sha256(manifest_bytes) != proof.get("manifest_sha256"):
        return stats, problems + [f"{MANIFEST}: changed after curate wrote it (its sha256 is not the one "
                                  f"{STATS} records)"]
    return stats, problems + _file_problems(folder, json.loads(manifest_bytes))


def _file_problems(folder: Path, manifest: dict) -> list[str]:
    listed = {e["path"]: e for e in manifest.get("files", [])}
    found, stray = _entries(folder)
    problems = [f"{name}: unexpected entry" for name in stray]
    problems += [f"{name}: in the manifest, missing on disk" for name in sorted(listed.keys() - found.keys())]
    problems += [f"{name}: on disk, not in the manifest" for name in sorted(found.keys() - listed.keys())]
    for name in sorted(listed.keys() & found.keys()):
        size = found[name].stat().st_size
        if size != listed[name].get("bytes"):
            problems.append(f"{name}: bytes is {size}, the manifest says {listed[name].get('bytes')}")
        elif file_sha256(found[name]) != listed[name].get("sha256"):
            problems.append(f"{name}: sha256 differs from the manifest's (the same size, other bytes)")
    return problems


def damaged_message(folder: Path, problems: list[str], stats: dict | None) -> str:
    """One error for a damaged snapshot: the first damaged file, and the command that repairs it."""
    more = (f" (and {len(problems) - 1} more; `thumbs curate --verify-only {shlex.quote(str(folder))}` lists "
            "them)") if len(problems) > 1 else ""
    return (f"snapshot {folder} is damaged and was not read: {folder}/{problems[0]}{more}. To repair it, "
            f"{repair_advice(folder, stats)}")


def repair_advice(folder: Path, stats: dict | None) -> str:
    """The curate command that rebuilds this snapshot (its window and config from stats.json, or from
    manifest.json when stats.json is torn), and what it does with the damaged folder."""
    hints = stats if isinstance(stats, dict) else (_read_json(manifest_path(folder)) or {})
    flags, notes = _curate_flags(hints)
    command = " ".join(["thumbs curate --lake LAKE --out", shlex.quote(str(folder.parent)), *flags])
    return (f"run `{command}`, LAKE being the lake it was curated from{notes}: curate moves the damaged folder "
            f"aside to {folder.parent}/{DAMAGED}{folder.name}-<UTC time> (kept as evidence, never deleted) and "
            "writes the snapshot again")


def _curate_flags(hints: dict) -> tuple[list[str], str]:
    from ingest.curate.rules import CurateConfig  # the defaults: only what differs needs a flag

    window, config = hints.get("window"), hints.get("config")
    if not isinstance(window, dict) or not isinstance(config, dict):
        return [], " (with the --since, --until and --config it was curated with)"
    flags = [f"--{end} {shlex.quote(window[end])}" for end in ("since", "until") if isinstance(window.get(end), str)]
    defaults = CurateConfig().to_dict()
    changed = {k: v for k, v in sorted(config.items()) if defaults.get(k) != v}
    named = {"policy": "--policy", "eval_fraction": "--eval-fraction", "min_per_class": "--min-per-class"}
    flags += [f"{named[k]} {shlex.quote(str(v))}" for k, v in changed.items() if k in named]
    rest = {k: v for k, v in changed.items() if k not in named}
    if not rest:
        return flags, ""
    return [*flags, "--config CONFIG"], f" and CONFIG a YAML file holding {json.dumps(rest)}"


def set_aside(snapshot: str | Path) -> Path:
    """Rename a damaged snapshot out of readers' way, beside it and hidden; never deleted (it is evidence)."""
    folder = Path(snapshot)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder.parent / f"{DAMAGED}{folder.name}-{stamp}"
    os.rename(folder, target)
    _verified.pop(folder.resolve(), None)
    return target


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _fingerprint(folder: Path) -> tuple:
    """Every entry's name, size, inode and change time: any write, rename or copy-over changes it."""
    seen = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            seen.append((os.path.relpath(os.path.join(root, name), folder), st.st_size, st.st_ino, st.st_mtime_ns,
                         st.st_ctime_ns))
    return tuple(sorted(seen))
