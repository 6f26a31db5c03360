"""The `thumbs ingest` command: flags to IngestConfig, the summary to a person (or JSON to a program)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from common.faults import DiskFull
from ingest.intake.job import IngestConfig, ingest
from ingest.privacy import MissingKeyError
from ingest.intake.records import FORMATS, parse_timestamp, BadRow


def ingest_command(
    sources: List[Path] = typer.Argument(..., help="JSONL files (optionally .gz) of feedback."),
    lake: str = typer.Option(..., "--lake", help="Lake folder (created if missing) or object-store URL (s3://...)."),
    format: str = typer.Option("events", "--format", help=f"Source format: {', '.join(FORMATS)}."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
    scrub_pii: bool = typer.Option(False, "--scrub-pii", help="Mask e-mail addresses and phone numbers in texts."),
    insecure_dev_key: bool = typer.Option(
        False, "--insecure-dev-key", help="Pseudonymise user ids with the public dev key (demos, tests)."),
    max_text_chars: int = typer.Option(1_000_000, "--max-text-chars", help="Longer texts go to quarantine."),
    timestamp: Optional[str] = typer.Option(
        None, "--timestamp", help="ISO-8601 time for pairs/hh events without one (default: now)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress lines on stderr."),
    score_name: str = typer.Option("thumbs", "--score-name", help="Langfuse score name, LangSmith feedback key "
                                   "or OTel gen_ai.evaluation.name that holds the thumbs."),
    up_at: float = typer.Option(1.0, "--up-at", help="A numeric score at or above this is a thumbs-up."),
    down_at: float = typer.Option(0.0, "--down-at", help="A numeric score at or below this is a thumbs-down."),
    up_values: Optional[str] = typer.Option(None, "--up-values", help="Comma-separated categorical values "
                                            "meaning up (default: up,thumbs_up,positive,good,true,...)."),
    down_values: Optional[str] = typer.Option(None, "--down-values", help="Comma-separated values meaning down."),
    openai_metadata_key: str = typer.Option("thumbs", "--openai-metadata-key",
                                            help="--format openai: the metadata key holding the thumbs."),
    force: bool = typer.Option(False, "--force", help="Ingest sources again even if already ingested, replacing "
                               "their lake files: the repair a damaged or missing lake file asks for."),
    allow_new_key: bool = typer.Option(False, "--allow-new-key", help="Add sources under a pseudonym key other "
                                       "than the lake's sources' (a key rotated on purpose)."),
) -> None:
    """Validate feedback logs into the Parquet lake; bad rows go to LAKE/quarantine with a reason."""
    from ingest.intake.formats.options import DOWN_VALUES, UP_VALUES, FormatOptions

    def values(text, default):
        return tuple(v.strip() for v in text.split(",") if v.strip()) if text is not None else default

    try:
        options = FormatOptions(score_name=score_name, up_at=up_at, down_at=down_at,
                                up_values=values(up_values, UP_VALUES), down_values=values(down_values, DOWN_VALUES),
                                openai_metadata_key=openai_metadata_key)
        config = IngestConfig(format=format, max_text_chars=max_text_chars, scrub_pii=scrub_pii,
                              insecure_dev_key=insecure_dev_key, formats=options, force=force,
                              allow_new_key=allow_new_key,
                              default_timestamp=parse_timestamp(timestamp) if timestamp else None)
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


def curate_command(
    ctx: typer.Context,
    lake: Optional[str] = typer.Option(None, "--lake", help="Lake folder or URL written by `thumbs ingest`."),
    out: Optional[str] = typer.Option(
        None, "--out", help="Folder or URL of snapshots; the snapshot goes to OUT/<snapshot_id>/."),
    since: Optional[str] = typer.Option(None, "--since", help="First event date to include (YYYY-MM-DD)."),
    until: Optional[str] = typer.Option(None, "--until", help="Last event date to include (YYYY-MM-DD)."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML of CurateConfig fields."),
    policy: Optional[str] = typer.Option(None, "--policy", help="majority | drop-conflicts | latest."),
    eval_fraction: Optional[float] = typer.Option(None, "--eval-fraction", help="Share of prompts held out."),
    min_per_class: Optional[int] = typer.Option(None, "--min-per-class", help="Fewest train examples per class."),
    json_out: bool = typer.Option(False, "--json", help="Print stats.json (with the snapshot's path) on stdout."),
    verify_only: Optional[str] = typer.Option(
        None, "--verify-only", metavar="SNAPSHOT",
        help="Only re-check a published snapshot against its manifest and stats; exit 1 if it differs."),
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

    from common.configfile import load_config
    from ingest.curate.pipeline import CurateError, curate
    from ingest.curate.rules import CurateConfig
    from ingest.curate.balance import InsufficientData

    try:
        config = load_config(CurateConfig, config_file, "curate config", policy=policy, eval_fraction=eval_fraction,
                             min_per_class=min_per_class)
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

