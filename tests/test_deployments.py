"""One thumbs.yaml, every way a nightly runs: `thumbs run --config` once in-process, then `thumbs ui --config` for
real (a local Prefect server on a free loopback port, the deployments served, an ad hoc run triggered through the
API with custom parameters, what the UI's "Custom run" sends), prefect.yaml deployed on the same server, then
everything stopped by PID, with no process left behind.
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


def langfuse_export(folder: Path) -> list[Path]:
    """A Langfuse export of real HH-RLHF dialogues rated with a 1-5 star score named `user-feedback` (the chosen
    answer 5 stars, the rejected 1), by eight users, plus `mallory`, who gives 5 stars to 20 rejected answers."""
    from test_ingest_formats import _lf_generation, hh, write_jsonl

    traces, observations, scores = [], [], []
    pairs = hh(60)
    rated = [(i, side, answer, stars, f"user-{i % 8}") for i, (_, chosen, rejected) in enumerate(pairs[:40])
             for side, answer, stars in (("c", chosen, 5), ("r", rejected, 1))]
    rated += [(40 + i, "r", rejected, 5, "mallory") for i, (_, _, rejected) in enumerate(pairs[40:])]
    for n, (i, side, answer, stars, user) in enumerate(rated):
        trace_id, obs_id, start = f"trace-{i}{side}", f"obs-{i}{side}", f"2026-11-19T{i % 24:02d}:00:00.000Z"
        traces.append({"id": trace_id, "name": "chat", "timestamp": start, "userId": user, "sessionId": f"s-{i}",
                       "release": "v3", "input": pairs[i][0], "output": None, "metadata": {}, "tags": []})
        observations.append(_lf_generation(obs_id, trace_id, pairs[i][0], answer, start))
        scores.append({"id": f"score-{n}", "traceId": trace_id, "observationId": obs_id, "name": "user-feedback",
                       "source": "API", "dataType": "NUMERIC", "value": stars,
                       "timestamp": f"2026-11-20T04:{n % 60:02d}:00.000Z"})
    paths = [folder / name for name in ("traces.jsonl", "observations.jsonl", "scores.jsonl")]
    for path, records in zip(paths, (traces, observations, scores)):
        write_jsonl(path, records)
    return paths


def test_one_thumbs_yaml_drives_thumbs_run_and_the_deployments_and_the_ui_form_overrides_it(tiny_model, tmp_path):
    """The must-show of one configuration: a Langfuse nightly with a vote cap, described once in thumbs.yaml, run
    by `thumbs run --config` and by the deployment `thumbs ui --config` serves; a custom run from the UI form
    changes two training values and the run records which values came from the file and which from the UI."""
    import httpx
    import yaml
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, workdir = tmp_path / "prefect-home", tmp_path / "work"
    (tmp_path / "logs").mkdir()
    langfuse_export(tmp_path / "logs")
    thumbs_yaml = tmp_path / "thumbs.yaml"
    thumbs_yaml.write_text(yaml.safe_dump({
        "run": {"sources": [str(tmp_path / "logs")], "workdir": str(workdir), "base_model": str(tiny_model)},
        "ingest": {"format": "langfuse", "insecure_dev_key": True,
                   "formats": {"score_name": "user-feedback", "up_at": 4, "down_at": 2}},
        "curate": {"eval_fraction": 0.2, "max_user_share": 0.1},
        "train": {"max_steps": 4, "micro_batch_size": 8, "lora_r": 8},
        "evaluate": {"generation_prompts": 2, "max_new_tokens": 8}}))
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    env.pop("PREFECT_API_URL", None)

    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(thumbs_yaml), "--json"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["events"] == 100 and summary["version"] == "v0001"  # 80 honest ratings + mallory's 20
    stats = json.loads((workdir / "snapshots" / summary["snapshot_id"] / "stats.json").read_text())
    assert stats["config"]["max_user_share"] == 0.1 and stats["counts"]["dropped_user_cap"] >= 10  # the cap bit
    meta = json.loads((Path(summary["run"]) / "thumbs_meta.json").read_text())
    assert meta["config"]["lora_r"] == 8 and meta["config"]["max_steps"] == 4
    assert "ingest.formats.score_name" in done.stderr and "user-feedback" in done.stderr  # the run logs its config

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    thumbs = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--config", str(thumbs_yaml),
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
            # The deployments carry what thumbs.yaml chose, section by section, and no default it did not write.
            assert adhoc.parameters == nightly.parameters == yaml.safe_load(thumbs_yaml.read_text())

            custom = json.loads(json.dumps(adhoc.parameters))  # what the UI's Custom run form sends back
            custom["run"]["model_name"] = "custom"
            custom["train"].update(max_steps=6, beta=0.2)
            run = run_deployment("thumbs-nightly-retrain/adhoc", parameters=custom, timeout=600)
            assert run.state.is_completed(), (run.state, (tmp_path / "ui.log").read_text()[-3000:])
            with get_client(sync_client=True) as client:
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["thumbs-config"])), limit=200)
            artifacts = [a for a in artifacts if a.flow_run_id == run.id]
        lines = {line.split()[0]: line.split()[-1] for line in artifacts[0].data.strip("`\n").splitlines() if line.strip()}
        assert lines["train.beta"] == lines["train.max_steps"] == lines["run.model_name"] == "UI"
        assert lines["ingest.format"] == lines["curate.max_user_share"] == lines["train.lora_r"] == "file"
        assert lines["train.learning_rate"] == "default"
        runs = list((workdir / "runs" / "custom").iterdir())
        meta = json.loads((runs[0] / "thumbs_meta.json").read_text())
        assert meta["config"]["max_steps"] == 6 and meta["config"]["beta"] == 0.2 and meta["config"]["lora_r"] == 8
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
    assert nightly.parameters == {"run": {"sources": ["/logs/*.jsonl"], "base_model": "/models/base",
                                          "workdir": f"{tmp_path / 'home'}/.thumbs"}}


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
