"""`thumbs ingest`: feedback sources in, the Parquet lake out, with a summary a person can read.

    from ingest.job import IngestConfig, ingest
    summary = ingest(["logs/2026-11-20.jsonl.gz"], "lake/", IngestConfig(insecure_dev_key=True))
    print(summary.render())

A source already ingested (same sha256 of its bytes) is skipped; `force=True` ingests it again and
replaces its files (the repair for a damaged or missing lake file). Each source is claimed while it is
written (ingest/lake.py): two runs of one source take turns. A source that cannot be read at all is
reported as an error and the others go on; bad rows never stop a source, and memory does not grow with
how many there are (blocks are parsed, and their quarantine written, `BATCH_LINES` lines at a time).
Every source is pseudonymised under one key per lake: a run under another key is refused unless
`allow_new_key` says the rotation is meant.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from common.configfile import config
from ingest import arrow_path, lake as lake_files, remote
from ingest.formats.options import FormatOptions
from ingest.privacy import PiiCounts, Pseudonymizer, Scrubber, resolve_key, scrub_text
from ingest.progress import Progress
from ingest.records import FORMATS, FOREIGN_FORMATS, BadRow, RowContext, line_to_rows
from ingest.schema import FEEDBACK_SCHEMA, QUARANTINE_SCHEMA, Reason
from ingest.sources import Block, SourceError, read_blocks, sha256_of

BATCH_LINES = 10_000  # lines parsed (and their bad rows quarantined) at a time: memory stays flat under a flood


@config
class IngestConfig:
    format: Literal[FORMATS] = "events"
    """Source format: `events` (the thumbs contract), `pairs` ({prompt, chosen, rejected}), `hh`, or one of
    the tools' formats read by ingest/formats/ (`trl-kto`, `langfuse`, `langsmith`, `otel-genai`, `openai`)."""
    max_text_chars: int = Field(1_000_000, ge=1)
    """A prompt message, completion or id longer than this goes to quarantine (text_too_long)."""
    scrub_pii: bool = False
    """Mask e-mail addresses and phone numbers in prompts and completions."""
    pseudonym_key: str | None = field(default=None, repr=False)
    """HMAC key for user ids; THUMBS_PSEUDONYM_KEY wins over it. Never logged."""
    insecure_dev_key: bool = False
    """Allow the public dev key when no key is set (demos and tests only)."""
    default_timestamp: datetime | None = None
    """Timestamp of derived (pairs, hh) events whose record has none; None means now."""
    vectorized: bool = True
    """Parse `events` sources with Arrow first; False forces the per-line path (for tests)."""
    formats: FormatOptions = field(default_factory=FormatOptions)
    """For the foreign formats (ingest/formats/): the score name and which values are up or down (a YAML
    mapping of its fields is read into one)."""
    force: bool = False
    """Ingest sources again even if recorded, replacing their files: repairs a damaged lake file or record."""
    allow_new_key: bool = False
    """Add sources under a pseudonym key other than the lake's sources' (a rotation on purpose)."""

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
    secrets_masked: int = 0
    unrated: int = 0  # foreign formats: generations (or completions) no thumbs reached
    ignored: dict[str, int] = field(default_factory=dict)  # foreign formats: scores of other names
    rescued: int = 0  # foreign formats: earlier runs' orphan ratings that became events here
    seconds: float = 0.0

    def add_masked(self, counts: PiiCounts) -> None:
        """What `--scrub-pii` masked in a block or a batch of records."""
        self.emails_masked += counts.emails
        self.phones_masked += counts.phones
        self.secrets_masked += counts.secrets


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
            "secrets_masked": self.total("secrets_masked"),
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
        if d["emails_masked"] or d["phones_masked"] or d["secrets_masked"]:
            lines.append(f"  masked {d['emails_masked']:,} e-mail(s), {d['phones_masked']:,} phone number(s), "
                         f"{d['secrets_masked']:,} secret(s)")
        return "\n".join(lines)


def ingest(sources: list[str | os.PathLike], lake: str | os.PathLike, config: IngestConfig | None = None,
           progress: bool = True) -> IngestSummary:
    """Ingest each source into the lake; see the module docstring."""
    config = config or IngestConfig()
    if remote.is_remote(lake):  # an object store: through a local mirror, commit records uploaded last
        return remote.ingest(sources, str(lake), config, progress)
    lake = Path(lake)
    key = resolve_key(config.pseudonym_key, config.insecure_dev_key)
    fingerprint = lake_files.key_fingerprint(key)
    shas = {}
    for source in sources:
        with contextlib.suppress(SourceError):  # reported where the source's turn comes
            shas[str(source)] = sha256_of(str(source))
    lake_files.check_key(lake, fingerprint, config.allow_new_key, replacing=shas.values() if config.force else ())
    if config.format in FOREIGN_FORMATS:  # joins across sources: ingest/formats/run.py drives the run
        from ingest.formats.run import ingest_run
        with lake_files.claims(lake, shas.values(), fingerprint, config.force):  # the run commits them together
            return ingest_run(sources, lake, replace(config, pseudonym_key=key.decode("utf-8")), progress)
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
                for block in item.split(BATCH_LINES):
                    rows, bad = _parse(block, config, ctx, pseudonymize, summary)
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
        rows, dupes = _drop_repeated_ids(rows, seen_ids, block)
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


def _parse(block: Block, config: IngestConfig, ctx: RowContext, pseudonymize: Pseudonymizer,
           summary: SourceSummary) -> tuple[pa.Table | None, list]:
    """A block to (accepted rows in line order, [(line, raw, BadRow)])."""
    fast, todo = None, range(block.n_lines)
    if config.format == "events" and config.vectorized:
        counts = PiiCounts()
        result = arrow_path.parse_block(block.data, block.n_lines, block.first_line, ctx.source,
                                        config.max_text_chars, pseudonymize, config.scrub_pii, counts)
        if result is not None:
            fast, todo = result[:2]
            summary.add_masked(counts)
    rows, bad = [], []
    if todo:
        lines = block.lines()
        for i in todo:
            line_no = block.first_line + i
            for out in line_to_rows(lines[i], config.format, ctx, line_no):
                if isinstance(out, BadRow):
                    # Its traceback holds the parser's frames and the parsed line (kilobytes, often in a cycle
                    # only the cyclic collector frees): quarantine needs the reason, not where it was raised.
                    bad.append((line_no, lines[i], out.with_traceback(None)))
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
            BadRow(Reason.DUPLICATE_EVENT_ID, "event_id: the same id as an earlier line of this source"))
           for i in dupes]
    return rows.take(pa.array(keep, pa.int64())), bad


def _quarantine_rows(bad: list, summary: SourceSummary, pseudonymize: Pseudonymizer, scrub_pii: bool) -> pa.Table:
    def sanitize(raw: bytes) -> bytes:
        raw = redact_user_ids(raw, pseudonymize)
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


# A user id is an identity even inside a line that is not valid JSON: quarantine keeps raw lines, so every
# value under a key that spells `user_id` (any case, any JSON escape: "user\u005fid", "User-Id") is replaced
# by its pseudonym, whatever its type (string, number, list, object) and even cut off by the line's end.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.S)  # a JSON string, or one the line's end cuts
_COLON = re.compile(rb'\s*:\s*')
_SCALAR_END = re.compile(rb'[,}\]\s]|\Z')
_STRUCTURE = re.compile(rb'["\[\]{}]')


def _decoded(token: bytes) -> str:
    try:
        text = json.loads(token)
    except ValueError:  # a bad escape or bad UTF-8: the token's bytes, as far as they go
        return token.strip(b'"').decode("utf-8", "replace")
    return text if isinstance(text, str) else str(text)


def _is_user_key(token: bytes) -> bool:
    return re.sub(r"[\W_]", "", _decoded(token)).casefold() == "userid"


def _value_end(raw: bytes, start: int) -> int:
    """Where the JSON value starting at `start` ends (the line's end if it is cut off)."""
    if raw[start:start + 1] == b'"':
        return _STRING.match(raw, start).end()
    if raw[start:start + 1] not in (b"[", b"{"):
        return _SCALAR_END.search(raw, start).start()
    depth, pos = 0, start
    while (m := _STRUCTURE.search(raw, pos)) is not None:
        if m.group() == b'"':
            pos = _STRING.match(raw, m.start()).end()
            continue
        depth += 1 if m.group() in (b"[", b"{") else -1
        pos = m.end()
        if depth == 0:
            return pos
    return len(raw)


def redact_user_ids(raw: bytes, pseudonymize, depth: int = 0) -> bytes:
    """`raw` with the value of every user-id key replaced by its pseudonym (a string value's own pseudonym,
    as the lake holds it; any other value's by its JSON text), also inside JSON held in string values."""
    out, done, pos = [], 0, 0
    while (m := _STRING.search(raw, pos)) is not None:
        pos = max(m.end(), m.start() + 1)
        colon = _COLON.match(raw, m.end())
        if colon is None:
            if depth < 3 and b'\\"' in m.group() and b"user" in m.group().lower():  # JSON inside a string
                inner = redact_user_ids(_decoded(m.group()).encode("utf-8", "replace"), pseudonymize, depth + 1)
                out += [raw[done:m.start()], json.dumps(inner.decode("utf-8", "replace"), ensure_ascii=False).encode()]
                done = m.end()
            continue
        if not _is_user_key(m.group()):
            continue
        start = colon.end()
        end = _value_end(raw, start)
        if end > start:
            value = raw[start:end]
            text = _decoded(value) if value.startswith(b'"') else value.decode("utf-8", "replace")
            out += [raw[done:start], b'"', pseudonymize(text).encode(), b'"']
            done = end
        pos = max(pos, end)
    return b"".join(out) + raw[done:]
