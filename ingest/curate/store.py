"""Snapshots on an object store (s3://, gs://, any fsspec URL): publish one whole, read one verified.

    thumbs curate --lake s3://bucket/thumbs/lake --out s3://bucket/thumbs/snapshots
    thumbs train --snapshot s3://bucket/thumbs/snapshots/3f2a9c0d1e4b5a6f ...

A snapshot is uploaded from its local folder with train/, eval/ and manifest.json first and stats.json (its
mark) last; a reader downloads it into the local mirror (ingest/remote.py) and checks it against its manifest
before use. The mirror and the upload are ingest/remote.py's; this module adds what makes them a snapshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.faults import fault_point
from ingest.curate import snapshot as layout
from ingest.curate.manifest import verify_snapshot
from ingest.remote import hidden, is_remote, listing, mirror_dir, pull, push, store_fs

def _snapshot_mark(rel: str) -> bool:
    return rel == layout.STATS


def publish_snapshot(local: Path, url: str) -> None:
    """Upload the finished local snapshot `local` to `url` (a folder of that snapshot id), stats.json last.

    Safe beside another run publishing the same id (two models' nightlies on one lake): nothing is deleted
    that this run wrote or will write; objects of this id that this run does not have (left by a run whose
    runner sharded differently) are removed; the upload is checked (every file there, at its size) before
    the mark, and the mark is a create-if-absent write (S3 If-None-Match), so of two runs one publishes
    and the other finds it published. Readers still check every byte against the manifest."""
    fs, root = store_fs(url)
    mark = f"{root}/{layout.STATS}"
    if fs.exists(mark):
        return
    push(local, url, _snapshot_mark, marks=False)
    ours = {p.relative_to(local).as_posix(): p.stat().st_size for p in Path(local).rglob("*")
            if p.is_file() and not hidden(p.relative_to(local).as_posix())}
    there = listing(store_fs(url)[0], root)
    for rel in sorted(there.keys() - ours.keys()):
        fs.rm_file(f"{root}/{rel}")
    missing = [rel for rel, size in ours.items() if rel != layout.STATS and there.get(rel) != size]
    if missing:
        raise layout.SnapshotError(f"the upload of {url} is incomplete ({', '.join(missing[:3])}): nothing was "
                                   "published; run curate again")
    fault_point("remote.before_mark")  # every file in the store, stats.json not yet
    try:
        fs.pipe_file(mark, (Path(local) / layout.STATS).read_bytes(), mode="create")
    except FileExistsError:
        pass  # another run of the same snapshot id published first: the same inputs, the same snapshot


def remote_published(url: str) -> bool:
    fs, root = store_fs(url)
    return fs.exists(f"{root}/{layout.STATS}")


def verify_remote(url: str) -> list[str]:
    """`verify_snapshot` of what the store holds now (downloaded afresh, not the mirror); [] when whole."""
    import tempfile

    url = url.rstrip("/")
    with tempfile.TemporaryDirectory(prefix=".thumbs-verify-") as scratch:
        return verify_snapshot(pull(url, Path(scratch) / url.rsplit("/", 1)[-1]))


def local_snapshot(snapshot) -> Path:
    """A snapshot folder to read: a local path as it is; a URL as its verified local mirror.

    Refuses (SnapshotError) a remote folder without stats.json (an unfinished upload) and a download that
    differs from its manifest."""
    if not is_remote(snapshot):
        return Path(snapshot)
    url = str(snapshot).rstrip("/")
    if not remote_published(url):
        raise layout.SnapshotError(f"{url} has no {layout.STATS}: not a finished `thumbs curate` snapshot (an "
                                   "interrupted upload, or a wrong path); run curate again")
    local = mirror_dir(url)
    if layout.is_published(local):
        return local
    shutil.rmtree(local, ignore_errors=True)  # an unfinished folder of this id: never read, replaced whole
    work = local.parent / f".pull-{os.getpid()}"  # downloaded under the snapshot's own name, checked, renamed
    shutil.rmtree(work, ignore_errors=True)
    try:
        staged = pull(url, work / local.name)
        problems = verify_snapshot(staged)
        if problems:
            raise layout.SnapshotError(f"{url} does not match its manifest: {'; '.join(problems[:5])}")
        try:
            os.rename(staged, local)
        except OSError:
            if not layout.is_published(local):  # another process finished the same download first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return local
