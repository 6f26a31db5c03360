"""`thumbs run`: the nightly retrain once, in this process, on Prefect's embedded server (no setup needed).

    thumbs run --params params.yaml        # YAML or JSON holding RetrainParams fields (flows/params.py)

With `PREFECT_API_URL` set, the run is recorded on that server instead and shows in its UI.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer


def load_params(path: Optional[Path], **overrides):
    """RetrainParams from a YAML/JSON file, then overrides; a bad field names itself and the file."""
    from common.configfile import load_config
    from flows.params import RetrainParams

    return load_config(RetrainParams, path, "parameters", **overrides)


def run_command(
    params_file: Optional[Path] = typer.Option(None, "--params", help="YAML/JSON of RetrainParams (flows/params.py)."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Overrides the file's base_model."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's summary as JSON on stdout."),
) -> None:
    """Run the nightly retrain once, in-process: ingest, curate, train, evaluate, promote, export."""
    from flows.nightly import nightly_retrain

    # SIGTERM ends the run like Ctrl-C: the flow is marked crashed, the lock released, the embedded server stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        params = load_params(params_file, base_model=base_model)
    except (ValueError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    state = nightly_retrain(params, return_state=True)
    if not state.is_completed():
        typer.echo(f"error: the retrain failed: {state.message}", err=True)
        raise typer.Exit(1)
    summary = state.result()
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        verdict = "promoted" if summary["promoted"] else "rejected"
        typer.echo(f"run {summary['run']}: {summary['events']:,} new events, snapshot {summary['snapshot_id']}, "
                   f"AUC {summary['auc']:.3f}, {summary['version']} {verdict}")


def unlock_command(model_name: str = typer.Argument("default", help="Model name whose retrain lock to free.")) -> None:
    """Free a retrain lock left taken by a killed run (only when no retrain of that model is running)."""
    from flows.lock import lock_name, release_lock

    typer.echo(f"{lock_name(model_name)}: freed {release_lock(model_name)} slot(s)")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
