"""`thumbs ingest`: feedback sources in, the Parquet lake out, with a summary a person can read.

    from ingest.job import IngestConfig, ingest
    summary = ingest(["logs/2026-11-20.jsonl.gz"], "lake/", IngestConfig(insecure_dev_key=True))
    print(summary.render())

A source already ingested (same sha256 of its bytes) is skipped. A source that cannot be read at all
is reported as an error and the others go on; bad rows never stop a source.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ingest import arrow_path, lake as lake_files, remote
from ingest.formats.options import FormatOptions
from ingest.privacy import Pseudonymizer, resolve_key, scrub_text
from ingest.progress import Progress
from ingest.records import FORMATS, FOREIGN_FORMATS, BadRow, RowContext, line_to_rows
from ingest.schema import FEEDBACK_SCHEMA, QUARANTINE_SCHEMA, Reason
from ingest.sources import Block, SourceError, read_blocks, sha256_of

# A user id is an identity even inside a line we cannot parse: it is pseudonymised in quarantine too.
_RAW_USER_ID = re.compile(rb'("user_id"\s*:\s*)("(?:[^"\\]|\\.)*"|-?\d+)')


@dataclass
class IngestConfig:
    format: str = "events"
    """Source format: `events` (the thumbs contract), `pairs` ({prompt, chosen, rejected}), `hh`, or one of
    the tools' formats read by ingest/formats/ (`trl-kto`, `langfuse`, `langsmith`, `otel-genai`, `openai`)."""
    max_text_chars: int = 1_000_000
    """A prompt message, completion or id longer than this goes to quarantine (text_too_long)."""
    scrub_pii: bool = False
    """Mask e-mail addresses and phone numbers in prompts and completions."""
    pseudonym_key: str | None = None
    """HMAC key for user ids; THUMBS_PSEUDONYM_KEY wins over it. Never logged."""
    insecure_dev_key: bool = False
    """Allow the public dev key when no key is set (demos and tests only)."""
    default_timestamp: datetime | None = None
    """Timestamp of derived (pairs, hh) events whose record has none; None means now."""
    vectorized: bool = True
    """Parse `events` sources with Arrow first; False forces the per-line path (for tests)."""
    formats: FormatOptions = field(default_factory=FormatOptions)
    """For the foreign formats (ingest/formats/): the score name and which values are up or down."""

    def __post_init__(self):
        if isinstance(self.formats, dict):  # from a YAML mapping
            self.formats = FormatOptions(**self.formats)
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.max_text_chars < 1:
            raise ValueError("max_text_chars must be at least 1")

    @property
    def max_line_bytes(self) -> int:
        # JSON may escape a character as 6 bytes (\uXXXX); past this no line can hold a valid event.
        return 6 * self.max_text_chars + (1 << 20)


@dataclass
class SourceSummary:
    source: str
    sha256: str = ""
    status: str = "ingested"  # ingested | skipped | error
    error: str = ""
    lines: int = 0
    accepted: int = 0
    desirable: int = 0
    undesirable: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    partitions: list[str] = field(default_factory=list)
    emails_masked: int = 0
    phones_masked: int = 0
    unrated: int = 0  # foreign formats: generations (or completions) no thumbs reached
    ignored: dict[str, int] = field(default_factory=dict)  # foreign formats: scores of other names
    rescued: int = 0  # foreign formats: earlier runs' orphan ratings that became events here
    seconds: float = 0.0


@dataclass
class IngestSummary:
    lake: str
    sources: list[SourceSummary]
    seconds: float

    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.sources)

    @property
    def quarantined(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sources:
            for reason, n in s.quarantined.items():
                out[reason] = out.get(reason, 0) + n
        return dict(sorted(out.items()))

    @property
    def failed(self) -> list[SourceSummary]:
        return [s for s in self.sources if s.status == "error"]

    def to_dict(self) -> dict:
        by_status = {k: sum(s.status == k for s in self.sources) for k in ("ingested", "skipped", "error")}
        return {
            "lake": self.lake,
            "sources_read": by_status["ingested"], "sources_skipped": by_status["skipped"],
            "sources_failed": by_status["error"],
            "lines": self.total("lines"), "accepted": self.total("accepted"),
            "desirable": self.total("desirable"), "undesirable": self.total("undesirable"),
            "quarantined": self.quarantined, "quarantined_total": sum(self.quarantined.values()),
            "partitions": sorted({p for s in self.sources for p in s.partitions}),
            "emails_masked": self.total("emails_masked"), "phones_masked": self.total("phones_masked"),
            "unrated": self.total("unrated"), "rescued": self.total("rescued"),
            "ignored": {k: sum(s.ignored.get(k, 0) for s in self.sources)
                        for k in sorted({k for s in self.sources for k in s.ignored})},
            "seconds": round(self.seconds, 3),
            "sources": [asdict(s) for s in self.sources],
        }

    def render(self) -> str:
        d = self.to_dict()
        lines = [f"ingest into {self.lake}: {d['sources_read']} source(s) read, {d['sources_skipped']} skipped "
                 f"(already ingested), {d['sources_failed']} failed, in {self.seconds:.1f}s"]
        for s in self.sources:
            if s.status == "ingested":
                lines.append(f"  {s.source}: {s.lines:,} lines -> {s.accepted:,} accepted "
                             f"({s.desirable:,} up / {s.undesirable:,} down), "
                             f"{sum(s.quarantined.values()):,} quarantined, {len(s.partitions)} partition(s)")
            elif s.status == "skipped":
                lines.append(f"  {s.source}: skipped, already ingested (sha256 {s.sha256[:12]})")
            else:
                lines.append(f"  {s.source}: FAILED: {s.error}")
        for reason, n in d["quarantined"].items():
            lines.append(f"  quarantined {reason}: {n:,}")
        if d["ignored"]:
            lines.append("  ignored scores of other names: " + ", ".join(f"{k} {n:,}" for k, n in d["ignored"].items()))
        if d["unrated"] or d["rescued"]:
            lines.append(f"  {d['unrated']:,} generation(s) without a thumbs; {d['rescued']:,} earlier orphan "
                         "rating(s) rescued")
        if d["emails_masked"] or d["phones_masked"]:
            lines.append(f"  masked {d['emails_masked']:,} e-mail(s), {d['phones_masked']:,} phone number(s)")
        return "\n".join(lines)


class _Scrubber:
    def __init__(self):
        self.emails = self.phones = 0

    def __call__(self, text: str) -> str:
        text, n_email, n_phone = scrub_text(text)
        self.emails += n_email
        self.phones += n_phone
        return text


def ingest(sources: list[str | os.PathLike], lake: str | os.PathLike, config: IngestConfig | None = None,
           progress: bool = True) -> IngestSummary:
    """Ingest each source into the lake; see the module docstring."""
    config = config or IngestConfig()
    if remote.is_remote(lake):  # an object store: through a local mirror, commit records uploaded last
        return remote.ingest(sources, str(lake), config, progress)
    if config.format in FOREIGN_FORMATS:  # joins across sources: ingest/formats/run.py drives the run
        from ingest.formats.run import ingest_run
        return ingest_run(sources, lake, config, progress)
    lake = Path(lake)
    pseudonymize = Pseudonymizer(resolve_key(config.pseudonym_key, config.insecure_dev_key))
    start = time.monotonic()
    summaries = []
    for source in sources:
        summary = SourceSummary(source=Path(source).name)
        t0 = time.monotonic()
        try:
            summary.sha256 = sha256_of(str(source))
            if lake_files.ingested_record(lake, summary.sha256) is not None:
                summary.status = "skipped"
            else:
                _ingest_source(Path(source), lake, config, pseudonymize, summary, progress)
        except SourceError as err:
            summary.status, summary.error = "error", str(err)
        summary.seconds = round(time.monotonic() - t0, 3)
        summaries.append(summary)
    return IngestSummary(str(lake), summaries, time.monotonic() - start)


def _ingest_source(path: Path, lake: Path, config: IngestConfig, pseudonymize: Pseudonymizer,
                   summary: SourceSummary, progress: bool) -> None:
    scrubber = _Scrubber() if config.scrub_pii else None
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
                rows, bad = _parse(item, config, ctx, pseudonymize, summary)
                summary.lines += item.n_lines
            else:
                rows, bad = None, [(item.line, item.head, BadRow(
                    Reason.TEXT_TOO_LONG, f"line has {item.n_bytes:,} bytes; raw keeps the first {len(item.head):,}"))]
                summary.lines += 1
            if rows is not None and rows.num_rows:
                rows, dupes = _drop_repeated_ids(rows, seen_ids, item)
                bad.extend(dupes)
                writer.write_rows(rows)
                n_up = pc.sum(rows.column("desirable")).as_py() or 0
                summary.accepted += rows.num_rows
                summary.desirable += n_up
                summary.undesirable += rows.num_rows - n_up
            if bad:
                writer.write_quarantine(_quarantine_rows(bad, summary, pseudonymize, config.scrub_pii))
                for _, _, err in bad:
                    summary.quarantined[err.reason.value] = summary.quarantined.get(err.reason.value, 0) + 1
        if scrubber is not None:
            summary.emails_masked += scrubber.emails
            summary.phones_masked += scrubber.phones
        record = {k: v for k, v in asdict(summary).items() if k not in ("status", "error", "partitions", "seconds")}
        record["ingested_at"] = datetime.now(timezone.utc).isoformat()
        summary.partitions = writer.commit(record)
    except BaseException:
        writer.abort()
        raise


def _parse(block: Block, config: IngestConfig, ctx: RowContext, pseudonymize: Pseudonymizer,
           summary: SourceSummary) -> tuple[pa.Table | None, list]:
    """A block to (accepted rows in line order, [(line, raw, BadRow)])."""
    fast, todo = None, range(block.n_lines)
    if config.format == "events" and config.vectorized:
        result = arrow_path.parse_block(block.data, block.n_lines, block.first_line, ctx.source,
                                        config.max_text_chars, pseudonymize, config.scrub_pii)
        if result is not None:
            fast, todo, n_email, n_phone = result
            summary.emails_masked += n_email
            summary.phones_masked += n_phone
    rows, bad = [], []
    if todo:
        lines = block.lines()
        for i in todo:
            line_no = block.first_line + i
            for out in line_to_rows(lines[i], config.format, ctx, line_no):
                if isinstance(out, BadRow):
                    bad.append((line_no, lines[i], out))
                else:
                    rows.append(out)
    tables = [t for t in (fast, pa.Table.from_pylist(rows, schema=FEEDBACK_SCHEMA) if rows else None) if t is not None]
    if not tables:
        return None, bad
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if fast is not None and rows:
        table = table.take(pc.sort_indices(table.column("source_line")))
    return table, bad


def _drop_repeated_ids(rows: pa.Table, seen: set[str], block) -> tuple[pa.Table, list]:
    """The first row with an event_id wins; later ones in the same source go to quarantine."""
    keep, dupes = [], []
    for i, event_id in enumerate(rows.column("event_id").to_pylist()):
        if event_id in seen:
            dupes.append(i)
        else:
            seen.add(event_id)
            keep.append(i)
    if not dupes:
        return rows, []
    lines = block.lines()
    line_numbers = rows.column("source_line").to_pylist()
    bad = [(line_numbers[i], lines[line_numbers[i] - block.first_line],
            BadRow(Reason.DUPLICATE_EVENT_ID, f"event_id {rows.column('event_id')[i].as_py()[:80]!r} "
                                              "already appeared earlier in this source"))
           for i in dupes]
    return rows.take(pa.array(keep, pa.int64())), bad


def _quarantine_rows(bad: list, summary: SourceSummary, pseudonymize: Pseudonymizer, scrub_pii: bool) -> pa.Table:
    def sanitize(raw: bytes) -> bytes:
        raw = _RAW_USER_ID.sub(lambda m: m.group(1) + b'"' + pseudonymize(
            m.group(2).strip(b'"').decode("utf-8", "replace")).encode() + b'"', raw)
        if scrub_pii:
            try:
                raw = scrub_text(raw.decode("utf-8"))[0].encode("utf-8")
            except UnicodeDecodeError:
                pass  # not text: nothing a text pattern could find safely
        return raw

    return pa.Table.from_pylist(
        [{"source": summary.source, "source_sha256": summary.sha256, "line": line, "reason": err.reason.value,
          "detail": err.detail, "raw": sanitize(raw)} for line, raw, err in bad],
        schema=QUARANTINE_SCHEMA,
    )
