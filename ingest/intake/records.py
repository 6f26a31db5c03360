"""Validate one feedback record and turn it into a lake row: the per-line path, pure Python.

This is the reference for what a valid event is. The vectorised path (`ingest/intake/arrow_path.py`) only
accepts rows this module would accept, with the same output, and hands everything else back here.
Three source formats become events: `events` (the thumbs contract), `pairs` ({prompt, chosen,
rejected}) and `hh` (Anthropic HH-RLHF dialogues).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from ingest.schema import DOWN_LABELS, ROLES, UP_LABELS, Reason

FORMATS = ("events", "pairs", "hh", "trl-kto", "langfuse", "langsmith", "otel-genai", "openai")
FOREIGN_FORMATS = FORMATS[3:]  # read by ingest/intake/formats/ into events records

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_LAST_ANSWER = "\n\nAssistant:"

MAX_DEPTH = 128
"""JSON nested deeper than this (objects and arrays together) is quarantined before any parser sees it:
Python's json raises RecursionError near 1,000 levels, orjson refuses 1,024, and Arrow's reader crashes
the process (a segfault) near 10,000. No event format needs a tenth of this."""
TOO_DEEP = Reason.TOO_DEEP
_NOT_OPENINGS = bytes(b for b in range(256) if b not in b"[{\n")
_LONG_RUN = re.compile(rb"[^\n]{%d,}" % (MAX_DEPTH + 1))
# too_deep's tokens: a byte's code (0: not a token) and the bytes that are none, which it deletes.
_OPEN, _CLOSE, _QUOTE, _ESCAPED_QUOTE = 1, 2, 3, 4
_TOKENS = b'[]{}"'
_STEP = np.array([0, 1, -1, 0, 0], np.int8)  # depth change per token code
_SHORT = 1 << 16  # below this many bytes, two counts decide most lines before any numpy
# Bytes that may stand for an escaped quote (one the line does not hold): control bytes and non-ASCII.
_MARKERS = bytes(range(0, 32)) + bytes(range(127, 256))


def _token_tables(marker: int | None) -> tuple[bytes, bytes]:
    codes = bytearray(256)
    for byte, code in zip(_TOKENS, (_OPEN, _CLOSE, _OPEN, _CLOSE, _QUOTE)):
        codes[byte] = code
    keep = set(_TOKENS)
    if marker is not None:
        codes[marker] = _ESCAPED_QUOTE
        keep.add(marker)
    return bytes(codes), bytes(b for b in range(256) if b not in keep)


_TABLES = {None: _token_tables(None)}


class BadRow(Exception):
    """A record that breaks the contract; `reason` is its quarantine code."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class RowContext:
    """What every row of one source shares."""

    source: str
    max_text_chars: int
    pseudonymize: Callable[[str], str]
    scrub: Callable[[str], str] | None  # masks PII in a text, or None
    default_timestamp: datetime  # for derived events that carry none


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text `raw` nests arrays and objects deeper than `limit` (brackets in strings do
    not count). Any bytes get a verdict, invalid JSON too: a string opens at any quote outside one, a
    backslash in it escapes the next byte, and one left open runs to the end of the text.

    Cheap when the line has few brackets, which is nearly always: two counts. A long line (an OTLP batch)
    is scanned in C and numpy, never byte by byte in Python: backslash pairs are dropped (an escaped backslash
    escapes nothing else), each quote still behind a backslash becomes a marker byte, and what is left is cut
    to its tokens (brackets, quotes, markers); brackets count where the scan is outside a string."""
    if len(raw) <= limit or (len(raw) < _SHORT and raw.count(b"[") + raw.count(b"{") <= limit):
        return False
    marker = None
    if raw.find(b"\\") >= 0:  # one byte: memchr; the rare line with backslashes pays the two-byte searches
        raw = raw.replace(b"\\\\", b"")
        if b'\\"' in raw:
            marker = next((m for m in _MARKERS if raw.find(m) < 0), None)  # bytes.find of an int: one byte
            if marker is None:  # every byte value occurs in the line: no marker is free
                return _too_deep_bytewise(raw, limit)
            raw = raw.replace(b'\\"', bytes((marker,)))
    if marker not in _TABLES:
        _TABLES[marker] = _token_tables(marker)
    tokens = np.frombuffer(raw.translate(*_TABLES[marker]), np.uint8)
    if marker is None:  # an odd number of quotes up to a token: it is in a string
        outside = 1 - (np.cumsum(tokens == _QUOTE, dtype=np.int32) & 1)
    else:
        outside = ~_in_string(tokens)
    depth = np.cumsum(_STEP.take(tokens) * outside, dtype=np.int32)
    return int(depth.max(initial=0)) > limit


def _in_string(tokens: np.ndarray) -> np.ndarray:
    """Per token, whether it is in a string, where markers stand for quotes behind a backslash. A quote
    toggles in and out of a string; a marker is a quote in a string (escaped) or one that opens a string
    (a stray backslash outside it): either way, after a marker the scan is in a string."""
    quotes = tokens >= _QUOTE
    kinds = tokens[quotes]
    escaped = kinds == _ESCAPED_QUOTE
    toggles = np.cumsum(~escaped)
    last = np.maximum.accumulate(np.where(escaped, np.arange(len(kinds)), -1))  # the latest marker
    after_marker = last >= 0
    since = toggles - np.where(after_marker, toggles[np.maximum(last, 0)], 0)  # toggles since it
    in_after = after_marker ^ (since & 1).astype(bool)  # in a string after each quote or marker
    seen = np.cumsum(quotes)
    inside = np.zeros(len(tokens), bool)
    inside[seen > 0] = in_after[seen[seen > 0] - 1]
    return inside


def _too_deep_bytewise(raw: bytes, limit: int) -> bool:
    """too_deep's scan one byte at a time: for a line holding every byte value (no marker is free)."""
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif byte in b"]}":
            depth -= 1
    return False


def too_deep_row() -> BadRow:
    """The quarantine entry of a line `too_deep` refuses."""
    return BadRow(TOO_DEEP, f"JSON nested deeper than {MAX_DEPTH} levels of arrays and objects")


def deep_lines(block: bytes) -> list[int]:
    """Indices of the block's lines (newline-separated) that are `too_deep`. Only a line holding more than
    MAX_DEPTH opening brackets can be: found in C (keep the brackets and newlines, look for a long run)."""
    openings = block.translate(None, _NOT_OPENINGS)
    candidates, line, at = [], 0, 0
    for run in _LONG_RUN.finditer(openings):
        line += openings.count(b"\n", at, run.start())
        at = run.start()
        candidates.append(line)
    if not candidates:
        return []
    lines = block.split(b"\n")
    return [i for i in candidates if too_deep(lines[i])]


def describe(value: Any) -> str:
    """A value's JSON type and size, never its content: what a quarantine detail may say about a value
    (a label or a timestamp field may hold an e-mail address, a phone number or a key)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, float):
        return "a number with a fraction" if math.isfinite(value) else "a non-finite number"
    if isinstance(value, str):
        return f"a string of {len(value):,} chars"
    if isinstance(value, list):
        return f"a list of {len(value):,} items"
    if isinstance(value, dict):
        return f"an object of {len(value):,} keys"
    return f"a {type(value).__name__}"


def parse_label(value: Any) -> bool:
    """True for a thumbs-up, False for a thumbs-down; BadRow for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value in (1, -1):
            return value == 1
    elif isinstance(value, str):
        folded = value.strip().lower()
        if folded in UP_LABELS:
            return True
        if folded in DOWN_LABELS:
            return False
    raise BadRow(Reason.BAD_LABEL, f"label: {describe(value)} is not up/down or thumbs_up/thumbs_down (any case), "
                 "a JSON true/false, or the number 1/-1")


def parse_timestamp(value: Any) -> datetime:
    """ISO-8601 to an aware UTC datetime; a naive time is taken as UTC."""
    if not isinstance(value, str):
        raise BadRow(Reason.BAD_TIMESTAMP, f"timestamp must be an ISO-8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRow(Reason.BAD_TIMESTAMP, f"timestamp: {describe(value)} is not ISO-8601 "
                     "(such as 2026-11-20T03:12:45Z)") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # valid ISO-8601 whose UTC value leaves years 1-9999 ("9999-12-31T23:59:59-01:00")
        raise BadRow(Reason.BAD_TIMESTAMP, "timestamp: ISO-8601 outside years 1-9999 in UTC") from None


def parse_prompt(value: Any) -> list[dict[str, str]]:
    """A string becomes one user message; a list must hold {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise BadRow(Reason.BAD_PROMPT, "prompt is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadRow(Reason.BAD_PROMPT, f"prompt must be a string or a list of messages, got {type(value).__name__}")
    if not value:
        raise BadRow(Reason.BAD_PROMPT, "prompt has no messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise BadRow(Reason.BAD_PROMPT, f"prompt message {i} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise BadRow(Reason.BAD_PROMPT, f"prompt message {i}: role, {describe(role)}, is not one of {ROLES}")
        if not isinstance(content, str):
            raise BadRow(Reason.BAD_PROMPT, f"prompt message {i} has no string content")
        messages.append({"role": role, "content": content})
    return messages


def _optional_string(record: dict, name: str) -> str | None:
    value = record.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRow(Reason.WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
    return value


def _required(record: dict, name: str) -> Any:
    if name not in record or record[name] is None:
        raise BadRow(Reason.MISSING_FIELD, f"{name} is missing")
    return record[name]


def _check_text(text: str, what: str, ctx: RowContext) -> None:
    if len(text) > ctx.max_text_chars:
        raise BadRow(Reason.TEXT_TOO_LONG, f"{what} has {len(text):,} characters, over the limit of {ctx.max_text_chars:,}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRow(Reason.INVALID_UTF8, f"{what} holds a lone surrogate, not valid Unicode") from None


def build_row(*, event_id: Any, timestamp: datetime, prompt: list[dict[str, str]], completion: Any,
              desirable: bool, ctx: RowContext, line: int, user_id: str | None = None,
              conversation_id: str | None = None, model_version: str | None = None,
              metadata: str | None = None) -> dict:
    """Check the texts and assemble one row of FEEDBACK_SCHEMA."""
    if not isinstance(completion, str):
        raise BadRow(Reason.WRONG_TYPE, f"completion must be a string, got {type(completion).__name__}")
    if not completion.strip():
        raise BadRow(Reason.EMPTY_COMPLETION, "completion is empty")
    _check_text(completion, "completion", ctx)
    for message in prompt:
        _check_text(message["content"], "prompt", ctx)
    for name, value in (("event_id", event_id), ("user_id", user_id), ("conversation_id", conversation_id),
                        ("model_version", model_version), ("metadata", metadata)):
        if value is not None:
            _check_text(value, name, ctx)
    if ctx.scrub is not None:
        completion = ctx.scrub(completion)
        prompt = [{"role": m["role"], "content": ctx.scrub(m["content"])} for m in prompt]
    return {
        "event_id": event_id,
        "timestamp": timestamp,
        "user_id": ctx.pseudonymize(user_id) if user_id is not None else None,
        "conversation_id": conversation_id,
        "model_version": model_version,
        "prompt": prompt,
        "completion": completion,
        "desirable": desirable,
        "metadata": metadata,
        "source": ctx.source,
        "source_line": line,
    }


def event_to_row(record: Any, ctx: RowContext, line: int) -> dict:
    """One object of the thumbs event contract to one lake row."""
    if not isinstance(record, dict):
        raise BadRow(Reason.NOT_AN_OBJECT, f"line holds a JSON {type(record).__name__}, not an object")
    event_id = _required(record, "event_id")
    if not isinstance(event_id, str):
        raise BadRow(Reason.WRONG_TYPE, f"event_id must be a string, got {type(event_id).__name__}")
    if not event_id:
        raise BadRow(Reason.MISSING_FIELD, "event_id is empty")
    timestamp = parse_timestamp(_required(record, "timestamp"))
    prompt = parse_prompt(_required(record, "prompt"))
    completion = _required(record, "completion")
    if "label" not in record:
        raise BadRow(Reason.MISSING_FIELD, "label is missing")
    desirable = parse_label(record["label"])
    metadata = record.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRow(Reason.WRONG_TYPE, f"metadata must be an object, got {type(metadata).__name__}")
    return build_row(
        event_id=event_id, timestamp=timestamp, prompt=prompt, completion=completion, desirable=desirable,
        ctx=ctx, line=line, user_id=_optional_string(record, "user_id"),
        conversation_id=_optional_string(record, "conversation_id"),
        model_version=_optional_string(record, "model_version"),
        metadata=json.dumps(metadata, ensure_ascii=False) if metadata is not None else None,
    )


def split_hh_pair(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """An HH-RLHF pair to (the shared earlier turns as messages, chosen answer, rejected answer).

    Both dialogues are cut at the last '\n\nAssistant:' inside their common prefix. That is each one's
    last such marker, except where an answer itself contains the marker (5 of the 2,312 test pairs).
    """
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(_HH_LAST_ANSWER)
    if cut < 0:
        raise BadRow(Reason.BAD_PROMPT, "the two dialogues share no turn ending in '\n\nAssistant:'")
    head = chosen[:cut]
    start = cut + len(_HH_LAST_ANSWER)
    parts = _HH_TURN.split(head)
    messages = []
    if parts[0].strip():  # text before the first marker: treat it as the user speaking
        messages.append({"role": "user", "content": parts[0].strip()})
    for speaker, text in zip(parts[1::2], parts[2::2]):
        messages.append({"role": _HH_ROLES[speaker], "content": text.strip()})
    if not messages:
        raise BadRow(Reason.BAD_PROMPT, "dialogue has no turn before its answer")
    return messages, chosen[start:].strip(), rejected[start:].strip()


def _derived_id(raw: bytes, fmt: str, desirable: bool) -> str:
    # The raw line fixes the id: the same file ingested twice gives the same ids, a repeated line a repeat.
    return f"{fmt}-{hashlib.sha256(raw).hexdigest()[:32]}-{'d' if desirable else 'u'}"


def pair_to_events(record: Any, fmt: str, raw: bytes, ctx: RowContext, line: int) -> list[dict | BadRow]:
    """A `pairs` or `hh` record to its two events (desirable first); each is a row or a BadRow."""
    if not isinstance(record, dict):
        raise BadRow(Reason.NOT_AN_OBJECT, f"line holds a JSON {type(record).__name__}, not an object")
    chosen, rejected = _required(record, "chosen"), _required(record, "rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise BadRow(Reason.WRONG_TYPE, "chosen and rejected must be strings")
    timestamp = parse_timestamp(record["timestamp"]) if record.get("timestamp") is not None else ctx.default_timestamp
    if fmt == "hh":
        prompt, completion_d, completion_u = split_hh_pair(chosen, rejected)
    else:
        prompt = parse_prompt(_required(record, "prompt"))
        completion_d, completion_u = chosen, rejected
    out: list[dict | BadRow] = []
    for desirable, completion in ((True, completion_d), (False, completion_u)):
        try:
            out.append(build_row(event_id=_derived_id(raw, fmt, desirable), timestamp=timestamp, prompt=prompt,
                                 completion=completion, desirable=desirable, ctx=ctx, line=line))
        except BadRow as bad:
            out.append(bad)
    return out


def line_to_rows(raw: bytes, fmt: str, ctx: RowContext, line: int) -> list[dict | BadRow]:
    """One raw line to its rows (one for events, two for pairs and hh); errors come back as BadRow."""
    if not raw.strip():
        return [BadRow(Reason.BLANK_LINE, "line is blank")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return [BadRow(Reason.INVALID_UTF8, f"invalid UTF-8 at byte {err.start}")]
    if too_deep(raw):
        return [too_deep_row()]
    try:
        record = json.loads(text)
    except ValueError as err:  # JSONDecodeError, and the recursion guard's ValueError
        return [BadRow(Reason.MALFORMED_JSON, str(err)[:200])]
    except RecursionError:
        return [BadRow(Reason.MALFORMED_JSON, "JSON nested too deeply")]
    try:
        if fmt == "events":
            return [event_to_row(record, ctx, line)]
        return pair_to_events(record, fmt, raw, ctx, line)
    except BadRow as bad:
        return [bad]
