"""The `thumbs ingest` and `thumbs curate` commands: a flag per config field (common/cliflags.py), the summary to a
person (or JSON to a program)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from common.cliflags import CONFIG_HELP, config_flags
from common.configfile import load_config
from common.faults import DiskFull
from ingest.curate.rules import CurateConfig
from ingest.intake.job import IngestConfig, ingest
from ingest.intake.records import BadRow
from ingest.privacy import MissingKeyError



@config_flags(IngestConfig)
def ingest_command(
    sources: List[Path] = typer.Argument(..., help="JSONL files (optionally .gz) of feedback."),
    lake: str = typer.Option(..., "--lake", help="Lake folder (created if missing) or object-store URL (s3://...)."),
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP.format(section="ingest")),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress lines on stderr."),
    overrides: dict = None,
) -> None:
    """Validate feedback logs into the Parquet lake; bad rows go to LAKE/quarantine with a reason."""
    try:
        config = load_config(IngestConfig, config_file, "ingest config", section="ingest", **overrides)
        summary = ingest(sources, lake, config, progress=not quiet and not json_out)
    except (ValueError, MissingKeyError, BadRow) as err:  # ValueError includes a damaged lake (LakeError)
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    except DiskFull as err:  # sources finished before it stay ingested; the one being written left nothing
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        typer.echo(summary.render())
    for failed in summary.failed:
        typer.echo(f"error: {failed.error}", err=True)
    if summary.failed:
        raise typer.Exit(1)


@config_flags(CurateConfig)
def curate_command(
    ctx: typer.Context,
    lake: Optional[str] = typer.Option(None, "--lake", help="Lake folder or URL written by `thumbs ingest`."),
    out: Optional[str] = typer.Option(
        None, "--out", help="Folder or URL of snapshots; the snapshot goes to OUT/<snapshot_id>/."),
    since: Optional[str] = typer.Option(None, "--since", help="First event date to include (YYYY-MM-DD)."),
    until: Optional[str] = typer.Option(None, "--until", help="Last event date to include (YYYY-MM-DD)."),
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP.format(section="curate")),
    json_out: bool = typer.Option(False, "--json", help="Print stats.json (with the snapshot's path) on stdout."),
    verify_only: Optional[str] = typer.Option(
        None, "--verify-only", metavar="SNAPSHOT",
        help="Only re-check a published snapshot against its manifest and stats; exit 1 if it differs."),
    overrides: dict = None,
) -> None:
    """Dedupe, resolve conflicting votes, split train/eval and set KTO's class weights, on Apache Beam.

    Beam pipeline options go after `--`, e.g. `-- --runner=DataflowRunner --project=...`.
    """
    if verify_only is not None:
        _verify_command(verify_only)
        return
    if lake is None or out is None:
        typer.echo("error: curate needs --lake and --out (or --verify-only SNAPSHOT)", err=True)
        raise typer.Exit(2)
    from datetime import date

    from ingest.curate.balance import InsufficientData
    from ingest.curate.pipeline import CurateError, curate

    try:
        config = load_config(CurateConfig, config_file, "curate config", section="curate", **overrides)
        window = [date.fromisoformat(d) if d else None for d in (since, until)]
        stats = curate(lake, out, window[0], window[1], config, beam_args=ctx.args)
    except (ValueError, CurateError, InsufficientData) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    except DiskFull as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    if json_out:
        typer.echo(json.dumps(stats, indent=2, sort_keys=True))
        return
    c = stats["counts"]
    verb = "unchanged, reusing" if stats["reused"] else "wrote"
    typer.echo(f"curate: {verb} snapshot {stats['snapshot_id']} at {stats['path']}")
    typer.echo(f"  {c['events_in']:,} events -> {c['examples']:,} examples -> {c['train']:,} train / {c['eval']:,} eval")
    for name in sorted(c):
        if name.startswith(("removed_", "dropped_")) and c[name]:
            typer.echo(f"  {name.replace('_', ' ')}: {c[name]:,}")
    typer.echo(f"  train balance: {stats['n_desirable']:,} desirable / {stats['n_undesirable']:,} undesirable; "
               f"weights λD={stats['desirable_weight']:.4g} λU={stats['undesirable_weight']:.4g} "
               f"(λD·nD/λU·nU = {stats['balance_ratio']:.3f}, in [1, 4/3]: {stats['balance_in_band']})")
    for warning in stats["warnings"]:
        typer.echo(f"  warning: {warning}")


def _verify_command(snapshot: str) -> None:
    from ingest.curate.manifest import verify_snapshot
    from ingest.curate.store import verify_remote
    from ingest.remote import is_remote

    problems = verify_remote(snapshot) if is_remote(snapshot) else verify_snapshot(snapshot)
    for problem in problems:
        typer.echo(f"mismatch: {problem}", err=True)
    if problems:
        if is_remote(snapshot):
            advice = "curate it again (curate publishes a snapshot whole, under the same id)"
        else:
            from ingest.curate.snapshot import repair_advice

            advice = repair_advice(Path(snapshot), None)  # the window and config from manifest.json
        typer.echo(f"error: snapshot {snapshot} does not match its manifest and stats ({len(problems)} "
                   f"difference(s)); {advice}", err=True)
        raise typer.Exit(1)
    typer.echo(f"curate: snapshot {snapshot} verified: every file matches manifest.json and stats.json")

