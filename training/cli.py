"""The `thumbs train` and `thumbs inspect` commands; also `python -m training.cli` (what `torchrun -m` launches
per process, for `train`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from common.cliflags import CONFIG_HELP, config_flags
from common.configfile import load_config
from training.config import TrainConfig


@config_flags(TrainConfig)
def train_command(
    snapshot: str = typer.Option(..., "--snapshot", help="Snapshot folder or URL written by `thumbs curate`."),
    base_model: str = typer.Option(..., "--base-model", help="Local model folder, or a hub id already cached."),
    out: Path = typer.Option(..., "--out", help="Folder for the adapter, tokenizer, metrics and metadata."),
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP.format(section="train")),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in OUT from its last checkpoint."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's summary as JSON on stdout."),
    overrides: dict = None,
) -> None:
    """Train a LoRA adapter with KTO on a snapshot's thumbs-up/down examples."""
    from common.faults import as_disk_full
    from training.data import DataError
    from training.trainer import Diverged, TrainingError, train

    try:
        config = load_config(TrainConfig, config_file, "training config", section="train", **overrides)
        summary = train(snapshot, base_model, out, config, resume=resume)
    except (ValueError, TypeError, FileNotFoundError, DataError, TrainingError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1 if isinstance(err, Diverged) else 2)  # 2: change the command or the data; 1: the run failed
    except Exception as err:  # noqa: BLE001  (only a full disk is handled here; the rest re-raised)
        full = as_disk_full(out, err)  # checkpoints name themselves; the final adapter's files are under OUT
        if full is None:
            raise
        typer.echo(f"error: {full}", err=True)
        raise typer.Exit(1)
    if json_out:
        typer.echo(json.dumps(summary, indent=2))


def inspect_command(
    snapshot: str = typer.Option(..., "--snapshot", help="Snapshot folder or URL written by `thumbs curate`."),
    base_model: str = typer.Option(..., "--base-model", help="Local model folder (only its tokenizer is read)."),
    n: int = typer.Option(5, "--n", min=0, help="Examples to show."),
    json_out: bool = typer.Option(False, "--json", help="Print ids, texts, counts and dropped rows as JSON."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="Training YAML whose truncation limits to use."),
    split: str = typer.Option("train", "--split", help="train | eval."),
) -> None:
    """Show the exact token sequences training sees: completion span marked, ids, truncated/unsplittable counts."""
    from training.data import DataError
    from training.inspection import inspect_command as run

    try:
        typer.echo(run(snapshot, base_model, n=n, json_out=json_out, config_file=config_file, split=split))
    except (ValueError, FileNotFoundError, DataError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)


if __name__ == "__main__":
    typer.run(train_command)
