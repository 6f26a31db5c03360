"""Progress lines for long jobs: what is done, how fast, and when it will end, at most every few seconds."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, unit: str = "B", every_s: float = 2.0, stream=sys.stderr):
        self.label, self.total, self.unit, self.every_s, self.stream = label, total, unit, every_s, stream
        self.start = self._last = time.monotonic()

    def update(self, done: int, rows: int) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self.start
        frac = done / self.total if self.total else 1.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("inf")
        print(f"  {self.label}: {frac:6.1%}  {rows:,} rows  {rows / elapsed:,.0f} rows/s  ETA {eta:,.0f}s",
              file=self.stream, flush=True)
