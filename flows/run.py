"""`thumbs run` and `thumbs config show`: the nightly retrain once, in this process, on Prefect's embedded
server (no setup needed), from thumbs.yaml (flows/config.py).

    thumbs run --config thumbs.yaml [--set train.beta=0.2 ...] [--json]
    thumbs config show --config thumbs.yaml [--set ...] [--yaml | --json]

With `PREFECT_API_URL` set, the run is recorded on that server instead and shows in its UI.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import List, Optional

import typer

CONFIG_HELP = "thumbs.yaml: one section per stage (run, ingest, curate, train, evaluate, promotion, export)."
SET_HELP = "SECTION.FIELD=VALUE over the file (repeatable), e.g. --set train.beta=0.2 --set ingest.format=langfuse."

config_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The resolved thumbs.yaml.")


def load(config_file: Optional[Path], sets: List[str], base_model: Optional[str] = None):
    """(ThumbsConfig, each value's source), or exit 2 with the refusal (naming the field and its layer)."""
    from flows.config import load as load_config

    try:
        return load_config(config_file, sets, base_model=base_model)
    except (ValueError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)


def run_config(config, source: Optional[dict] = None, return_state: bool = True):
    """Run the nightly flow on `config` in this process (its sections as the flow's parameters)."""
    from flows.config import CONFIG_SOURCE
    from flows.nightly import nightly_retrain

    token = CONFIG_SOURCE.set(source)
    try:
        return nightly_retrain(**config.sections(), return_state=return_state)
    finally:
        CONFIG_SOURCE.reset(token)


def run_command(
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: List[str] = typer.Option([], "--set", help=SET_HELP),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Short for --set run.base_model=..."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's summary as JSON on stdout."),
) -> None:
    """Run the nightly retrain once, in-process: ingest, curate, train, evaluate, promote, export."""
    # SIGTERM ends the run like Ctrl-C: the flow is marked crashed, the lock released, the embedded server stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    config, source = load(config_file, sets, base_model)
    state = run_config(config, source)
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


@config_app.command("show")
def show_command(
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: List[str] = typer.Option([], "--set", help=SET_HELP),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Short for --set run.base_model=..."),
    as_yaml: bool = typer.Option(False, "--yaml", help="Print a complete thumbs.yaml, descriptions as comments."),
    json_out: bool = typer.Option(False, "--json", help="Print {field: {value, source}} as JSON."),
    only_set: bool = typer.Option(False, "--changed", help="Only the values not at their default."),
) -> None:
    """Print the resolved configuration, each value with where it came from (default, file or flag)."""
    from flows.config import commented_yaml, table, values

    unset = base_model is None and not any(s.startswith("run.base_model=") for s in sets) \
        and not _file_base_model(config_file)
    config, source = load(config_file, sets, "<unset>" if unset else base_model)  # the rest, before it is chosen
    if unset:
        source["run.base_model"] = "required"
    if as_yaml:
        typer.echo(commented_yaml(config, source), nl=False)
    elif json_out:
        typer.echo(json.dumps({dotted: {"value": value, "source": source[dotted]}
                               for dotted, value in values(config).items()}, indent=2))
    else:
        typer.echo(table(config, source, only_set=only_set))


def _file_base_model(config_file: Optional[Path]) -> Optional[str]:
    from common.configfile import read_mapping

    if config_file is None:
        return None
    try:
        return ((read_mapping(config_file).get("run") or {}).get("base_model")) or None
    except (ValueError, OSError, AttributeError):
        return None  # load() reports it


def unlock_command(model_name: str = typer.Argument("default", help="Model name whose retrain lock to free.")) -> None:
    """Free a retrain lock left taken by a killed run (only when no retrain of that model is running)."""
    from flows.lock import lock_name, release_lock

    typer.echo(f"{lock_name(model_name)}: freed {release_lock(model_name)} slot(s)")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
