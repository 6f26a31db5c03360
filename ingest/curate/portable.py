"""Beam's portable path on this machine: a local job service and an external worker pool.

    from ingest.curate.portable import local_portable_runner
    with local_portable_runner() as beam_args:
        curate("lake/", "snapshots/", beam_args=beam_args)

This is the protocol Flink, Spark and Dataflow speak (the pipeline serialised, DoFns pickled into a
separate worker process, data over gRPC), without their job-server jars: what the tests and the
benchmark use to show that curate does not depend on running in-process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[2]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{proc.args[2]} did not listen on port {port} in time: {log.read_text()[-2000:]}")


def _environment() -> dict:
    env = dict(os.environ)
    # The worker pool starts workers as plain `python` from PATH: without this interpreter's folder
    # first, another Python starts, cannot import Beam, and the job hangs to a gRPC deadline (~300 s).
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    # Workers unpickle the DoFns: they must import this copy of `ingest`, not an installed one.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


@contextmanager
def local_portable_runner(startup_timeout_s: float = 60.0) -> Iterator[list[str]]:
    """Start a job service and a worker pool on free ports; yield the Beam options that use them."""
    job_port, worker_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="thumbs-portable-") as tmp:
        env, procs = _environment(), []
        try:
            for module, args in (("apache_beam.runners.portability.local_job_service_main",
                                  [f"--port={job_port}", f"--staging_dir={tmp}/staging"]),
                                 ("apache_beam.runners.worker.worker_pool_main", [f"--service_port={worker_port}"])):
                log = Path(tmp) / f"{module.rsplit('.', 1)[1]}.log"
                with open(log, "wb") as out:
                    procs.append((subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True), log))
            deadline = time.monotonic() + startup_timeout_s
            for port, (proc, log) in zip((job_port, worker_port), procs):
                _wait_for(port, proc, log, deadline)
            yield ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
                   f"--environment_config=localhost:{worker_port}"]
        finally:
            for proc, _ in procs:
                _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the service and the workers it started (its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
