"""The `thumbs evaluate` command: see evaluation/evaluate.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def evaluate_command(
    adapter: Path = typer.Option(..., "--adapter", help="Adapter folder written by `thumbs train`."),
    snapshot: Path = typer.Option(..., "--snapshot", help="Snapshot folder whose eval split is scored."),
    registry: Optional[str] = typer.Option(None, "--registry", help="Registry folder or fsspec URL: "
                                           "production's adapter is scored too, for the promotion decision."),
    name: str = typer.Option("default", "--name", help="Model name inside the registry."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Base model folder or cached hub id "
                                             "(default: the one the adapter was trained on)."),
    suite: List[Path] = typer.Option([], "--suite", help="Task-suite JSONL (repeatable); see evaluation/suites.py."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where eval.json and report.md go (default: --adapter)."),
    generation_prompts: int = typer.Option(32, "--generation-prompts", help="Eval prompts answered for length "
                                           "drift; 0 skips generation."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Longest generated answer."),
    batch_size: int = typer.Option(16, "--batch-size", help="Eval examples per forward pass."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print eval.json on stdout."),
) -> None:
    """Score an adapter (and production's) on held-out feedback: preference AUC, drift, task suites."""
    from deploy.promote import evaluate_candidate
    from deploy.registry import Registry, RegistryError
    from evaluation.evaluate import EvalConfig, EvaluationError
    from evaluation.suites import SuiteError

    try:
        config = EvalConfig(batch_size=batch_size, seed=seed, generation_prompts=generation_prompts,
                            max_new_tokens=max_new_tokens, suites=[str(s) for s in suite], device=device)
        result = evaluate_candidate(adapter, snapshot, Registry(registry, name) if registry else None,
                                    base_model=base_model, config=config, out=out, log=_say)
    except (EvaluationError, RegistryError, SuiteError, ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    if json_out:
        typer.echo(json.dumps(result, indent=2))


def _say(line: str) -> None:
    typer.echo(line, err=True)
