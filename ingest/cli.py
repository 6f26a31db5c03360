"""The `thumbs ingest` command: flags to IngestConfig, the summary to a person (or JSON to a program)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import typer

from ingest.job import IngestConfig, ingest
from ingest.privacy import MissingKeyError
from ingest.records import FORMATS, parse_timestamp, BadRow


def ingest_command(
    sources: List[Path] = typer.Argument(..., help="JSONL files (optionally .gz) of feedback."),
    lake: Path = typer.Option(..., "--lake", help="Lake directory; created if missing."),
    format: str = typer.Option("events", "--format", help=f"Source format: {', '.join(FORMATS)}."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
    scrub_pii: bool = typer.Option(False, "--scrub-pii", help="Mask e-mail addresses and phone numbers in texts."),
    insecure_dev_key: bool = typer.Option(
        False, "--insecure-dev-key", help="Pseudonymise user ids with the public dev key (demos, tests)."),
    max_text_chars: int = typer.Option(1_000_000, "--max-text-chars", help="Longer texts go to quarantine."),
    timestamp: Optional[str] = typer.Option(
        None, "--timestamp", help="ISO-8601 time for pairs/hh events without one (default: now)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress lines on stderr."),
) -> None:
    """Validate feedback logs into the Parquet lake; bad rows go to LAKE/quarantine with a reason."""
    try:
        config = IngestConfig(format=format, max_text_chars=max_text_chars, scrub_pii=scrub_pii,
                              insecure_dev_key=insecure_dev_key,
                              default_timestamp=parse_timestamp(timestamp) if timestamp else None)
        summary = ingest(sources, lake, config, progress=not quiet and not json_out)
    except (ValueError, MissingKeyError, BadRow) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        typer.echo(summary.render())
    for failed in summary.failed:
        typer.echo(f"error: {failed.error}", err=True)
    if summary.failed:
        raise typer.Exit(1)
