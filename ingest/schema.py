"""The one schema of the feedback lake, and the reason codes for rows that do not fit it.

Every later stage (curate, train, evaluate) reads these names; nothing else defines a column.
A thumbs-up is `desirable=True`, a thumbs-down `desirable=False`, from the Parquet column to the loss.
"""

from __future__ import annotations

import enum

import pyarrow as pa

ROLES = ("system", "user", "assistant")

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
PROMPT_TYPE = pa.list_(MESSAGE_TYPE)

FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_id", pa.string()),  # HMAC pseudonym, never the raw id
        pa.field("conversation_id", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("prompt", PROMPT_TYPE, nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("desirable", pa.bool_(), nullable=False),
        pa.field("metadata", pa.string()),  # the event's `metadata` object as JSON text
        pa.field("source", pa.string(), nullable=False),  # file name the row came from
        pa.field("source_line", pa.int64(), nullable=False),  # 1-based line in that file
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("raw", pa.binary(), nullable=False),  # bytes, since the line may not be UTF-8
    ]
)


# The label vocabulary, one home for both ingest paths (records.py per line, arrow_path.py per block): strings
# compared after strip + lower case; JSON booleans and the integers 1 / -1 are accepted as well.
UP_LABELS = ("up", "thumbs_up")
DOWN_LABELS = ("down", "thumbs_down")


class Reason(str, enum.Enum):
    """Why a line went to quarantine. The value is what the `reason` column holds."""

    MALFORMED_JSON = "malformed_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_PROMPT = "bad_prompt"
    BAD_LABEL = "bad_label"
    EMPTY_COMPLETION = "empty_completion"
    TEXT_TOO_LONG = "text_too_long"
    DUPLICATE_EVENT_ID = "duplicate_event_id"
    BLANK_LINE = "blank_line"
    ORPHAN_FEEDBACK = "orphan_feedback"  # a rating whose generation no source has brought (yet)
    TOO_DEEP = "too_deep"  # JSON nested deeper than records.MAX_DEPTH: refused before any parser recurses
    UNKNOWN_SHAPE = "unknown_shape"  # a record of the format whose shape matches none of the variants thumbs reads
    UNSUPPORTED_CONTENT = "unsupported_content"  # images, audio or tool calls thumbs cannot hold as text
