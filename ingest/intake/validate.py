"""Rows and quarantine rows from a block of lines, the steps both ingest paths share (events, pairs and hh in
ingest/intake/job.py; the foreign formats in ingest/intake/formats/batch.py): parse and validate a block (Arrow where it can vouch
for the rows, else the per-line reference), drop repeated event ids, and turn bad rows into quarantine rows whose
raw line holds no user id in the clear.

    rows, bad = parse_block(block, config, ctx, pseudonymize, summary)
    writer.write_quarantine(quarantine_rows(bad, summary, pseudonymize, scrub_pii))
"""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.compute as pc

from ingest.intake import arrow_path
from ingest.privacy import PiiCounts, Pseudonymizer, scrub_text
from ingest.intake.records import BadRow, RowContext, line_to_rows
from ingest.schema import FEEDBACK_SCHEMA, QUARANTINE_SCHEMA, Reason
from ingest.intake.sources import Block
from ingest.intake.summary import SourceSummary

BATCH_LINES = 10_000  # lines parsed (and their bad rows quarantined) at a time: memory stays flat under a flood


def parse_block(block: Block, config, ctx: RowContext, pseudonymize: Pseudonymizer,
                summary: SourceSummary) -> tuple[pa.Table | None, list]:
    """A block to (accepted rows in line order, [(line, raw, BadRow)]); `config` is the run's IngestConfig
    (its format, vectorized, max_text_chars and scrub_pii are read)."""
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


def drop_repeated_ids(rows: pa.Table, seen: set[str], block) -> tuple[pa.Table, list]:
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


def quarantine_rows(bad: list, summary: SourceSummary, pseudonymize: Pseudonymizer, scrub_pii: bool) -> pa.Table:
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
