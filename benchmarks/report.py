"""Shared by the benchmark scripts: a timing table in Markdown, and appending it to BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
from datetime import date
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def timing_table(n_events: int, rows: list[tuple[str, float]]) -> str:
    """Rows of (what, seconds); the first row is the floor the others are compared with."""
    floor_s = rows[0][1]
    lines = ["| what | seconds | events/s | x floor |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {s:.2f} | {n_events / s:,.0f} | {s / floor_s:.2f}x |" for name, s in rows]
    return "\n".join(lines)


def record(stage: str, command: str, detail: str, table_md: str) -> None:
    machine = f"{os.cpu_count()}-core {platform.machine()}, Python {platform.python_version()}"
    with open(BENCHMARKS_MD, "a") as f:
        f.write(f"\n### {stage}, {date.today().isoformat()}\n\n`{command}` on {machine}; {detail}\n\n{table_md}\n")
