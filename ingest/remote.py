"""The lake on an object store (s3://, gs://, any fsspec URL), through a local mirror; snapshots use the same
mirror and upload (ingest/curate/store.py).

    thumbs ingest logs/*.jsonl --lake s3://bucket/thumbs/lake       (ingest/intake/job.py, through leased_mirror)
    thumbs curate --lake s3://bucket/thumbs/lake --out s3://bucket/thumbs/snapshots
    thumbs train --snapshot s3://bucket/thumbs/snapshots/3f2a9c0d1e4b5a6f ...

Object stores have no rename, so nothing is renamed there. A command works on a local mirror of the
remote folder (THUMBS_CACHE, default ~/.cache/thumbs, then mirror/<protocol>/<bucket>/<path>): it
downloads what the mirror lacks, runs the local code unchanged (same files, same bytes, same snapshot
id), and uploads what the store lacks, each file one PUT (whole or absent on S3 and GCS, multipart
included), in an order that puts the commit marks last:

    lake       data and quarantine files first, then _sources/<sha256>.json: a source's commit
    snapshot   train/, eval/ and manifest.json first, then stats.json: the snapshot's mark

Readers trust the marks exactly as they do locally: a lake file of an unrecorded source is skipped, a
folder without stats.json is not a snapshot (`local_snapshot` refuses it). A run killed mid-upload left
files no reader takes; the rerun uploads the rest under the same names. The mirror is a cache: deleting
it costs a download, never data. An S3 endpoint other than AWS comes from AWS_ENDPOINT_URL_S3 (s3fs).

The mirror is never trusted by name and size alone: records are downloaded afresh each time, and every
lake file a record lists is checked against its sha256 (downloaded again if it differs; a store object
that differs too is one LakeError naming it and the repair). An ingest holds a lease per source on the
store (LAKE/.locks/<sha256>/, a create-if-absent write, renewed while alive), so two machines ingesting
one source take turns, as two processes do on one disk.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from common.faults import fault_point
from common.leases import held, lease_body, newest_lease

CACHE_ENV = "THUMBS_CACHE"
LEASE_ENV = "THUMBS_LAKE_LEASE_S"  # how long a killed ingest's lease on a remote source blocks others
DEFAULT_LEASE_S = 60.0


def is_remote(location) -> bool:
    """An fsspec URL of a store other than the local disk (s3://, gs://, memory://, ...)."""
    text = str(location)
    return "://" in text and not text.startswith(("file://", "local://"))


def store_fs(url: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()  # another process may have written since this one last listed
    return fs, root.rstrip("/")


def mirror_dir(url: str) -> Path:
    """The local folder that mirrors `url`."""
    protocol, _, rest = str(url).partition("://")
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "thumbs")
    return base / "mirror" / protocol / rest.strip("/")


def hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def listing(fs, root: str) -> dict[str, int]:
    """{relative path: bytes} of every visible object under root."""
    if not fs.exists(root):
        return {}
    found = fs.find(root, detail=True)
    out = {}
    for name, info in found.items():
        rel = posixpath.relpath(name, root)
        if info.get("type", "file") == "file" and not hidden(rel):
            out[rel] = info["size"]
    return out


def pull(url: str, local: Path | None = None, fresh: Callable[[str], bool] = lambda rel: False) -> Path:
    """Download every object of `url` the mirror lacks (or holds at another size; or that `fresh` names,
    whatever its size); returns the mirror."""
    fs, root = store_fs(url)
    local = Path(local or mirror_dir(url))
    local.mkdir(parents=True, exist_ok=True)
    for rel, size in sorted(listing(fs, root).items()):
        target = local / rel
        if target.is_file() and target.stat().st_size == size and not fresh(rel):
            continue
        _download(fs, f"{root}/{rel}", target)
    return local


def _download(fs, key: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.part"
    try:
        fs.get_file(key, str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def push(local: Path, url: str, is_mark: Callable[[str], bool], marks: bool = True, always=()) -> int:
    """Upload every visible file of `local` the store lacks (or holds at another size; or named in `always`),
    marks last (`marks=False`: all but the marks, which the caller writes). Returns how many were uploaded."""
    fs, root = store_fs(url)
    remote = listing(fs, root)
    todo = []
    for path in sorted(Path(local).rglob("*")):
        rel = path.relative_to(local).as_posix()
        if path.is_file() and not hidden(rel) and (remote.get(rel) != path.stat().st_size or rel in always):
            todo.append(rel)
    todo.sort(key=is_mark)  # stable: data in name order, then the marks in name order
    if not marks:
        todo = [rel for rel in todo if not is_mark(rel)]
    for i, rel in enumerate(todo):
        if i == 1:
            fault_point("remote.mid_upload")  # one file in the store, the rest and the marks not yet
        fs.put_file(str(Path(local) / rel), f"{root}/{rel}")
    return len(todo)


# --- the lake -----------------------------------------------------------------------------------------------

def _lake_mark(rel: str) -> bool:
    from ingest.lake import SOURCES_DIR

    return rel.startswith(f"{SOURCES_DIR}/")


@contextlib.contextmanager
def leased_mirror(url: str, shas, replacing=()) -> Iterator[Path]:
    """The remote lake's checked mirror, while this process holds the store's lease on each source in `shas`
    (taken in one order for every run, so two never wait on each other in a circle); `replacing`: sources
    being ingested again (`--force`), whose files are not checked."""
    with contextlib.ExitStack() as stack:
        for sha in sorted(set(shas)):
            stack.enter_context(_lease(url, sha))
        yield pull_lake(url, replacing=replacing)


def publish_lake(mirror: Path, url: str, written) -> None:
    """Upload the mirror's new files, the records of the sources in `written` last (a forced source's record
    whatever its size), then remove objects of those sources that their records do not list (a push an
    earlier run was killed in). Call it inside `leased_mirror`."""
    from ingest.lake import SOURCES_DIR

    push(mirror, url, _lake_mark, always={f"{SOURCES_DIR}/{sha}.json" for sha in written})
    _remove_unlisted(url, mirror, written)


def pull_lake(url: str, replacing=()) -> Path:
    """The remote lake's mirror, up to date and checked: every record downloaded afresh (a forced re-ingest
    may keep its size), every file a record lists compared with its sha256 and downloaded again if it
    differs. Curate reads it: only recorded sources count, as locally. LakeError names a file the store
    itself holds damaged, with the command that repairs it. Sources in `replacing` (being ingested again
    with --force, the repair) are not checked."""
    from ingest.lake import LakeError, file_proof, records

    fs, root = store_fs(url)
    local = pull(url, fresh=_lake_mark)
    for sha, record in records(local, skip=set(replacing)).items():
        for entry in record.get("files") or []:
            target = local / entry["path"]
            if target.is_file() and _matches(target, entry, file_proof):
                continue
            if fs.exists(f"{root}/{entry['path']}"):
                _download(fs, f"{root}/{entry['path']}", target)
            if not (target.is_file() and _matches(target, entry, file_proof)):
                raise LakeError(f"lake file {url}/{entry['path']} (of source {record.get('source')!r}) is missing or "
                                "differs from its record; repair it by ingesting that source again: thumbs ingest "
                                f"--force {record.get('source') or sha} --lake {url}")
    return local


def _matches(path: Path, entry: dict, file_proof) -> bool:
    proof = file_proof(path)
    return proof["bytes"] == entry["bytes"] and proof["sha256"] == entry["sha256"]


def _remove_unlisted(url: str, mirror: Path, shas: list[str]) -> None:
    """Objects of the sources just written that their records do not list (a killed run's, a replaced
    record's): under the source's lease no other run writes them."""
    from ingest.lake import FEEDBACK_DIR, GENERATIONS_DIR, QUARANTINE_DIR, read_record

    if not shas:
        return
    fs, root = store_fs(url)
    there = listing(fs, root)
    for sha in shas:
        record = read_record(mirror, sha)
        if record is None or record.get("files") is None:
            continue
        listed = {e["path"] for e in record["files"]}
        for rel in there:
            name = rel.rsplit("/", 1)[-1].removeprefix("part-")
            if rel.split("/", 1)[0] in (FEEDBACK_DIR, QUARANTINE_DIR, GENERATIONS_DIR) \
                    and name.startswith(sha[:16]) and rel not in listed:
                fs.rm_file(f"{root}/{rel}")


@contextlib.contextmanager
def _lease(url: str, sha: str) -> Iterator[None]:
    """One run per source of a remote lake: a lease object in LAKE/.locks/<sha256>/, numbered, taken with a
    create-if-absent write (S3 If-None-Match). Free when its holder wrote `<n>.released`, or expired: a live
    holder renews it every third of THUMBS_LAKE_LEASE_S, so a killed one blocks others that long at most.
    The last lease and its marker stay (hidden: no listing, pull or push takes them)."""
    fs, root = store_fs(url)
    folder = f"{root}/.locks/{sha}"
    lease_s = float(os.environ.get(LEASE_ENV) or DEFAULT_LEASE_S)
    told = False
    while True:
        epoch, free = newest_lease(fs, folder)
        if free:
            try:
                fs.pipe_file(f"{folder}/{epoch + 1:012d}", lease_body(lease_s), mode="create")
                break
            except FileExistsError:
                pass  # another run took it first
        if not told:
            print(f"ingest: another run holds source {sha[:12]} of {url}; waiting for it", file=sys.stderr)
            told = True
        time.sleep(0.5)
    mine = f"{folder}/{epoch + 1:012d}"
    for suffix in ("", ".released"):  # the lease before is history (numbers are never reused: a slow reader
        with contextlib.suppress(FileNotFoundError):  # of the folder can only see a newer lease taken)
            fs.rm_file(f"{folder}/{epoch:012d}{suffix}")
    with held(fs, mine, lease_s):
        yield
