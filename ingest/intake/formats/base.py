"""What every foreign format is read into, before it becomes a thumbs event.

A format's parser turns one JSON line into items:

- `Event`: a whole thumbs event record already (TRL rows, OpenAI completions with their thumbs);
- `Generation`: a model answer that ratings may point at, under one or more join keys;
- `Rating`: a thumbs on the generation with key `target`, from this line or any other of the run;
- `Trace`: the user and session of a Langfuse trace, for its observations;
- `Ignored`: a score of another name (an LLM-as-judge metric, say), counted by name, not stored;
- `Unrated`: a record that could have carried a thumbs and carries none;
- `BadRow`: a record that breaks its format's shape (quarantined with the reason).

A rating and its generation become one record of the thumbs `events` contract (`event_record`), and that
record goes through the same validation as `--format events`: nothing here decides what a valid event is.
Messages and answers are normalised from each tool's shapes to `{role, content}` and plain text first
(`to_messages`, `to_text`); anything they cannot read is passed on unchanged, so the validator names it.
`to_text` keeps text parts only, so a reader first asks `non_text` whether a message holds anything else (an
image, audio, a file, a tool call): such a record is refused as `unsupported_content`, never stored without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ingest.intake.records import BadRow, describe
from ingest.schema import Reason

_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "system": "system",
          "developer": "system"}
_LANGCHAIN_CLASSES = {"HumanMessage": "user", "AIMessage": "assistant", "SystemMessage": "system",
                      "HumanMessageChunk": "user", "AIMessageChunk": "assistant"}
_TEXT_PARTS = ("text", "input_text", "output_text")
# Content parts and message fields the tools use for what is not text; named in quarantine details (any other
# part type is described, never quoted: a detail names fields, not values).
_NON_TEXT_PARTS = ("image_url", "input_image", "image", "input_audio", "audio", "file", "input_file", "document",
                   "video", "refusal", "tool_use", "tool_result", "tool_call", "thinking", "reasoning")
_NON_TEXT_FIELDS = ("tool_calls", "invalid_tool_calls", "tool_call_chunks", "function_call", "audio", "refusal")


@dataclass(slots=True)
class Event:
    record: dict  # a `--format events` record
    raw: bytes | dict  # what quarantine keeps if the record is refused (a nested record: the object)


@dataclass(slots=True)
class Generation:
    keys: tuple[str, ...]  # the ids a rating may name, e.g. ("obs:<id>",)
    prompt: Any  # normalised messages, or whatever the source held
    completion: Any
    timestamp: str | None = None  # ISO-8601, used when the rating has none
    user_id: Any = None
    conversation_id: Any = None
    model_version: Any = None
    trace: str | None = None  # Langfuse trace id whose user and session fill the gaps
    weak: str | None = None  # a trace-level key it answers for when the trace has no output of its own
    rank: str = ""  # of two generations under one weak key, the higher rank (start time) wins
    origin: int = -1  # index of the run's source that holds it
    used: bool = False  # some rating reached it
    refused: BadRow | None = None  # why no rating on it can become an event (an image in its prompt, say)
    awaiting: bool = False  # a part that brings its model, user and time is still to come (an OTel span after
    # its log records): its ratings wait for it (`Completed`), or for the end of the run


@dataclass(slots=True)
class Rating:
    event_id: str
    target: str  # a Generation key
    desirable: bool
    timestamp: str | None
    raw: bytes | dict  # the rating on its own: a line, or a nested record as an object
    user_id: Any = None  # who rated, when the rating says so; else the generation's user


@dataclass(slots=True)
class Trace:
    """A Langfuse trace's user and session, which its observations (maybe in other lines) lack."""
    trace_id: str
    user_id: Any
    session_id: Any


@dataclass(slots=True)
class Ignored:
    name: str


@dataclass(slots=True)
class Unrated:
    pass


@dataclass(slots=True)
class Completed:
    """An awaiting generation whose missing part has come: its ratings can become events now."""
    gen: Generation


def event_record(rating: Rating, gen: Generation) -> dict:
    """The `--format events` record of a rating on a generation."""
    record = {"event_id": rating.event_id, "timestamp": rating.timestamp or gen.timestamp,
              "prompt": gen.prompt, "completion": gen.completion, "label": rating.desirable}
    for name, value in (("user_id", rating.user_id if rating.user_id is not None else gen.user_id),
                        ("conversation_id", gen.conversation_id), ("model_version", gen.model_version)):
        if value is not None:
            record[name] = value
    return record


def require(record: dict, name: str, what: str) -> Any:
    value = record.get(name)
    if value is None or value == "":
        raise BadRow(Reason.MISSING_FIELD, f"{what} has no {name}")
    return value


def require_str(record: dict, name: str, what: str) -> str:
    value = require(record, name, what)
    if not isinstance(value, str):
        raise BadRow(Reason.WRONG_TYPE, f"{what} {name} must be a string, got {type(value).__name__}")
    return value


def optional_str(record: dict, name: str, what: str) -> str | None:
    value = record.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRow(Reason.WRONG_TYPE, f"{what} {name} must be a string, got {type(value).__name__}")
    return value


# Unix minutes recently written as ISO-8601 ("2025-11-20T00:53:"): an OTel call's records share their minute
# with those of the calls around it, and a datetime per record was a third of reading them. Emptied when full.
_ISO_MINUTES: dict[int, str] = {}
_ISO_MINUTES_KEPT = 4096
# Below 2**31 s a double holds unix seconds to within 0.12 µs, so the datetime path (a float) rounds to the
# exact microsecond: the integer path below writes the same text. Beyond it (year 2038) the datetime path.
_EXACT_BELOW = 1 << 31


def nanos_to_iso(value: Any, what: str) -> str:
    """OTLP's unix nanoseconds (a JSON string or number) to ISO-8601 UTC, microseconds kept."""
    try:
        nanos = int(value)
    except (TypeError, ValueError):
        raise BadRow(Reason.BAD_TIMESTAMP, f"{what}: {describe(value)} is not unix nanoseconds") from None
    seconds, micros = divmod(nanos // 1000, 1_000_000)
    if 0 <= seconds < _EXACT_BELOW:
        minutes, second = divmod(seconds, 60)  # UTC minutes are 60 s each (unix time has no leap seconds)
        head = _ISO_MINUTES.get(minutes)
        if head is None:
            if len(_ISO_MINUTES) >= _ISO_MINUTES_KEPT:
                _ISO_MINUTES.clear()
            head = _ISO_MINUTES[minutes] = datetime.fromtimestamp(minutes * 60, timezone.utc).isoformat()[:-8]
        # as isoformat writes it: no fraction when the microseconds are 0
        return f"{head}{second:02d}.{micros:06d}+00:00" if micros else f"{head}{second:02d}+00:00"
    try:
        return datetime.fromtimestamp(nanos // 1000 / 1e6, timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):
        raise BadRow(Reason.BAD_TIMESTAMP, f"{what}: {describe(value)} is out of range") from None


def seconds_to_iso(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRow(Reason.BAD_TIMESTAMP, f"{what}: {describe(value)} is not unix seconds")
    try:
        return datetime.fromtimestamp(value, timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):
        raise BadRow(Reason.BAD_TIMESTAMP, f"{what}: {describe(value)} is out of range") from None


def to_text(content: Any) -> Any:
    """A message's content to plain text: a string, or the text parts of a parts list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
                text = part.get("text", part.get("content"))
                if isinstance(text, str):
                    texts.append(text)
        if texts:
            return "".join(texts)
    return content


def to_message(message: Any) -> Any:
    """One message in any of the tools' shapes to {role, content}; unknown shapes pass unchanged."""
    if not isinstance(message, dict):
        return message
    if message.get("lc") == 1 and isinstance(message.get("kwargs"), dict):  # LangChain's serialised message
        cls = message.get("id", [""])[-1] if isinstance(message.get("id"), list) else ""
        kwargs = message["kwargs"]
        role = _LANGCHAIN_CLASSES.get(cls) or _ROLES.get(kwargs.get("type"), kwargs.get("type"))
        return {"role": role, "content": to_text(kwargs.get("content"))}
    role = message.get("role", message.get("type"))
    content = message["parts"] if "parts" in message and "content" not in message else message.get("content")
    return {"role": _ROLES.get(role, role) if isinstance(role, str) else role, "content": to_text(content)}


def to_messages(value: Any) -> Any:
    """A prompt: a string stays a string (one user message); a list of messages is normalised."""
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], list):  # LangChain batches: [[message, ...]]
            value = value[0]
        return [to_message(m) for m in value]
    return value


def to_completion(value: Any) -> Any:
    """An answer to plain text, from a string, a message, a one-message list or an OpenAI/LangChain output."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        if isinstance(value.get("choices"), list) and value["choices"]:  # an OpenAI response
            return to_completion(value["choices"][0].get("message") if isinstance(value["choices"][0], dict)
                                 else value["choices"][0])
        if isinstance(value.get("generations"), list) and value["generations"]:  # LangChain LLMResult
            first = value["generations"][0]
            first = first[0] if isinstance(first, list) and first else first
            if isinstance(first, dict):
                return to_completion(first.get("message") or first.get("text"))
        if "messages" in value and isinstance(value["messages"], list) and value["messages"]:
            return to_completion(value["messages"][-1])
        message = to_message(value)
        if isinstance(message, dict) and message.get("role") in (None, "assistant"):
            return message.get("content")
    return value


def non_text(value: Any, where: str) -> str | None:
    """What in a prompt or an answer, in any of the tools' shapes, is not text (an image or audio part, a file,
    a tool call, a refusal), named by where it sits; None when all of it is text. For `unsupported_content`."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = non_text(item, f"{where}[{i}]")
            if found:
                return found
        return None
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("choices"), list) and value["choices"]:  # an OpenAI response: its first choice
        return non_text(value["choices"][0], f"{where}.choices[0]")
    if isinstance(value.get("generations"), list):  # a LangChain LLMResult
        return non_text(value["generations"], f"{where}.generations")
    for name in ("message", "messages", "kwargs", "additional_kwargs"):  # a choice, a chat, LangChain's forms
        found = non_text(value.get(name), f"{where}.{name}")
        if found:
            return found
    for name in _NON_TEXT_FIELDS:
        if value.get(name):
            return f"{where}.{name}"
    for name in ("content", "content_parts", "parts"):
        parts = value.get(name)
        if isinstance(parts, list):
            for j, part in enumerate(parts):
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(part, str) or kind in _TEXT_PARTS:
                    continue
                named = kind if kind in _NON_TEXT_PARTS else describe(kind)
                return f"{where}.{name}[{j}] (part type {named})"
    return None
