"""The vectorised path for `events` sources: parse a block of lines with Arrow, accept what is clean.

Arrow's JSON reader parses a block of lines in C++ in a fraction of what `json.loads` per line costs.
This path is conservative by construction: it accepts only rows that `ingest/intake/records.py` would accept
(and builds the same output for them); every other row, or the whole block when Arrow cannot type it
(mixed types, blank lines, invalid UTF-8, metadata objects), goes back to the per-line path, which
decides and explains. A test feeds the hostile corpus through both and compares the lake.
"""

from __future__ import annotations

import io
import re
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ingest.privacy import PiiCounts, Pseudonymizer, scrub_array_counted
from ingest.intake.records import deep_lines
from ingest.schema import DOWN_LABELS, FEEDBACK_SCHEMA, MESSAGE_TYPE, ROLES, UP_LABELS
from ingest.intake.sources import UTF8_BOM

_STRING_FIELDS = ("event_id", "timestamp", "completion", "user_id", "conversation_id", "model_version")
_PARSE = pj.ParseOptions(
    explicit_schema=pa.schema([(name, pa.string()) for name in _STRING_FIELDS]),
    unexpected_field_behavior="infer",  # prompt and label vary in type; extra fields are ignored later
    newlines_in_values=False,
)
# Arrow parses its blocks on all cores; a line longer than one fails the block, which then goes per line.
_ARROW_BLOCK = 1 << 20


def _without_deep_lines(block: bytes) -> bytes:
    """The block with each line nested deeper than records.MAX_DEPTH replaced by `{}`: Arrow's reader and
    validation recurse per level and crash the process near 10,000 levels. `{}` keeps the row count and
    fails every required field, so the per-line path gets that line and quarantines it."""
    deep = deep_lines(block)
    if not deep:
        return block
    lines = block.split(b"\n")
    for i in deep:
        lines[i] = b"{}"
    return b"\n".join(lines)


def _read(block: bytes, n_lines: int) -> pa.Table | None:
    # Arrow skips blank lines and reads two objects on one line as two rows: line numbers would drift, and
    # one of each in a block would even keep the row count. A block with a blank line goes per line.
    if _has_blank_line(block) or block.startswith(UTF8_BOM):  # Arrow skips a BOM there; elsewhere it is bad JSON
        return None
    try:
        table = pj.read_json(io.BytesIO(block), read_options=pj.ReadOptions(block_size=_ARROW_BLOCK),
                             parse_options=_PARSE)
        # Arrow's JSON reader checks neither the UTF-8 of string values nor that of key names: an invalid
        # byte would reach Parquet (values) or crash later (names). Full validation checks the values.
        table.validate(full=True)
        if not _names_are_utf8(list(table.schema)):
            return None
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    return table if table.num_rows == n_lines else None


_BLANK_INNER_LINE = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")  # starts with a literal: as fast as counting lines


def _has_blank_line(block: bytes) -> bool:
    """Whether a line is empty or whitespace only (what `records.line_to_rows` calls blank)."""
    first, last = block.find(b"\n"), block.rfind(b"\n")
    head, tail = block[:first] if first >= 0 else block, block[last + 1:]
    return not head.strip() or not tail.strip() or _BLANK_INNER_LINE.search(block) is not None


def _names_are_utf8(fields) -> bool:
    """Whether every field name here and in nested structs and lists is valid UTF-8."""
    for f in fields:
        try:
            f.name
        except UnicodeDecodeError:
            return False
        t = f.type
        while pa.types.is_list(t) or pa.types.is_large_list(t):
            t = t.value_type
        if pa.types.is_struct(t) and not _names_are_utf8(list(t)):
            return False
    return True


def _prompt_column(prompt: pa.ChunkedArray, ok: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """(messages as PROMPT_TYPE, ok narrowed to rows with a valid prompt), or None if untypeable."""
    prompt = prompt.combine_chunks()
    if pa.types.is_string(prompt.type) or pa.types.is_large_string(prompt.type):
        trimmed = pc.utf8_length(pc.utf8_trim_whitespace(prompt))
        ok = pc.and_(ok, pc.fill_null(pc.greater(trimmed, 0), False))
        n = len(prompt)
        messages = pa.StructArray.from_arrays(
            [pa.repeat("user", n).cast(pa.string()) if n else pa.array([], pa.string()), prompt.cast(pa.string())],
            fields=list(MESSAGE_TYPE))
        offsets = pa.array(range(n + 1), pa.int32())
        return pa.ListArray.from_arrays(offsets, messages), ok
    if not pa.types.is_list(prompt.type) or not pa.types.is_struct(prompt.type.value_type):
        return None
    item = prompt.type.value_type
    if item.get_field_index("role") < 0 or item.get_field_index("content") < 0:
        return None
    if item.field("role").type != pa.string() or item.field("content").type != pa.string():
        return None
    prompt = pc.fill_null(prompt, pa.scalar([], prompt.type))  # nulls already failed `ok`
    values = pc.list_flatten(prompt)
    role, content = pc.struct_field(values, "role"), pc.struct_field(values, "content")
    bad_message = pc.invert(pc.and_(pc.fill_null(pc.is_in(role, pa.array(ROLES)), False), pc.is_valid(content)))
    parents = pc.list_parent_indices(prompt)
    bad_rows = pc.filter(parents, bad_message)
    if len(bad_rows):
        has_bad_message = pc.is_in(pa.array(range(len(prompt)), pa.int64()), pc.cast(bad_rows, pa.int64()))
        ok = pc.and_(ok, pc.invert(has_bad_message))
    ok = pc.and_(ok, pc.greater(pc.list_value_length(prompt), 0))
    messages = pa.StructArray.from_arrays([role, content], fields=list(MESSAGE_TYPE))
    offsets = pc.subtract(prompt.offsets, prompt.offsets[0])  # list_flatten starts at the first offset
    return pa.ListArray.from_arrays(offsets, messages), ok


def _label_column(label: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """(desirable, label is valid), or None when the label type is not one this path knows."""
    if pa.types.is_boolean(label.type):
        return label, pc.is_valid(label)
    if pa.types.is_integer(label.type):
        return pc.equal(label, 1), pc.fill_null(pc.is_in(label, pa.array([1, -1], label.type)), False)
    if pa.types.is_string(label.type):
        folded = pc.utf8_lower(pc.utf8_trim_whitespace(label))
        up = pc.is_in(folded, pa.array(UP_LABELS))
        return up, pc.fill_null(pc.or_(up, pc.is_in(folded, pa.array(DOWN_LABELS))), False)
    return None


def _timestamp_column(ts: pa.Array) -> pa.Array | None:
    """ISO-8601 strings to UTC timestamps, all or nothing (naive means UTC), as `records.parse_timestamp`."""
    for target in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            out = pc.cast(ts, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return out if target.tz else pc.assume_timezone(out, "UTC")
    return None


# Python's datetime, which every later stage reads timestamps into, holds years 1-9999 only; Arrow's cast
# happily yields "10000-01-01" from "9999-12-31T23:59:59-01:00". Such rows go to the per-line path.
_TS_MIN = pa.scalar(datetime(1, 1, 1, tzinfo=timezone.utc), pa.timestamp("us", tz="UTC"))
_TS_MAX = pa.scalar(datetime.max.replace(tzinfo=timezone.utc), pa.timestamp("us", tz="UTC"))


def _timestamp_in_range(ts: pa.Array) -> pa.Array:
    inside = pc.and_(pc.greater_equal(ts, _TS_MIN), pc.less_equal(ts, _TS_MAX))
    return pc.fill_null(inside, False)


def _text_ok(texts: pa.Array, limit: int) -> pa.Array:
    return pc.fill_null(pc.less_equal(pc.utf8_length(texts), limit), True)


def _scrub_prompt(prompt: pa.ListArray, counts: PiiCounts) -> pa.ListArray:
    values = prompt.values
    content, found = scrub_array_counted(values.field("content"))
    counts.add(found)
    messages = pa.StructArray.from_arrays([values.field("role"), content], fields=list(MESSAGE_TYPE))
    return pa.ListArray.from_arrays(prompt.offsets, messages)


def parse_block(block: bytes, n_lines: int, first_line: int, source: str, max_text_chars: int,
                pseudonymize: Pseudonymizer, scrub_pii: bool, counts: PiiCounts | None = None):
    """Parse `n_lines` event lines. Returns (rows as FEEDBACK_SCHEMA, indices of lines left for the
    per-line path, e-mails masked, phones masked), or None when the whole block must go per line.
    With `scrub_pii`, every mask (secrets too) is also added to `counts` when given."""
    table = _read(_without_deep_lines(block), n_lines)
    if table is None:
        return None
    names = set(table.column_names)
    if not {"event_id", "timestamp", "prompt", "completion", "label"} <= names:
        return None
    if "metadata" in names and table.column("metadata").null_count != n_lines:
        return None  # an object's exact JSON text cannot be rebuilt from Arrow's struct
    col = {name: table.column(name).combine_chunks() for name in table.column_names}

    ok = pc.and_(pc.is_valid(col["event_id"]), pc.greater(pc.utf8_length(col["event_id"]), 0))
    for name in ("prompt", "completion", "timestamp", "label"):
        ok = pc.and_(ok, pc.is_valid(col[name]))
    ok = pc.fill_null(ok, False)
    timestamp = _timestamp_column(col["timestamp"])
    label = _label_column(col["label"])
    prompt = _prompt_column(table.column("prompt"), ok)
    if timestamp is None or label is None or prompt is None:
        return None
    desirable, label_ok = label
    prompt, ok = prompt
    ok = pc.and_(ok, _timestamp_in_range(timestamp))
    trimmed = pc.utf8_length(pc.utf8_trim_whitespace(col["completion"]))
    ok = pc.and_(ok, pc.and_(label_ok, pc.fill_null(pc.greater(trimmed, 0), False)))
    # Rows the per-line path treats specially (empty optional strings) or that are over a limit.
    for name in ("event_id", "completion", "user_id", "conversation_id", "model_version"):
        if name in col:
            ok = pc.and_(ok, _text_ok(col[name], max_text_chars))
            if name != "completion" and name != "event_id":
                ok = pc.and_(ok, pc.fill_null(pc.greater(pc.utf8_length(col[name]), 0), True))
    ok = pc.and_(ok, _content_ok(prompt, max_text_chars))
    ok = pc.fill_null(ok, False)

    keep = pc.filter(pa.array(range(n_lines), pa.int64()), ok)
    rest = pc.filter(pa.array(range(n_lines), pa.int64()), pc.invert(ok)).to_pylist()

    def take(array):
        return pc.take(array, keep)

    prompt_out, completion_out = take(prompt), take(col["completion"])
    masked = PiiCounts()
    if scrub_pii:
        prompt_out = _scrub_prompt(prompt_out, masked)
        completion_out, found = scrub_array_counted(completion_out)
        masked.add(found)
        if counts is not None:
            counts.add(masked)
    n = len(keep)

    def optional(name):
        return take(col[name]).cast(pa.string()) if name in col else pa.nulls(n, pa.string())

    user_id = optional("user_id")
    rows = pa.Table.from_arrays(
        [
            take(col["event_id"]),
            take(timestamp),
            pseudonymize.array(user_id) if user_id.null_count < n else user_id,
            optional("conversation_id"),
            optional("model_version"),
            prompt_out.cast(FEEDBACK_SCHEMA.field("prompt").type),
            completion_out,
            take(desirable),
            pa.nulls(n, pa.string()),
            pa.repeat(source, n).cast(pa.string()) if n else pa.array([], pa.string()),
            pc.add(keep, first_line),
        ],
        schema=FEEDBACK_SCHEMA,
    )
    return rows, rest, masked.emails, masked.phones


def _content_ok(prompt: pa.ListArray, limit: int) -> pa.Array:
    """False for rows with a prompt message over the limit."""
    content = prompt.values.field("content")
    too_long = pc.fill_null(pc.greater(pc.utf8_length(content), limit), False)
    n = len(prompt)
    if not pc.any(too_long).as_py():
        return pa.repeat(True, n) if n else pa.array([], pa.bool_())
    parents = pc.filter(pc.list_parent_indices(prompt), too_long)
    return pc.invert(pc.is_in(pa.array(range(n), pa.int64()), pc.cast(parents, pa.int64())))
