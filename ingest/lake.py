"""The lake on disk: Hive-partitioned feedback Parquet, quarantine, and the record of ingested sources.

    LAKE/feedback/date=YYYY-MM-DD/part-<source sha256 prefix>.parquet   accepted events, zstd
    LAKE/quarantine/<source sha256 prefix>.parquet                      bad rows with their reasons
    LAKE/_sources/<source sha256>.json                                  one per finished source

Every file is written under a hidden temporary name (readers skip names starting with '.') and
renamed into place. A source's record is written last, so a run killed half-way leaves only files
a re-run overwrites with the same content under the same names: nothing partial, nothing twice.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from common.atomic import write_json_atomic
from ingest.schema import FEEDBACK_SCHEMA, QUARANTINE_SCHEMA

FEEDBACK_DIR = "feedback"
QUARANTINE_DIR = "quarantine"
SOURCES_DIR = "_sources"
COMPRESSION = "zstd"


class AtomicParquet:
    """A Parquet file that appears under its name only when `commit` is called."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        self._writer = pq.ParquetWriter(self._tmp, schema, compression=COMPRESSION)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def commit(self) -> None:
        self._writer.close()
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)


class SourceWriter:
    """Everything one source adds to the lake, committed together at the end."""

    def __init__(self, lake: Path, source_sha256: str):
        self.lake = lake
        self.sha = source_sha256
        self._partitions: dict[date, AtomicParquet] = {}
        self._quarantine: AtomicParquet | None = None
        # A run of this source killed earlier may have left temporary files: they were never visible.
        for stale in lake.glob(f"*/**/.*{source_sha256[:16]}.parquet.*.tmp"):
            stale.unlink(missing_ok=True)

    def write_rows(self, rows: pa.Table) -> None:
        """Route accepted rows to their date partitions."""
        if not rows.num_rows:
            return
        days = pc.cast(rows.column("timestamp"), pa.date32())
        for day in pc.unique(days).to_pylist():
            part = rows.filter(pc.equal(days, pa.scalar(day, pa.date32())))
            writer = self._partitions.get(day)
            if writer is None:
                path = self.lake / FEEDBACK_DIR / f"date={day.isoformat()}" / f"part-{self.sha[:16]}.parquet"
                writer = self._partitions[day] = AtomicParquet(path, FEEDBACK_SCHEMA)
            writer.write(part)

    def write_quarantine(self, rows: pa.Table) -> None:
        if not rows.num_rows:
            return
        if self._quarantine is None:
            path = self.lake / QUARANTINE_DIR / f"{self.sha[:16]}.parquet"
            self._quarantine = AtomicParquet(path, QUARANTINE_SCHEMA)
        self._quarantine.write(rows)

    def commit(self, record: dict) -> list[str]:
        """Rename every file into place, then record the source as done. Returns the partitions."""
        for writer in self._all():
            writer.commit()
        write_json_atomic(self.lake / SOURCES_DIR / f"{self.sha}.json", record)
        return sorted(f"date={day.isoformat()}" for day in self._partitions)

    def abort(self) -> None:
        for writer in self._all():
            writer.abort()

    def _all(self) -> list[AtomicParquet]:
        return list(self._partitions.values()) + ([self._quarantine] if self._quarantine else [])


def ingested_record(lake: Path, source_sha256: str) -> dict | None:
    path = lake / SOURCES_DIR / f"{source_sha256}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def feedback_dataset(lake: Path | str) -> ds.Dataset:
    """The lake's accepted events as one Arrow dataset, partitioned by `date`."""
    schema = FEEDBACK_SCHEMA.append(pa.field("date", pa.string()))
    return ds.dataset(Path(lake) / FEEDBACK_DIR, schema=schema, format="parquet",
                      partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"))


def quarantine_table(lake: Path | str) -> pa.Table:
    path = Path(lake) / QUARANTINE_DIR
    if not path.exists():
        return QUARANTINE_SCHEMA.empty_table()
    return ds.dataset(path, schema=QUARANTINE_SCHEMA, format="parquet").to_table()
