"""common/atomic.py: a file appears whole or not at all, with the mode a plain open() gives."""

from __future__ import annotations

import os

import pytest

from common.atomic import write_json_atomic, write_text_atomic


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o027, 0o640), (0o077, 0o600)])
def test_an_atomic_write_gets_the_mode_a_plain_open_gives(tmp_path, umask, mode):
    """mkstemp's 0600 would keep a vLLM server or GPU worker running as another user from reading artefacts."""
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "x\n")
        write_json_atomic(tmp_path / "b.json", {"a": 1})
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x\n")
    finally:
        os.umask(old)
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "a.txt").read_text() == "x\n" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
