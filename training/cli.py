"""The `thumbs train` and `thumbs inspect` commands; also `python -m training.cli` (what `torchrun -m` launches
per process, for `train`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def train_command(
    snapshot: str = typer.Option(..., "--snapshot", help="Snapshot folder or URL written by `thumbs curate`."),
    base_model: str = typer.Option(..., "--base-model", help="Local model folder, or a hub id already cached."),
    out: Path = typer.Option(..., "--out", help="Folder for the adapter, tokenizer, metrics and metadata."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML of TrainConfig fields (training/kto.yaml)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in OUT from its last checkpoint."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="nf4 (QLoRA, default) | none."),
    z0: Optional[str] = typer.Option(None, "--z0", help="kl (estimate, default) | zero (the after-SFT variant)."),
    kl_pairs: Optional[str] = typer.Option(None, "--kl-pairs", help="z0's pairs: batch (the micro-batch's, default) | "
                                           "sample (drawn across the split)."),
    objective: Optional[str] = typer.Option(None, "--objective", help="kto (default) | sft (thumbs-up only)."),
    beta: Optional[float] = typer.Option(None, "--beta", help="β of the KTO value function."),
    desirable_weight: Optional[float] = typer.Option(None, "--desirable-weight", help="λD (default: stats.json)."),
    undesirable_weight: Optional[float] = typer.Option(None, "--undesirable-weight", help="λU (default: stats.json)."),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="AdamW peak learning rate."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the train split."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (overrides --epochs)."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help="Examples per forward, >= 2."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's summary as JSON on stdout."),
) -> None:
    """Train a LoRA adapter with KTO on a snapshot's thumbs-up/down examples."""
    from common.faults import as_disk_full
    from training.config import TrainConfig
    from training.data import DataError
    from training.trainer import Diverged, TrainingError, train

    try:
        config = TrainConfig.load(
            config_file, quantize=quantize, z0=z0, kl_pairs=kl_pairs, objective=objective, beta=beta, desirable_weight=desirable_weight,
            undesirable_weight=undesirable_weight, learning_rate=learning_rate, epochs=epochs, max_steps=max_steps,
            micro_batch_size=micro_batch_size, seed=seed, device=device)
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
