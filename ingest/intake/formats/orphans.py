"""Ratings quarantined as `orphan_feedback` in an earlier run, waiting for their generation.

An orphan stays in its source's quarantine file for good: that file is never rewritten. When a later
run of the same format brings the generation it names, the rating becomes an event in that run (in the
files of the source that brought the generation, with `source`/`source_line` still naming the rating's
own file and line), and that source's record (`LAKE/_sources/<sha256>.json`) lists it under `rescued`.
A rating listed there is never rescued again, so re-running changes nothing; a run killed before the
record is written rescued nothing, and the next run tries again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from ingest.lake import quarantine_table
from ingest.lake import records as lake_records
from ingest.schema import Reason


@dataclass
class Orphan:
    source: str
    sha256: str
    line: int
    raw: bytes


def pending(lake: Path, fmt: str) -> tuple[list[Orphan], set[tuple[str, str]]]:
    """(orphans of earlier runs of `fmt`, the (source sha256, event id) pairs already rescued)."""
    records = list(lake_records(lake).values())  # each checked: a torn record is one error naming it
    shas = {r.get("sha256") for r in records if r.get("format") == fmt}
    rescued = {(x["source_sha256"], x["event_id"]) for r in records for x in r.get("rescued", [])}
    if not shas:
        return [], rescued
    table = quarantine_table(lake)
    table = table.filter(pc.equal(table.column("reason"), Reason.ORPHAN_FEEDBACK.value))
    orphans = [Orphan(r["source"], r["source_sha256"], r["line"], r["raw"])
               for r in table.to_pylist() if r["source_sha256"] in shas]
    return orphans, rescued
