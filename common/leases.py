"""Leases on an object store, for writers that cannot take an OS lock there: numbered objects in one folder,
created with create-if-absent (`fs.pipe_file(..., mode="create")`, S3's `If-None-Match: *`), renewed while the
holder lives, free once their `.released` marker exists or their time is up. The registry's writer lock
(deploy/registry.py) and a remote lake's per-source lock (ingest/remote.py) both use them.

    epoch, free = newest_lease(fs, "bucket/registry/default/.locks")
    if free:
        fs.pipe_file(f"{folder}/{epoch + 1:012d}", lease_body(60), mode="create")   # FileExistsError: lost the race
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import threading
import time
from typing import Callable, Iterator, Optional


def newest_lease(fs, folder: str) -> tuple[int, bool]:
    """(the newest lease's number, whether it is free to take) in `folder` (0, True when there is none)."""
    fs.invalidate_cache()
    names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False)} if fs.exists(folder) else set()
    epochs = [int(n) for n in names if n.isdigit()]
    if not epochs:
        return 0, True
    epoch = max(epochs)
    if f"{epoch:012d}.released" in names:
        return epoch, True
    try:
        lease = json.loads(fs.cat_file(f"{folder.rstrip('/')}/{epoch:012d}"))
    except (FileNotFoundError, ValueError):  # removed by a newer taker, or half-written: look again
        return epoch, False
    return epoch, time.time() > float(lease.get("expires", 0))


def lease_body(seconds: float) -> bytes:
    """A lease's content: who holds it and until when."""
    now = time.time()
    return json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "at": now, "expires": now + seconds}).encode()


@contextlib.contextmanager
def held(fs, path: str, seconds: float, still_mine: Optional[Callable[[], bool]] = None) -> Iterator[None]:
    """Hold the lease just created at `path`: renewed every `seconds / 3` (while `still_mine()`, where given),
    released (its `.released` marker written) on exit."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 3):
            if still_mine is None or still_mine():
                fs.pipe_file(path, lease_body(seconds))

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        fs.pipe_file(f"{path}.released", b"")
