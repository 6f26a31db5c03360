"""`thumbs ui` for real: a local Prefect server on a free loopback port, the deployments served, an ad hoc
run triggered through the API with custom parameters (what the UI's "Custom run" sends), prefect.yaml
deployed on the same server, then everything stopped by PID, with no process left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.deployments import free_port

pytestmark = pytest.mark.slow


def processes_with_home(home: Path) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and p.environ().get("PREFECT_HOME") == str(home):
                found.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001  (not up yet)
            pass
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


def test_ui_serves_deployments_and_runs_an_ad_hoc_retrain_with_custom_parameters(style_snapshot, tiny_model, tmp_path):
    import httpx
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, workdir = tmp_path / "prefect-home", tmp_path / "work"
    defaults = {"sources": [str(style_snapshot.parents[1] / "feedback.jsonl")], "workdir": str(workdir),
                "base_model": str(tiny_model), "insecure_dev_key": True, "eval_fraction": 0.2, "max_steps": 4,
                "micro_batch_size": 8, "generation_prompts": 2, "max_new_tokens": 8}
    (tmp_path / "params.yaml").write_text(json.dumps(defaults))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    env.pop("PREFECT_API_URL", None)
    thumbs = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--params", str(tmp_path / "params.yaml"),
                               "--port", str(port), "--cron", "30 3 * * *", "--timezone", "Europe/Berlin"],
                              env=env, stdout=(tmp_path / "ui.log").open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, "the server")
        with temporary_settings({PREFECT_API_URL: api}):
            with get_client(sync_client=True) as client:
                adhoc = wait_for(lambda: client.read_deployment_by_name("thumbs-nightly-retrain/adhoc"), 60, "deployments")
                nightly = client.read_deployment_by_name("thumbs-nightly-retrain/nightly")
            cron = nightly.schedules[0].schedule
            assert (cron.cron, cron.timezone) == ("30 3 * * *", "Europe/Berlin") and not adhoc.schedules
            assert adhoc.parameters["params"]["max_steps"] == 4  # the form starts from --params

            custom = dict(adhoc.parameters["params"], model_name="custom", max_steps=6, beta=0.2)
            run = run_deployment("thumbs-nightly-retrain/adhoc", parameters={"params": custom}, timeout=600)
        assert run.state.is_completed(), (run.state, (tmp_path / "ui.log").read_text()[-3000:])
        runs = list((workdir / "runs" / "custom").iterdir())
        meta = json.loads((runs[0] / "thumbs_meta.json").read_text())
        assert meta["config"]["max_steps"] == 6 and meta["config"]["beta"] == 0.2
        assert (workdir / "registry" / "custom" / "aliases.json").exists()
        check_prefect_yaml_deploys(api, env, tmp_path)
    finally:
        os.killpg(thumbs.pid, signal.SIGTERM)
        thumbs.wait(60)
    assert "Prefect UI: http://127.0.0.1:" in (tmp_path / "ui.log").read_text()
    wait_for(lambda: not processes_with_home(home), 30, "every started process to exit")


def check_prefect_yaml_deploys(api: str, env: dict, tmp_path: Path) -> None:
    """The team path: prefect.yaml registers the same deployments on process work pools, with env templating."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = Path(__file__).resolve().parents[1]
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        for pool in ("thumbs-cpu", "thumbs-gpu"):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deploy_env = {**env, "PREFECT_API_URL": api, "THUMBS_HOME": str(tmp_path / "home"),
                  "THUMBS_BASE_MODEL": "/models/base", "THUMBS_SOURCES": "/logs/*.jsonl"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    done = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=root, env=deploy_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("thumbs-nightly-retrain/nightly")
        train = client.read_deployment_by_name("thumbs-train/train")
    assert (nightly.work_pool_name, train.work_pool_name) == ("thumbs-cpu", "thumbs-gpu")
    assert nightly.schedules[0].schedule.cron == "0 2 * * *" and nightly.global_concurrency_limit.limit == 1
    assert nightly.parameters["params"] == {"sources": ["/logs/*.jsonl"], "base_model": "/models/base",
                                            "workdir": f"{tmp_path / 'home'}/.thumbs"}


@pytest.mark.parametrize("entry", ["flows.cli", "flows.demo", "flows.run", "flows.nightly"])
def test_every_entry_gives_prefects_embedded_server_time_to_start_on_a_busy_machine(entry):
    """Prefect's default 20 s start timeout failed `make demo` on a loaded 2-core box: whichever module a command
    starts from, the embedded server gets at least a minute, unless the user chose otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_EPHEMERAL")}
    probe = (f"import {entry}; from prefect.settings import get_current_settings as s; "
             "e = s().server.ephemeral; print(e.enabled, e.startup_timeout_seconds)")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    enabled, timeout = done.stdout.split()
    assert enabled == "True" and int(timeout) >= 60
    chosen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "33"})
    assert chosen.stdout.split()[1] == "33"  # the user's own setting wins
