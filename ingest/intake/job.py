"""`thumbs ingest`: feedback sources in, the Parquet lake out, with a summary a person can read.

    from ingest.intake.job import IngestConfig, ingest
    summary = ingest(["logs/2026-11-20.jsonl.gz"], "lake/", IngestConfig(insecure_dev_key=True))
    print(summary.render())

A source already ingested (same sha256 of its bytes) is skipped; `force=True` ingests it again and
replaces its files (the repair for a damaged or missing lake file). Each source is claimed while it is
written (ingest/lake.py): two runs of one source take turns. A source that cannot be read at all is
reported as an error and the others go on; bad rows never stop a source, and memory does not grow with
how many there are (blocks are parsed, and their quarantine written, `validate.BATCH_LINES` lines at a time).
Every source is pseudonymised under one key per lake: a run under another key is refused unless
`allow_new_key` says the rotation is meant.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from common.configfile import config
from ingest import lake as lake_files, remote
from ingest.intake import validate
from ingest.intake.formats.options import FormatOptions
from ingest.privacy import Pseudonymizer, Scrubber, resolve_key
from ingest.progress import Progress
from ingest.intake.records import FORMATS, FOREIGN_FORMATS, BadRow, RowContext
from ingest.schema import Reason
from ingest.intake.sources import Block, SourceError, read_blocks, sha256_of
from ingest.intake.summary import IngestSummary, SourceSummary



@config
class IngestConfig:
    format: Literal[FORMATS] = "events"
    """Source format: `events` (the thumbs contract), `pairs` ({prompt, chosen, rejected}), `hh`, or one of
    the tools' formats read by ingest/intake/formats/ (`trl-kto`, `langfuse`, `langsmith`, `otel-genai`, `openai`)."""
    max_text_chars: int = Field(1_000_000, ge=1)
    """A prompt message, completion or id longer than this goes to quarantine (text_too_long)."""
    scrub_pii: bool = False
    """Mask e-mail addresses and phone numbers in prompts and completions."""
    insecure_dev_key: bool = False
    """Allow the public dev key when no key is set (demos and tests only)."""
    default_timestamp: datetime | None = None
    """Timestamp of derived (pairs, hh) events whose record has none; None means now."""
    vectorized: bool = True
    """Parse `events` sources with Arrow first; False forces the per-line path (for tests)."""
    formats: FormatOptions = field(default_factory=FormatOptions)
    """For the foreign formats (ingest/intake/formats/): the score name and which values are up or down (a YAML
    mapping of its fields is read into one)."""
    force: bool = False
    """Ingest sources again even if recorded, replacing their files: repairs a damaged lake file or record."""
    allow_new_key: bool = False
    """Add sources under a pseudonym key other than the lake's sources' (a rotation on purpose)."""

    @property
    def max_line_bytes(self) -> int:
        # JSON may escape a character as 6 bytes (\uXXXX); past this no line can hold a valid event.
        return 6 * self.max_text_chars + (1 << 20)


def ingest(sources: list[str | os.PathLike], lake: str | os.PathLike, config: IngestConfig | None = None,
           progress: bool = True, *, pseudonym_key: str | None = None) -> IngestSummary:
    """Ingest each source into the lake; see the module docstring. The HMAC key for user ids is
    THUMBS_PSEUDONYM_KEY, else `pseudonym_key` (from a caller's secret store): never a config field, so never
    a flag, a file or a flow parameter that Prefect would store in the clear."""
    config = config or IngestConfig()
    if remote.is_remote(lake):  # an object store: through a local mirror, commit records uploaded last
        return _ingest_into_store(sources, str(lake), config, progress, pseudonym_key)
    lake = Path(lake)
    key = resolve_key(pseudonym_key, config.insecure_dev_key)
    fingerprint = lake_files.key_fingerprint(key)
    shas = {}
    for source in sources:
        with contextlib.suppress(SourceError):  # reported where the source's turn comes
            shas[str(source)] = sha256_of(str(source))
    lake_files.check_key(lake, fingerprint, config.allow_new_key, replacing=shas.values() if config.force else ())
    if config.format in FOREIGN_FORMATS:  # joins across sources: ingest/intake/formats/batch.py drives the run
        from ingest.intake.formats.batch import ingest_batch
        with lake_files.claims(lake, shas.values(), fingerprint, config.force):  # the run commits them together
            return ingest_batch(sources, lake, config, key, progress, shas=shas)
    pseudonymize = Pseudonymizer(key)
    start = time.monotonic()
    summaries, done = [], set()
    for source in sources:
        summary = SourceSummary(source=Path(source).name)
        t0 = time.monotonic()
        try:
            summary.sha256 = shas.get(str(source)) or sha256_of(str(source))
            with lake_files.claim(lake, summary.sha256, fingerprint, config.force and summary.sha256 not in done):
                if lake_files.ingested_record(lake, summary.sha256) is not None:
                    summary.status = "skipped"
                else:
                    _ingest_source(Path(source), lake, config, pseudonymize, summary, progress)
                    done.add(summary.sha256)
        except SourceError as err:
            summary.status, summary.error = "error", str(err)
        summary.seconds = round(time.monotonic() - t0, 3)
        summaries.append(summary)
    return IngestSummary(str(lake), summaries, time.monotonic() - start)


def _ingest_into_store(sources: list, url: str, config: IngestConfig, progress: bool,
                       pseudonym_key: str | None) -> IngestSummary:
    """Each source leased on the store, the mirror brought down (checked), ingest into the mirror, then the
    new files uploaded with the records last."""
    shas = []
    for source in sources:
        try:
            shas.append(sha256_of(str(source)))
        except SourceError:
            pass  # the local run reports it
    with remote.leased_mirror(url, shas, replacing=shas if config.force else ()) as mirror:
        summary = ingest(sources, mirror, config, progress, pseudonym_key=pseudonym_key)
        remote.publish_lake(mirror, url, [s.sha256 for s in summary.sources if s.status == "ingested"])
    summary.lake = url
    return summary


def _ingest_source(path: Path, lake: Path, config: IngestConfig, pseudonymize: Pseudonymizer,
                   summary: SourceSummary, progress: bool) -> None:
    scrubber = Scrubber() if config.scrub_pii else None
    ctx = RowContext(
        source=summary.source, max_text_chars=config.max_text_chars, pseudonymize=pseudonymize, scrub=scrubber,
        default_timestamp=config.default_timestamp or datetime.now(timezone.utc).replace(microsecond=0),
    )
    writer = lake_files.SourceWriter(lake, summary.sha256)
    meter = Progress(summary.source, os.path.getsize(path)) if progress else None
    seen_ids: set[str] = set()
    try:
        for item in read_blocks(str(path), config.max_line_bytes,
                                progress=meter and (lambda pos: meter.update(pos, summary.accepted))):
            if isinstance(item, Block):
                for block in item.split(validate.BATCH_LINES):
                    rows, bad = validate.parse_block(block, config, ctx, pseudonymize, summary)
                    summary.lines += block.n_lines
                    _write(writer, block, rows, bad, seen_ids, summary, pseudonymize, config)
            else:
                summary.lines += 1
                _write(writer, item, None, [(item.line, item.head, BadRow(
                    Reason.TEXT_TOO_LONG, f"line has {item.n_bytes:,} bytes; raw keeps the first {len(item.head):,}"))],
                       seen_ids, summary, pseudonymize, config)
        if scrubber is not None:
            summary.add_masked(scrubber.take())
        record = {k: v for k, v in asdict(summary).items() if k not in ("status", "error", "partitions", "seconds")}
        record["ingested_at"] = datetime.now(timezone.utc).isoformat()
        summary.partitions = writer.commit(record)
    except BaseException:
        writer.abort()
        raise


def _write(writer: lake_files.SourceWriter, block, rows: pa.Table | None, bad: list, seen_ids: set[str],
           summary: SourceSummary, pseudonymize: Pseudonymizer, config: IngestConfig) -> None:
    """One parsed block's rows to their partitions and its bad rows to quarantine, now (nothing piles up)."""
    if rows is not None and rows.num_rows:
        rows, dupes = validate.drop_repeated_ids(rows, seen_ids, block)
        bad.extend(dupes)
        writer.write_rows(rows)
        n_up = pc.sum(rows.column("desirable")).as_py() or 0
        summary.accepted += rows.num_rows
        summary.desirable += n_up
        summary.undesirable += rows.num_rows - n_up
    if bad:
        writer.write_quarantine(validate.quarantine_rows(bad, summary, pseudonymize, config.scrub_pii))
        for _, _, err in bad:
            summary.quarantined[err.reason.value] = summary.quarantined.get(err.reason.value, 0) + 1
