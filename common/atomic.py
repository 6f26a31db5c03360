"""Files that appear whole or not at all: written under a hidden temporary name beside the target, flushed to
disk, then renamed over it (a rename within one folder is atomic on POSIX filesystems).

    write_json_atomic(path, {"a": 1})
    write_text_atomic(path, "line\n")
    write_bytes_atomic(path, png)

Readers skip names starting with '.', so a writer killed half-way leaves nothing a reader sees.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from common.faults import disk_full


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600: give it the mode a plain open() would, so a vLLM server or GPU worker
        # running as another user can read what thumbs wrote.
        os.fchmod(fd, 0o666 & ~_umask())
        with disk_full(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
