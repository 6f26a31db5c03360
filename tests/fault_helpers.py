"""Helpers for the fault tests: run `thumbs` in a subprocess, kill it at a named fault point, compare trees."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env(**extra) -> dict:
    out = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    out.pop("THUMBS_FAULT", None)
    out.update(extra)
    return out


def thumbs(*args, extra_env: dict | None = None, timeout: float = 600, preamble: str = "") -> subprocess.CompletedProcess:
    """`thumbs ARGS` to the end; `preamble` is Python run first in the process (to install a hook)."""
    cmd = [sys.executable, "-c", f"{preamble}\nfrom flows.cli import app\napp()", *map(str, args)]
    return subprocess.run(cmd, env=env(**(extra_env or {})), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def kill_at(point: str, *args, workdir: Path, extra_env: dict | None = None, preamble: str = "",
            timeout: float = 600) -> None:
    """Run `thumbs ARGS` until it reaches fault point `point` (NAME or NAME@N), then SIGKILL it there.

    The process announces the point by writing a marker file and blocks; this waits for that file, so the
    kill lands exactly at the point, and fails if the process ends without reaching it."""
    markers = workdir / f"fault-{point.replace('@', '-')}"
    markers.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", f"{preamble}\nfrom flows.cli import app\napp()", *map(str, args)]
    log = (markers / "log").open("wb")
    proc = subprocess.Popen(cmd, env=env(**(extra_env or {}), THUMBS_FAULT=point, THUMBS_FAULT_DIR=str(markers)),
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    marker = markers / f"{point.split('@')[0]}.pid"
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"thumbs {args[0]} ended (exit {proc.returncode}) before reaching fault point "
                                     f"{point}:\n{(markers / 'log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"fault point {point} not reached in {timeout}s")
            time.sleep(0.02)
        assert int(marker.read_text()) == proc.pid
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def tree(root: Path, skip: tuple = ()) -> dict:
    """{relative path: sha256} of every file under root; `skip`: names whose content is not compared."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            out[rel] = None if p.name in skip else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def visible(files: dict) -> dict:
    """The entries no reader skips: no path component starting with '.'."""
    return {k: v for k, v in files.items() if not any(part.startswith(".") for part in Path(k).parts)}


def feedback(path: Path) -> Path:
    """Events on two days, a duplicate and bad lines: two partitions and a quarantine file."""
    lines = []
    for i in range(40):
        day = "2026-11-19" if i % 2 else "2026-11-20"
        lines.append(json.dumps({"event_id": f"e{i}", "timestamp": f"{day}T03:00:00Z", "user_id": f"u{i % 7}",
                                 "prompt": f"question {i % 10}", "completion": f"answer {i}",
                                 "label": "up" if i % 3 else "down"}))
    lines += ["not json", json.dumps({"event_id": "e1", "timestamp": "2026-11-20T03:00:00Z", "prompt": "p",
                                      "completion": "c", "label": "up"})]
    path.write_text("\n".join(lines) + "\n")
    return path


def ingest_args(source: Path, lake: Path) -> list:
    return ["ingest", source, "--lake", lake, "--insecure-dev-key", "--quiet"]


@contextlib.contextmanager
def moto_s3(bucket: str, **extra_env: str):
    """moto's standalone S3 server on a free loopback port, with `bucket` made; yields the environment that
    points clients (this process's, set here and restored after, and subprocesses') at it."""
    import fsspec
    import pytest

    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", **extra_env}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would still point at another test's server
    try:
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
        yield env
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
