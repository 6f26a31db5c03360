"""The Prefect server on PostgreSQL (Debian's packages, a throw-away data folder), as a team runs it:
concurrent ad hoc runs for two models plus the nightly, one retrain per model at a time, every run in a
final state and no slot left taken; then the server is killed mid-run and restarted, and the run's
outcome is still recorded (its retrain slot is not released: Prefect keeps leases in the server's
memory; `thumbs unlock` frees it). Skipped where the PostgreSQL binaries are missing (`make test` installs them
on Debian when it can).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from flows.deployments import free_port, start_server, stop, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.services]


def for_model(config: dict, name: str) -> dict:
    """The deployment's thumbs.yaml sections with another run.model_name (what a custom run's form sends)."""
    return {**config, "run": {**config["run"], "model_name": name}}


def pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:] or [None]
    return found if isinstance(found, str) else found[0]


@pytest.fixture
def postgres():
    """A PostgreSQL server on a free loopback port with database `prefect` and pg_trgm; its URL for Prefect."""
    initdb, pg_ctl, psql = pg_bin("initdb"), pg_bin("pg_ctl"), pg_bin("psql")
    if not (initdb and pg_ctl and psql):
        pytest.skip("PostgreSQL binaries not found (Debian: apt-get install postgresql)")
    run_as = []
    if os.geteuid() == 0:  # initdb refuses root
        if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0 or not shutil.which("runuser"):
            pytest.skip("running as root without a 'postgres' user to run PostgreSQL as")
        run_as = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="thumbs-pg-"))  # pytest's folders are private to root: not under them
    if run_as:
        shutil.chown(folder, "postgres")
    port = free_port()
    subprocess.run([*run_as, initdb, "-D", str(folder / "data"), "--auth=trust", "-U", "postgres"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([*run_as, pg_ctl, "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "-o",
                    f"-p {port} -h 127.0.0.1 -k {folder}", "start"], check=True, capture_output=True, timeout=120)
    try:
        for sql, db in (("CREATE DATABASE prefect", "postgres"), ("CREATE EXTENSION pg_trgm", "prefect")):
            subprocess.run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db, "-c", sql],
                           check=True, capture_output=True, timeout=60)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(folder / "data"), "-m", "immediate", "stop"], capture_output=True,
                       timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def final_runs(client, ids: list, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        runs = [client.read_flow_run(i) for i in ids]
        if all(r.state and r.state.is_final() for r in runs):
            return runs
        assert time.monotonic() < deadline, [(r.name, r.state and r.state.name) for r in runs]
        time.sleep(2)


def held_interval(client, run) -> tuple:
    """From the first task's start to the last task's end: the stages, all run inside the retrain lock."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    return min(t.start_time for t in tasks if t.start_time), max(t.end_time for t in tasks if t.end_time)


def stage_started(client, run_id, name: str) -> bool:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return any(t.name.startswith(name) and t.start_time for t in tasks)


def test_concurrent_runs_on_a_postgres_backed_server_and_a_server_restart(postgres, style_snapshot, tiny_model,
                                                                           tmp_path):
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.lock import lock_name

    home, workdir = tmp_path / "home", tmp_path / "work"
    defaults = {"run": {"sources": [str(style_snapshot.parents[1] / "feedback.jsonl")], "workdir": str(workdir),
                        "base_model": str(tiny_model), "lock_timeout_s": 2},
                "ingest": {"insecure_dev_key": True}, "curate": {"eval_fraction": 0.2},
                "train": {"max_steps": 2, "micro_batch_size": 8, "quantize": "none"},
                "evaluate": {"generation_prompts": 0, "max_new_tokens": 4}}
    (tmp_path / "thumbs.yaml").write_text(json.dumps(defaults))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": postgres,
           "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "1", "OMP_NUM_THREADS": "1"}
    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = postgres  # start_server inherits it
    server = start_server(port, tmp_path / "server.log")
    serving = None
    try:
        wait_healthy(api, server)
        serving = subprocess.Popen([sys.executable, "-m", "flows.cli", "deploy", "--config", str(tmp_path / "thumbs.yaml")],
                                   env=env, stdout=(tmp_path / "deploy.log").open("wb"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.read_deployment_by_name("thumbs-nightly-retrain/adhoc")
                    client.read_deployment_by_name("thumbs-nightly-retrain/nightly")
                    break
                except Exception:  # noqa: BLE001  (not registered yet)
                    assert time.monotonic() < deadline and serving.poll() is None, (tmp_path / "deploy.log").read_text()
                    time.sleep(1)
            ids = [run_deployment("thumbs-nightly-retrain/adhoc", parameters=for_model(defaults, m), timeout=0).id
                   for m in ("a", "b", "a", "b")]
            ids.append(run_deployment("thumbs-nightly-retrain/nightly", timeout=0).id)
            runs = final_runs(client, ids, timeout=900)
            by_model = {}
            for run, model in zip(runs, ["a", "b", "a", "b", "default"]):
                if run.state.is_completed():
                    by_model.setdefault(model, []).append(held_interval(client, run))
                else:
                    message = run.state.message or ""
                    assert "stage 'lock' failed" in message and f"thumbs unlock {model}" in message, message
            assert set(by_model) == {"a", "b", "default"}  # at least one retrain per model went through
            for intervals in by_model.values():  # never two retrains of one model at once
                intervals.sort()
                assert all(end <= start for (_, end), (start, _) in zip(intervals, intervals[1:]))
            for model in ("a", "b", "default"):
                assert client.read_global_concurrency_limit_by_name(lock_name(model)).active_slots == 0

            # The server dies mid-run and comes back: the run's outcome is still recorded.
            restart = run_deployment("thumbs-nightly-retrain/adhoc",
                                     parameters=for_model(defaults, "c"), timeout=0).id
            deadline = time.monotonic() + 300
            while not stage_started(client, restart, "train"):  # past the lock, mid-run
                assert time.monotonic() < deadline and not client.read_flow_run(restart).state.is_final()
                time.sleep(0.5)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        server = start_server(port, tmp_path / "server.log")
        wait_healthy(api, server)
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            (after,) = final_runs(client, [restart], timeout=600)
            assert after.state.is_completed(), after.state.message
            # Prefect keeps concurrency leases in the server's memory (PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE,
            # default ...lease_storage.memory): after the restart the run's release finds no lease, and the
            # slot stays taken. `thumbs unlock` is the documented way out.
            leaked = client.read_global_concurrency_limit_by_name(lock_name("c")).active_slots
        assert (workdir / "registry" / "c" / "aliases.json").exists()
        unlock = subprocess.run([sys.executable, "-m", "flows.cli", "unlock", "c"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert unlock.returncode == 0 and f"freed {leaked} slot(s)" in unlock.stdout + unlock.stderr, unlock
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(lock_name("c")).active_slots == 0
    finally:
        os.environ.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        if serving is not None:
            stop(serving, timeout=30)
        stop(server, timeout=30)
