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
    """Add an entry at the end of BENCHMARKS.md's `## <stage>` section (the file's end when it has none)."""
    machine = f"{os.cpu_count()}-core {platform.machine()}, Python {platform.python_version()}"
    entry = f"\n### {stage}, {date.today().isoformat()}\n\n`{command}` on {machine}; {detail}\n\n{table_md}\n"
    text = BENCHMARKS_MD.read_text()
    start = text.find(f"\n## {stage}\n")
    end = text.find("\n## ", start + 1) if start >= 0 else -1
    text = text + entry if end < 0 else text[:end].rstrip("\n") + "\n" + entry + text[end:]
    tmp = BENCHMARKS_MD.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, BENCHMARKS_MD)
