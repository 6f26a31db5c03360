"""Ingest a run of sources in a foreign format: translate, join, then validate as `--format events`.

    ingest(["observations.jsonl", "scores.jsonl"], "lake/", IngestConfig(format="langfuse", ...))

Each line is parsed by its format's module into events, generations and ratings (`base.py`). A rating
is joined to a generation of its own line at once, else after every source of the run has been read
(`join.py`), else among the generations earlier runs stored (`generations.py`); one whose generation is
nowhere is quarantined as `orphan_feedback`, and rescued by a later run that brings it (`orphans.py`). Every joined record is serialised as a `--format events` line and goes
through `ingest.intake.validate`'s block parser (Arrow first, the per-line reference where Arrow cannot vouch),
duplicate-id check and quarantine, with line numbers mapped back to the source's. The sources' files are
committed together at the end of the run, each with its record last; on any error none is.

A line may hold many records (an API page: OpenAI's completions list, LangSmith's runs query or feedback
array, a Langfuse trace with its observations and scores). Each is accounted for on its own, under the line's
number: a rating is one accepted or one quarantined row or one ignored score, an unreadable record one
quarantined row, a generation no rating reached one `unrated`. So `lines` counts the source's lines, and
accepted + quarantined + ignored + unrated counts records (ratings, unrated completions, bad records): the
two are equal where every line holds one record, as `--format events` has it.
A generation that holds what thumbs cannot keep as text (`Generation.refused`: LangSmith, Langfuse and OTel
return one) turns each rating on it into a quarantined row with that reason, in this run or a later one (the
store keeps the reason, never the content); one no rating reaches is `unrated`, as any generation.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ingest import lake as lake_files
from ingest.intake import validate
from ingest.intake.formats import generations, langfuse, langsmith, openai, orphans, otel_genai, trl_kto
from ingest.intake.formats.base import (Completed, Event, Generation, Ignored, Rating, Trace, Unrated,
                                        event_record)
from ingest.intake.formats.join import Index, fill_from_trace
from ingest.privacy import Pseudonymizer, Scrubber
from ingest.progress import Progress
from ingest.intake.records import BadRow, RowContext, too_deep, too_deep_row
from ingest.schema import Reason
from ingest.intake.sources import Block, SourceError, read_blocks, sha256_of
from ingest.intake.summary import IngestSummary, SourceSummary

PARSERS = {"trl-kto": trl_kto.parse, "langfuse": langfuse.parse, "langsmith": langsmith.parse,
           "otel-genai": otel_genai.parse, "openai": openai.parse}
JOINED = ("langfuse", "langsmith", "otel-genai")  # formats whose ratings name generations by id
ARRAY_LINES = ("langsmith",)  # formats whose line may be a JSON array of records (LangSmith's GET /feedback)
# The field a rating's target key (join.Index) was read from, for quarantine details.
_TARGET_FIELDS = {"obs": "observationId", "trace": "traceId", "run": "run_id", "span": "spanId",
                  "resp": "gen_ai.response.id"}
FLUSH_EVENTS = 50_000  # events buffered per source before they are validated and written
# Generations held for the part that completes them (Generation.awaiting: an OTel span after its log records), with
# the ratings of their own lines; past this many, the oldest is settled without it (memory stays bounded).
AWAITING_GENERATIONS = 100_000


def dumps(obj) -> bytes:
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):  # a lone surrogate: json escapes it, the validator names it
        return json.dumps(obj).encode()


# Identities the tools write under other names than `user_id` (which ingest.intake.job already pseudonymises).
_STR = rb'("(?:[^"\\]|\\.)*")'
_USER_FIELDS = [re.compile(rb'("(?:userId|authorUserId|user|input_user)"\s*:\s*)' + _STR),
                re.compile(rb'("key"\s*:\s*"(?:user\.id|enduser\.id|llm\.user|traceloop\.association\.properties\.user_id)"\s*,\s*"value"\s*:\s*'
                           rb'\{\s*"stringValue"\s*:\s*)' + _STR)]


def _unquote(text: bytes) -> str:
    try:
        return json.loads(text)
    except ValueError:
        return text[1:-1].decode("utf-8", "replace")


def raw_bytes(raw, pseudonymize) -> bytes:
    """What quarantine keeps: a line as read, or a nested record (an object until needed) as JSON; with the
    user ids under the tools' names replaced by their pseudonyms, as ingest.intake.job does for `user_id`."""
    raw = raw if isinstance(raw, bytes) else json.dumps(raw, ensure_ascii=False).encode("utf-8", "replace")
    for pattern in _USER_FIELDS:
        raw = pattern.sub(lambda m: m.group(1) + b'"' + pseudonymize(_unquote(m.group(2))).encode() + b'"', raw)
    return raw


class Pending:
    """Events lines waiting for validation, in one buffer (orjson's own buffers are 4 KiB each at least)."""

    def __init__(self):
        self.buf = bytearray()
        self.meta: list[tuple[int, object]] = []  # (source line, raw record) per events line

    def append(self, record: dict, line_no: int, raw) -> None:
        self.buf += dumps(record)
        self.buf += b"\n"
        self.meta.append((line_no, raw))

    def __len__(self) -> int:
        return len(self.meta)


class Writes:
    """The run's writing, in one thread beside the reading: a flush's validation (Arrow's JSON reader) and its
    Parquet encoding and compression release the GIL, so on a second core they overlap the reading of the next
    lines. Writes run one at a time in the order submitted; at most `depth` wait (a flush's events each), so
    memory stays bounded. A write's error is raised to the reader at its next submit, or at `drain`."""

    def __init__(self, depth: int = 2):
        self.depth = depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="thumbs-ingest-writes")
        self.queue: deque = deque()

    def submit(self, fn, *args) -> None:
        self.queue.append(self.pool.submit(fn, *args))
        while len(self.queue) > self.depth:
            self.queue.popleft().result()

    def drain(self) -> None:
        """Wait for every write submitted; the first error is raised, once the others have stopped too."""
        error = None
        while self.queue:
            try:
                self.queue.popleft().result()
            except BaseException as err:  # noqa: BLE001 - raised below, after the queue is empty
                error = error or err
        if error is not None:
            raise error

    def close(self) -> None:
        """Stop: every write submitted has finished (its error, if any, is dropped: the run is failing)."""
        with contextlib.suppress(BaseException):
            self.drain()
        self.pool.shutdown()


class ParseContext:
    """What the format modules read: the options, the run's trace index, the default time."""

    def __init__(self, options, index: Index, default_timestamp: str):
        self.options, self.index, self.default_timestamp = options, index, default_timestamp


class _Source:
    """One source of the run, open for writing until the run ends."""

    def __init__(self, idx: int, path: Path, summary: SourceSummary, lake: Path, row_ctx: RowContext):
        self.idx, self.path, self.summary, self.row_ctx = idx, path, summary, row_ctx
        self.writer = lake_files.SourceWriter(lake, summary.sha256)
        self.pending = Pending()
        self.rescue: dict[str, Pending] = {}  # earlier source name -> its rescued events
        self.stored = Pending()  # events whose generation an earlier run stored (user ids already pseudonyms)
        self.store: generations.Store | None = None  # this source's generations, for later runs
        self.bad: list = []
        self.seen_ids: set[str] = set()
        self.generations = self.used = 0
        self.rescued: list[dict] = []
        self.failed = False


def _load(raw: bytes):
    """A line to its JSON value, or a BadRow with the same reasons as the events path."""
    if not raw.strip():
        return BadRow(Reason.BLANK_LINE, "line is blank")
    if too_deep(raw):  # before any parser: they recurse per level (and orjson and json disagree on the limit)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:  # the events path names bad bytes first
            return BadRow(Reason.INVALID_UTF8, f"invalid UTF-8 at byte {err.start}")
        return too_deep_row()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # let the standard library say why (and accept what it accepts, such as lone surrogates)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return BadRow(Reason.INVALID_UTF8, f"invalid UTF-8 at byte {err.start}")
    except ValueError as err:
        return BadRow(Reason.MALFORMED_JSON, str(err)[:200])
    except RecursionError:
        return BadRow(Reason.MALFORMED_JSON, "JSON nested too deeply")


class Batch:
    def __init__(self, lake: Path, config, key: bytes, progress: bool):
        self.lake, self.config, self.progress = lake, config, progress
        self.parse = PARSERS[config.format]
        self.pseudonymize = Pseudonymizer(key)
        self.default_ts = config.default_timestamp or datetime.now(timezone.utc).replace(microsecond=0)
        self.ctx = ParseContext(config.formats, Index(), self.default_ts.isoformat())
        self.events_config = replace(config, format="events")
        self.sources: list[_Source] = []
        self.writes = Writes()
        self.awaiting: dict[int, tuple[Generation, list]] = {}  # id -> (generation, its lines' ratings waiting)
        self.deferred: list[tuple[_Source, int, Rating]] = []

    def row_ctx(self, name: str, pseudonymize=None) -> RowContext:
        return RowContext(source=name, max_text_chars=self.config.max_text_chars,
                          pseudonymize=pseudonymize or self.pseudonymize,
                          scrub=Scrubber() if self.config.scrub_pii else None,
                          default_timestamp=self.default_ts)

    # -- reading -------------------------------------------------------------------------------------------
    def read(self, path: Path, summary: SourceSummary) -> None:
        src = _Source(len(self.sources), path, summary, self.lake, self.row_ctx(summary.source))
        self.sources.append(src)
        if self.config.format in JOINED:  # a score in a later run may name any of its generations
            src.store = generations.Store(self.lake, self.config.format, summary.sha256, self.pseudonymize,
                                          self.config.scrub_pii, submit=self.writes.submit)
        meter = Progress(summary.source, os.path.getsize(path)) if self.progress else None
        try:
            for item in read_blocks(str(path), self.config.max_line_bytes,
                                    progress=meter and (lambda pos: meter.update(pos, summary.accepted))):
                if isinstance(item, Block):
                    for i, raw in enumerate(item.lines()):
                        self._line(src, raw, item.first_line + i)
                        if len(src.bad) >= validate.BATCH_LINES:  # a flood of bad lines is written as it comes
                            self.flush(src)
                    summary.lines += item.n_lines
                else:
                    summary.lines += 1
                    src.bad.append((item.line, item.head, BadRow(Reason.TEXT_TOO_LONG, (
                        f"line has {item.n_bytes:,} bytes; raw keeps the first {len(item.head):,}"))))
                if len(src.pending) >= FLUSH_EVENTS or src.bad:
                    self.flush(src)
            self.flush(src)
        except SourceError:
            src.failed = True  # its generations may answer no rating of another source, its files go
            self.writes.drain()  # nothing of it is still being written when its files go
            src.writer.abort()
            if src.store is not None:
                src.store.abort()
            raise

    def _line(self, src: _Source, raw: bytes, line_no: int) -> None:
        record = _load(raw)
        if isinstance(record, BadRow):
            src.bad.append((line_no, raw, record))
            return
        if not isinstance(record, dict) and not (isinstance(record, list) and self.config.format in ARRAY_LINES):
            src.bad.append((line_no, raw, BadRow(Reason.NOT_AN_OBJECT,
                                                 f"line holds a JSON {type(record).__name__}, not an object")))
            return
        try:
            items = self.parse(record, raw, self.ctx)
        except BadRow as bad:
            src.bad.append((line_no, raw, bad.with_traceback(None)))  # a traceback holds the frames: kilobytes
            return
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:  # a shape no check foresaw
            src.bad.append((line_no, raw, BadRow(Reason.WRONG_TYPE, f"record is not in the {self.config.format} "
                                                                    f"shape ({type(err).__name__})")))
            return
        local, ratings, traces = None, [], []
        for it in items:
            if isinstance(it, Event):
                src.pending.append(it.record, line_no, it.raw)
            elif isinstance(it, Generation):
                it.origin = src.idx
                src.generations += 1
                if it.awaiting:  # stored, and its ratings here emitted, once complete (`_settle`)
                    self.awaiting[id(it)] = (it, [])
                    if len(self.awaiting) > AWAITING_GENERATIONS:
                        self._settle(next(iter(self.awaiting)))
                elif src.store is not None:
                    src.store.add(fill_from_trace(it, self.ctx.index.traces))
                self.ctx.index.add(it)
                local = local or Index()
                local.add(it)
            elif isinstance(it, Rating):
                ratings.append(it)
            elif isinstance(it, Trace):  # comes before its nested observations
                self.ctx.index.traces[it.trace_id] = (it.user_id, it.session_id)
                traces.append(it)
            elif isinstance(it, Ignored):
                src.summary.ignored[it.name] = src.summary.ignored.get(it.name, 0) + 1
            elif isinstance(it, Unrated):
                src.summary.unrated += 1
            elif isinstance(it, Completed):
                self._settle(id(it.gen))
            else:  # (BadRow, raw of the nested record)
                src.bad.append((line_no, it[1], it[0]))
        if src.store is not None:
            for trace in traces:  # for observations in other lines or runs; nested ones carry it already
                if local is None or not any(g.trace == trace.trace_id for g in local.values()):
                    src.store.add_trace(trace.trace_id, trace.user_id, trace.session_id)
        for rating in ratings:
            gen = local.get(rating.target) if local is not None else None
            if gen is None:
                self.deferred.append((src, line_no, rating))
            elif gen.awaiting and id(gen) in self.awaiting:
                self.awaiting[id(gen)][1].append((src, line_no, rating))
            else:
                self.emit(src, src.pending, rating, gen, line_no)

    def _settle(self, key: int) -> None:
        """An awaiting generation, complete now or waited for long enough: stored, its waiting ratings emitted."""
        entry = self.awaiting.pop(key, None)
        if entry is None:
            return  # settled already (the wait was over)
        gen, waiting = entry
        origin = self.sources[gen.origin]
        if origin.failed:
            return
        if origin.store is not None:
            origin.store.add(fill_from_trace(gen, self.ctx.index.traces))
        for src, line_no, rating in waiting:
            self.emit(src, src.pending, rating, gen, line_no)

    def emit(self, src: _Source, into: Pending, rating: Rating, gen: Generation, line_no: int) -> None:
        """The event of a rating (of `src`, at `line_no`) on `gen` into `into`; quarantined if `gen` is refused."""
        if not gen.used:
            gen.used = True
            if gen.origin >= 0:
                self.sources[gen.origin].used += 1
        if gen.refused is not None:
            src.bad.append((line_no, rating.raw, gen.refused))
            return
        into.append(event_record(rating, fill_from_trace(gen, self.ctx.index.traces)), line_no, rating.raw)

    # -- joining -------------------------------------------------------------------------------------------
    def lookup(self, target: str) -> Generation | None:
        gen = self.ctx.index.get(target)
        return None if gen is None or self.sources[gen.origin].failed else gen

    def resolve(self) -> None:
        """The generations still awaiting, the run's ratings that named a generation outside their line, then
        earlier runs' orphans."""
        for key in list(self.awaiting):
            self._settle(key)
        missing = {r.target for src, _, r in self.deferred if not src.failed and self.lookup(r.target) is None}
        stored = generations.find(self.lake, self.config.format, missing, self.ctx.index.traces,
                                  self.pseudonymize) if missing else {}
        for src, line_no, rating in self.deferred:
            if src.failed:
                continue
            gen = self.lookup(rating.target)
            if gen is None and rating.target in stored:
                self.emit(src, src.stored, rating, stored[rating.target], line_no)
            elif gen is None:
                field = _TARGET_FIELDS.get(rating.target.split(":")[0], "id")  # the field, never its value
                src.bad.append((line_no, rating.raw, BadRow(
                    Reason.ORPHAN_FEEDBACK, f"no generation with the {field} it names in this run's sources; a later "
                                            "run that brings it turns this rating into an event")))
            else:
                self.emit(src, src.pending, rating, gen, line_no)
        self.deferred = []
        waiting, rescued = orphans.pending(self.lake, self.config.format)
        for orphan in waiting:
            for rating in self._ratings_of(orphan.raw):
                gen = self.lookup(rating.target)
                if gen is None or gen.refused is not None or (orphan.sha256, rating.event_id) in rescued:
                    continue  # a refused generation leaves the orphan as it is: one quarantined row per rating
                into = self.sources[gen.origin]
                self.emit(into, into.rescue.setdefault(orphan.source, Pending()), rating, gen, orphan.line)
                into.rescued.append({"source": orphan.source, "source_sha256": orphan.sha256,
                                     "line": orphan.line, "event_id": rating.event_id})
                rescued.add((orphan.sha256, rating.event_id))

    def _ratings_of(self, raw: bytes) -> list[Rating]:
        """The ratings a quarantined raw record holds (parsed again: it stands on its own)."""
        record = _load(raw)
        if not isinstance(record, dict):
            return []
        try:
            return [it for it in self.parse(record, raw, self.ctx) if isinstance(it, Rating)]
        except (BadRow, TypeError, ValueError, AttributeError, KeyError, IndexError):
            return []  # it was quarantined for a reason of its own then; it stays there

    # -- writing -------------------------------------------------------------------------------------------
    def flush(self, src: _Source) -> None:
        """Hand what `src` has waiting (events, rescued and stored events, bad lines) to the writing thread."""
        if not (src.pending or src.rescue or src.stored or src.bad):
            return
        work = (src.pending, src.rescue, src.stored, src.bad)
        src.pending, src.rescue, src.stored, src.bad = Pending(), {}, Pending(), []
        self.writes.submit(self._write, src, *work)

    def _write(self, src: _Source, pending: Pending, rescue: dict, stored: Pending, bad: list) -> None:
        """In the writing thread: validate and write one flush's events, then quarantine its bad lines."""
        self._validate(src, pending, src.row_ctx, bad)
        for name, events in rescue.items():
            self._validate(src, events, self.row_ctx(name), bad, rescued=True)
        already = generations.AlreadyPseudonymized()
        self._validate(src, stored, self.row_ctx(src.summary.source, already), bad, pseudonymize=already)
        if bad:
            rows = [(line, raw_bytes(raw, self.pseudonymize), err) for line, raw, err in bad]
            src.writer.write_quarantine(validate.quarantine_rows(rows, src.summary, self.pseudonymize,
                                                             self.config.scrub_pii))
            for _, _, err in bad:
                src.summary.quarantined[err.reason.value] = src.summary.quarantined.get(err.reason.value, 0) + 1

    def _validate(self, src: _Source, pending: Pending, row_ctx: RowContext, bad: list, rescued: bool = False,
                  pseudonymize=None) -> None:
        """Events lines through the events path into `src`'s writer, their bad lines onto `bad`; rows and
        quarantine keep the source's line numbers."""
        if not pending:
            return
        summary = src.summary
        block = Block(0, bytes(pending.buf[:-1]), len(pending))
        meta = pending.meta
        origin = pa.array([m[0] for m in meta], pa.int64())
        rows, invalid = validate.parse_block(block, self.events_config, row_ctx, pseudonymize or self.pseudonymize,
                                             summary)
        bad.extend((*meta[i], err) for i, _, err in invalid)
        if rows is not None and rows.num_rows:
            rows, dupes = validate.drop_repeated_ids(rows, src.seen_ids, block)
            bad.extend((*meta[i], err) for i, _, err in dupes)
            column = rows.schema.get_field_index("source_line")
            rows = rows.set_column(column, rows.schema.field(column), pc.take(origin, rows.column("source_line")))
            src.writer.write_rows(rows)
            n_up = pc.sum(rows.column("desirable")).as_py() or 0
            summary.accepted += rows.num_rows
            summary.desirable += n_up
            summary.undesirable += rows.num_rows - n_up
            if rescued:
                summary.rescued += rows.num_rows
        if row_ctx.scrub is not None:
            summary.add_masked(row_ctx.scrub.take())

    def commit(self) -> None:
        for src in self.sources:
            if not src.failed:
                self.flush(src)
                if src.store is not None:
                    src.store.flush()
        self.writes.drain()
        for src in self.sources:
            if src.failed:
                continue
            if src.store is not None:
                src.store.commit()
            src.summary.unrated += src.generations - src.used
            record = {k: v for k, v in asdict(src.summary).items()
                      if k not in ("status", "error", "partitions", "seconds")}
            record.update(ingested_at=datetime.now(timezone.utc).isoformat(), format=self.config.format,
                          rescued=src.rescued)
            src.summary.partitions = src.writer.commit(record)


def ingest_batch(sources, lake, config, key: bytes, progress: bool = True,
                 shas: dict[str, str] | None = None) -> IngestSummary:
    """`ingest.intake.job.ingest` for the foreign formats: same summary, same guarantees. `shas`: the
    sources' sha256 by path, as `job.ingest` hashed them already (a source it could not read is hashed here)."""
    shas = shas or {}
    lake = Path(lake)
    run = Batch(lake, config, key, progress)
    start = time.monotonic()
    summaries, seen = [], set()
    # The join index holds millions of small objects and makes none in cycles: the cyclic collector would
    # walk them all again and again (a third of the time at 300k events), reference counting frees them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for source in sources:
            summary = SourceSummary(source=Path(source).name)
            t0 = time.monotonic()
            try:
                summary.sha256 = shas.get(str(source)) or sha256_of(str(source))
                if summary.sha256 in seen or lake_files.ingested_record(lake, summary.sha256) is not None:
                    summary.status = "skipped"
                else:
                    seen.add(summary.sha256)
                    run.read(Path(source), summary)
            except SourceError as err:
                summary.status, summary.error = "error", str(err)
            summary.seconds = round(time.monotonic() - t0, 3)
            summaries.append(summary)
        run.resolve()
        run.commit()
    except BaseException:
        run.writes.close()  # no write of the run is under way when its files go
        for src in run.sources:
            src.writer.abort()
        for src in run.sources:
            if src.store is not None:
                src.store.abort()
        raise
    finally:
        run.writes.close()
        if collecting:
            gc.enable()
    return IngestSummary(str(lake), summaries, time.monotonic() - start)
