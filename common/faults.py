"""Faults: named points where a test stops a thumbs process, and one clear error for a full disk.

    THUMBS_FAULT=ingest.mid_partition:kill thumbs ingest ...        # SIGKILL itself at that point
    THUMBS_FAULT=train.mid_checkpoint@2 THUMBS_FAULT_DIR=DIR ...    # the 2nd time there: announce, then wait

`fault_point(name)` marks a moment where a crash must lose nothing (a file half-written, a version
registered but not yet production). With THUMBS_FAULT naming it, the process either kills itself with
SIGKILL (`:kill`) or, by default (`:pause`), writes DIR/<name>.pid and blocks until the test, which waits
for that file, kills it. Tests synchronise on the point itself, never on a sleep. Unset, as in
production, a fault point costs one environment lookup.

`disk_full(path)` turns ENOSPC / EDQUOT raised while writing `path` into `DiskFull`, whose message names
the path and what to do; the CLIs print it as one line (exit 1) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator

FAULT_ENV = "THUMBS_FAULT"
FAULT_DIR_ENV = "THUMBS_FAULT_DIR"
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill or pause this process here if THUMBS_FAULT names this point (see the module docstring)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, action = spec.partition(":")
    point, _, nth = point.partition("@")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != int(nth or 1):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    folder = Path(os.environ.get(FAULT_DIR_ENV) or ".")
    marker = folder / f"{name}.pid"
    tmp = folder / f".{name}.pid.tmp"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, marker)  # the test sees the whole pid or nothing
    while True:  # blocked here until the test kills the process
        time.sleep(3600)


class DiskFull(OSError):
    """No space (or quota) left on the device holding `path`; nothing half-written was kept."""

    def __init__(self, path: str | os.PathLike, err: BaseException):
        self.path = str(path)
        code = getattr(err, "errno", None) or errno.ENOSPC
        super().__init__(code, f"no space left on the device holding {self.path} ({os.strerror(code)}). "
                                    "Nothing half-written was kept: free space there (or choose another folder) "
                                    "and run the same command again")

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    # Writers in other languages report the OS error in their message (safetensors: "...(os error 28)").
    return any(text in str(err) for text in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT)))


def as_disk_full(path: str | os.PathLike, err: BaseException) -> DiskFull | None:
    """A DiskFull naming `path` if `err`, or an error it was raised from, is a full disk; else None.
    (Beam re-raises a worker's OSError as a RuntimeError, so the whole chain is looked at.)"""
    for e in _chain(err):
        if isinstance(e, DiskFull):
            return e
        if is_disk_full(e):
            return DiskFull(path, e)
    return None


def caused_by_disk_full(err: BaseException | None) -> bool:
    return err is not None and as_disk_full("", err) is not None


@contextlib.contextmanager
def disk_full(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a full disk while writing `path` as DiskFull naming it; other errors pass untouched."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if is_disk_full(err):
            raise DiskFull(path, err) from err
        raise


class _DropDiskFull(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and caused_by_disk_full(record.exc_info[1]))


# Loggers through which Beam's runners report a worker's exception (with its traceback) before re-raising it.
_BEAM_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker",
                 "apache_beam.runners.worker.bundle_processor")


@contextlib.contextmanager
def one_error_for_disk_full() -> Iterator[None]:
    """Around a job that reports a full disk once, as DiskFull: no tracebacks logged by Beam's workers for it,
    and no 'Exception ignored' from writers that fail to flush when the failed job's objects are freed."""
    drop = _DropDiskFull()
    loggers = [logging.getLogger(name) for name in _BEAM_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    hook = sys.unraisablehook

    def unraisable(info):
        if not caused_by_disk_full(info.exc_value):
            hook(info)

    sys.unraisablehook = unraisable
    try:
        yield
    except BaseException as err:
        if caused_by_disk_full(err):  # free the failed writers now, while their complaints are dropped
            for e in _chain(err):
                traceback.clear_frames(e.__traceback__)
            gc.collect()
        raise
    finally:
        sys.unraisablehook = hook
        for logger in loggers:
            logger.removeFilter(drop)


def _chain(err: BaseException) -> list:
    out = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out
