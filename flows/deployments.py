"""Deployments of the nightly retrain: a cron schedule, ad hoc runs from the UI, and training on its own pool.

    thumbs ui     --config thumbs.yaml [--set ...] [--port 4200] [--cron "0 2 * * *"] [--timezone UTC]
        starts a local Prefect server on 127.0.0.1 (the UI), registers the deployments and serves them
        from this process until Ctrl-C, which stops the server too.
    thumbs deploy --config thumbs.yaml [--set ...] [--cron ...] [--timezone ...]
        registers and serves the same deployments against PREFECT_API_URL: a server started elsewhere
        (`prefect server start`, on PostgreSQL for a team) or a Prefect Cloud workspace.
    prefect deploy --all        # prefect.yaml: the same deployments on process work pools, for workers

Deployments (flow/deployment): `thumbs-nightly-retrain/nightly` (cron, timezone-aware, one active run),
`thumbs-nightly-retrain/adhoc` (no schedule: "Custom run" in the UI, one form section per stage, pre-filled
from thumbs.yaml) and `thumbs-train/train` (training alone; set `run.train_deployment` to run it on a GPU
pool). A deployment's parameters are the values thumbs.yaml (and --set) chose, not the defaults: every other
field follows its declaration, and a run shows which values came from the file and which from the UI form.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from flows.run import CONFIG_HELP, SET_HELP, load

NIGHTLY, ADHOC, TRAIN = "nightly", "adhoc", "train"


def deployments(config, source: dict, cron: str, timezone: str) -> list:
    """The three deployments, the nightly's two with thumbs.yaml's chosen values as their parameters."""
    from prefect.schedules import Cron

    from flows.config import sparse
    from flows.nightly import nightly_retrain, train_flow

    defaults, model = sparse(config, source), config.run.model_name
    return [
        nightly_retrain.to_deployment(name=NIGHTLY, schedule=Cron(cron, timezone=timezone), parameters=defaults,
                                      concurrency_limit=1, tags=["thumbs", model],
                                      description=f"Retrain {model} from the day's feedback, {cron} {timezone}."),
        nightly_retrain.to_deployment(name=ADHOC, parameters=defaults, tags=["thumbs", model],
                                      description="Ad hoc retrain: use Custom run to change any setting, stage by stage."),
        train_flow.to_deployment(name=TRAIN, tags=["thumbs"],
                                 description="Training alone, for a GPU work pool (run.train_deployment)."),
    ]


def serve(config, source: dict, cron: str, timezone: str) -> None:
    """Register the deployments and run their flow runs from this process until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(config, source, cron, timezone), limit=4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1 in its own process group (so stopping it stops its children)."""
    prefect = str(Path(sys.executable).with_name("prefect"))
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(api: str, server: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {server.returncode}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect server did not answer at {api} within {timeout:.0f}s")


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    except ProcessLookupError:
        pass


# --- commands --------------------------------------------------------------------------------------------

def deploy_command(
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP + " The deployments' parameters."),
    sets: List[str] = typer.Option([], "--set", help=SET_HELP),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Short for --set run.base_model=..."),
    cron: str = typer.Option("0 2 * * *", "--cron", help="When the nightly run starts (cron syntax)."),
    timezone: str = typer.Option("UTC", "--timezone", help="The cron's timezone (IANA name, e.g. Europe/Berlin)."),
) -> None:
    """Register the nightly and ad hoc deployments on PREFECT_API_URL and serve them until Ctrl-C."""
    config, source = load(config_file, sets, base_model)
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        typer.echo("error: PREFECT_API_URL is not set: start a server (`thumbs ui` does both) or log in to "
                   "Prefect Cloud first", err=True)
        raise typer.Exit(2)
    typer.echo(f"serving deployments on {PREFECT_API_URL.value()}; Ctrl-C stops", err=True)
    serve(config, source, cron, timezone)


def ui_command(
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP + " The deployments' parameters."),
    sets: List[str] = typer.Option([], "--set", help=SET_HELP),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Short for --set run.base_model=..."),
    port: int = typer.Option(4200, "--port", help="Port of the local Prefect server (0: any free port)."),
    cron: str = typer.Option("0 2 * * *", "--cron", help="When the nightly run starts (cron syntax)."),
    timezone: str = typer.Option("UTC", "--timezone", help="The cron's timezone (IANA name)."),
) -> None:
    """Start a local Prefect server with its UI on 127.0.0.1, then serve the deployments; Ctrl-C stops both."""
    config, source = load(config_file, sets, base_model)
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(port, Path(PREFECT_HOME.value()) / "server.log")
    try:
        wait_healthy(f"{url}/api", server)
        typer.echo(f"Prefect UI: {url}  (deployments: thumbs-nightly-retrain/{NIGHTLY}, /{ADHOC}, thumbs-train/{TRAIN}); "
                   "Ctrl-C stops", err=True)
        os.environ["PREFECT_API_URL"] = f"{url}/api"  # flow runs started from here report to this server
        with temporary_settings({PREFECT_API_URL: f"{url}/api"}):
            serve(config, source, cron, timezone)  # returns on Ctrl-C or SIGTERM (Prefect's runner shuts down gracefully)
    except KeyboardInterrupt:
        pass
    finally:
        stop(server)
        typer.echo("stopped the Prefect server", err=True)

