"""Files that appear whole or not at all: written under a hidden temporary name beside the target, flushed to
disk, then renamed over it (a rename within one folder is atomic on POSIX filesystems).

    write_json_atomic(path, {"a": 1})
    write_text_atomic(path, "line\n")

Readers skip names starting with '.', so a writer killed half-way leaves nothing a reader sees.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
