"""`--format otel-genai`: OTLP/JSON spans and log records of the OpenTelemetry GenAI instrumentations.

Each line is one export request as the Collector's file exporter writes it: `{"resourceSpans": [...]}`
or `{"resourceLogs": [...]}` (or one bare log record). A generation is read from whichever of these
variants carries its content (tests/data/formats/otel/README.md cites the source of each):

- current conventions (>= 1.37): span attributes, or the `gen_ai.client.inference.operation.details`
  log record (capture mode EVENT_ONLY), with `gen_ai.input.messages` / `gen_ai.output.messages` (text
  `parts`, structured or as JSON strings) and `gen_ai.system_instructions`;
- conventions 1.28-1.36 (openai-v2's default mode): a content-less span and its log records
  `gen_ai.{system,user,assistant}.message` (`body.content`) and `gen_ai.choice` (`body.message`), joined
  by the span id across lines and sources; the span, wherever it is in the run, adds model and response id
  (a rating in the choice's own line, or in a later run, sees only what came before the choice);
- OpenLLMetry before the current conventions: `gen_ai.prompt.{i}.role/content`, `gen_ai.completion.0.*`;
- conventions <= 1.27: span events `gen_ai.content.prompt` / `gen_ai.content.completion` holding the
  OpenAI messages as JSON strings in `gen_ai.prompt` / `gen_ai.completion`.

The answer is the first output message (choice 0); `gen_ai.system_instructions`' text parts are separate
instructions, joined with a newline; a message's text parts are fragments of one text, joined as they are.
Anything else a message holds (images, audio, files, tool calls and results, reasoning) cannot be held as
text: the generation is refused as `unsupported_content`. A record that carries content in none of these
shapes (one half missing, capture switched off) is `unknown_shape`, naming what is missing.
`gen_ai.conversation.id` is the conversation, `gen_ai.response.model` (else `gen_ai.request.model`) the
model, `user.id` (OpenLLMetry: `traceloop.association.properties.user_id`, `llm.user`) the user; the first
generation read for a span id wins (SPAN_AND_EVENT mode writes the same call twice).

A `gen_ai.evaluation.result` event, as a span event or as a log record, is a rating when its
`gen_ai.evaluation.name` is `--score-name`: `gen_ai.evaluation.score.value` is read against
`--up-at`/`--down-at`, else `gen_ai.evaluation.score.label` against `--up-values`/`--down-values`. It
rates the span whose `gen_ai.response.id` it names, else the span it belongs to (its parent span, or a
log record's `spanId`), in this line or any other source of the run. Its event id is a hash of the event
and its target; its time the event's `timeUnixNano`.
"""

from __future__ import annotations

import hashlib
import json

from ingest.intake.formats.base import Generation, Ignored, Rating, nanos_to_iso
from ingest.intake.records import MAX_DEPTH, TOO_DEEP, BadRow, describe, too_deep
from ingest.schema import Reason

EVALUATION = "gen_ai.evaluation.result"
DETAILS = "gen_ai.client.inference.operation.details"
CHOICE = "gen_ai.choice"
MESSAGES = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
            "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool"}
PROMPT_EVENT, COMPLETION_EVENT = "gen_ai.content.prompt", "gen_ai.content.completion"
# Attributes that say a span is a GenAI call, whose content log records may bring later.
_GENAI_MARKS = ("gen_ai.operation.name", "gen_ai.system", "gen_ai.provider.name")
_USER_KEYS = ("user.id", "traceloop.association.properties.user_id", "llm.user")
_INDEXED_MARKS = ("gen_ai.prompt.0.role", "gen_ai.prompt.0.content", "gen_ai.prompt.0.user", "gen_ai.completion.0.role",
                  "gen_ai.completion.0.content")
_NOT_GENERATIONS = ("embeddings", "embedding")  # gen_ai.operation.name / OpenLLMetry's llm.request.type
_ROLES = {"developer": "system"}  # OpenAI's name for the system role of its reasoning models
_PART_TYPES = {"blob", "file", "uri", "reasoning", "tool_call", "tool_call_response", "server_tool_call",
               "server_tool_call_response", "image", "image_url", "input_audio", "audio", "input_image",
               "input_file", "refusal", "tool_use", "tool_result", "document", "thinking"}


def value_of(value):
    """An OTLP AnyValue to Python."""
    if type(value) is not dict or len(value) != 1:
        return value
    for kind, inner in value.items():
        break
    if kind == "stringValue":  # by far the most common: tested first
        return inner
    if kind == "arrayValue":
        return [value_of(v) for v in (inner or {}).get("values", [])]
    if kind == "kvlistValue":
        return attributes((inner or {}).get("values", []))
    if kind == "intValue":
        try:
            return int(inner)  # OTLP/JSON writes 64-bit integers as strings
        except (TypeError, ValueError):
            raise BadRow(Reason.WRONG_TYPE, f"intValue: {describe(inner)} is not an integer") from None
    return inner


def attributes(items) -> dict:
    if not isinstance(items, list):
        raise BadRow(Reason.WRONG_TYPE, "attributes must be a list of {key, value}")
    return {a.get("key"): value_of(a.get("value")) for a in items if isinstance(a, dict)}


def _structured(value, name: str):
    if isinstance(value, str):  # the conventions allow a JSON string where structured values are not supported
        if too_deep(value.encode("utf-8", "surrogatepass")):
            raise BadRow(TOO_DEEP, f"{name} is a JSON string nested deeper than {MAX_DEPTH} levels")
        try:
            return json.loads(value)
        except ValueError:
            raise BadRow(Reason.WRONG_TYPE, f"{name} is a string that is not JSON") from None
    return value


# -- content: what thumbs can hold as text, and what it refuses ----------------------------------------------

def _unsupported(kind, what: str) -> BadRow:
    name = repr(kind) if isinstance(kind, str) and kind in _PART_TYPES else "a part of another type"
    return BadRow(Reason.UNSUPPORTED_CONTENT, f"{what} holds {name}, which thumbs cannot hold as text")


def _parts_text(parts, what: str, sep: str = "") -> str:
    """The conventions' `parts` to text: the text parts' `content` joined by `sep`; any other part refused."""
    if not isinstance(parts, list):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{what} has no list of parts ({describe(parts)})")
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            if kind is None:
                raise BadRow(Reason.UNKNOWN_SHAPE, f"{what}: a part has no type")
            raise _unsupported(kind, what)
        text = part.get("content")
        if not isinstance(text, str):
            raise BadRow(Reason.UNKNOWN_SHAPE, f"{what}: a text part's content is {describe(text)}")
        texts.append(text)
    return sep.join(texts)


def _openai_content(content, what: str) -> str:
    """An OpenAI message's `content` to text: a string, or its text parts (`{type: text, text}`) joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{what} is {describe(content)}, not text or a list of parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind is None or kind == "text":
            raise BadRow(Reason.UNKNOWN_SHAPE, f"{what}: a part is not {{type: text, text: string}}")
        else:
            raise _unsupported(kind, what)
    return "".join(texts)


def _role(role):
    return _ROLES.get(role, role) if isinstance(role, str) else role  # anything else: the validator names it


def _openai_message(message, what: str) -> dict:
    """One OpenAI-format message (conventions <= 1.27, OpenLLMetry's JSON) to {role, content}."""
    if not isinstance(message, dict):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{what} is {describe(message)}, not a message")
    role = message.get("role")
    if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
        raise _unsupported("tool_call" if role not in ("tool", "function") else "tool_call_response", what)
    if message.get("content") is None:
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{what} has no content")
    return {"role": _role(role), "content": _openai_content(message["content"], f"{what}.content")}


def _parts_message(message, what: str) -> dict:
    """One message of `gen_ai.input.messages` / `gen_ai.output.messages` to {role, content}."""
    if not isinstance(message, dict):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{what} is {describe(message)}, not a message")
    role = message.get("role")
    if role == "tool":
        raise _unsupported("tool_call_response", what)
    if "parts" not in message and isinstance(message.get("content"), str):  # written by some before the schema
        return {"role": _role(role), "content": message["content"]}
    return {"role": _role(role), "content": _parts_text(message.get("parts"), f"{what}.parts")}


# -- the variants ------------------------------------------------------------------------------------------

def _current(attrs: dict, where: str) -> tuple[list, str]:
    """Prompt and answer from `gen_ai.input.messages` / `gen_ai.output.messages` (conventions >= 1.37)."""
    inputs = _structured(attrs.get("gen_ai.input.messages"), "gen_ai.input.messages")
    outputs = _structured(attrs.get("gen_ai.output.messages"), "gen_ai.output.messages")
    for value, name in ((inputs, "gen_ai.input.messages"), (outputs, "gen_ai.output.messages")):
        if not isinstance(value, list) or not value:
            raise BadRow(Reason.UNKNOWN_SHAPE, f"{where} has no {name} list ({describe(value)})")
    prompt = [_parts_message(m, f"gen_ai.input.messages[{i}]") for i, m in enumerate(inputs)]
    system = _structured(attrs.get("gen_ai.system_instructions"), "gen_ai.system_instructions")
    if system is not None:
        text = system if isinstance(system, str) else _parts_text(system, "gen_ai.system_instructions", "\n")
        prompt.insert(0, {"role": "system", "content": text})
    answer = _parts_message(outputs[0], "gen_ai.output.messages[0]")
    if answer["role"] not in (None, "assistant"):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"gen_ai.output.messages[0] has role {describe(answer['role'])}")
    return prompt, answer["content"]


def _indexed_content(attrs: dict, prefix: str):
    content = attrs.get(f"{prefix}.content")
    if isinstance(content, str) and content.startswith("[{"):  # OpenLLMetry writes a parts list as JSON
        try:
            content = json.loads(content)
        except ValueError:
            pass  # text that happens to open like JSON
    return content


def _indexed(attrs: dict) -> tuple[list, str]:
    """Prompt and answer from OpenLLMetry's `gen_ai.prompt.{i}.*` / `gen_ai.completion.0.*`."""
    prompt, i = [], 0
    while f"gen_ai.prompt.{i}.role" in attrs or f"gen_ai.prompt.{i}.content" in attrs:
        prefix = f"gen_ai.prompt.{i}"
        if f"{prefix}.tool_calls.0.name" in attrs:
            raise _unsupported("tool_call", prefix)
        if f"{prefix}.tool_call_id" in attrs:
            raise _unsupported("tool_call_response", prefix)
        message = {"role": attrs.get(f"{prefix}.role"), "content": _indexed_content(attrs, prefix)}
        prompt.append(_openai_message(message, prefix))
        i += 1
    if not prompt and "gen_ai.prompt.0.user" in attrs:  # the legacy completions API: one prompt string
        prompt = [{"role": "user", "content": _openai_content(attrs["gen_ai.prompt.0.user"], "gen_ai.prompt.0.user")}]
    if not prompt:
        raise BadRow(Reason.UNKNOWN_SHAPE, "span has gen_ai.completion.0.* but no gen_ai.prompt.0.role/content")
    if attrs.get("gen_ai.completion.0.finish_reason") == "content_filter":
        raise BadRow(Reason.EMPTY_COMPLETION, "gen_ai.completion.0 was withheld by the content filter")
    if "gen_ai.completion.0.tool_calls.0.name" in attrs:
        raise _unsupported("tool_call", "gen_ai.completion.0")
    content = _indexed_content(attrs, "gen_ai.completion.0")
    if content is None:
        content = attrs.get("gen_ai.completion.0.refusal")  # what the user was shown instead
    if content is None:
        raise BadRow(Reason.UNKNOWN_SHAPE, "span has gen_ai.prompt.* but no gen_ai.completion.0.content")
    return prompt, _openai_content(content, "gen_ai.completion.0.content")


def _content_events(events: dict) -> tuple[list, str]:
    """Prompt and answer from the `gen_ai.content.prompt` / `.completion` span events (conventions <= 1.27)."""
    found = []
    for name, key in ((PROMPT_EVENT, "gen_ai.prompt"), (COMPLETION_EVENT, "gen_ai.completion")):
        if name not in events:
            raise BadRow(Reason.UNKNOWN_SHAPE, f"span has no {name} event beside its {next(iter(events))} event")
        value = attributes(events[name].get("attributes") or []).get(key)
        if not isinstance(value, str):
            raise BadRow(Reason.UNKNOWN_SHAPE, f"{name} event's {key} is {describe(value)}, not a JSON string")
        found.append(_structured(value, key))
    messages, answer = found
    if not isinstance(messages, list) or not messages:
        raise BadRow(Reason.UNKNOWN_SHAPE, f"gen_ai.prompt is {describe(messages)}, not a list of messages")
    prompt = [_openai_message(m, f"gen_ai.prompt[{i}]") for i, m in enumerate(messages)]
    answer = answer[0] if isinstance(answer, list) and len(answer) >= 1 else answer
    message = _openai_message(answer, "gen_ai.completion[0]")
    if message["role"] not in (None, "assistant"):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"gen_ai.completion[0] has role {describe(message['role'])}")
    return prompt, message["content"]


def _span_content(attrs: dict, events: list) -> tuple[list, str] | None:
    """The span's prompt and answer in whichever variant carries them; None for a span without content."""
    if "gen_ai.input.messages" in attrs or "gen_ai.output.messages" in attrs:
        return _current(attrs, "span")
    if any(k in attrs for k in _INDEXED_MARKS):
        if attrs.get("gen_ai.operation.name") in _NOT_GENERATIONS or attrs.get("llm.request.type") in _NOT_GENERATIONS:
            return None  # OpenLLMetry writes an embedding call's inputs as gen_ai.prompt.{i}.content
        return _indexed(attrs)
    content = {e.get("name"): e for e in events if e.get("name") in (PROMPT_EVENT, COMPLETION_EVENT)}
    if content:
        return _content_events(content)
    if "gen_ai.prompt" in attrs or "gen_ai.completion" in attrs:
        raise BadRow(Reason.UNKNOWN_SHAPE, "span has gen_ai.prompt/gen_ai.completion as attributes; thumbs reads "
                                           "them on gen_ai.content.prompt/completion events")
    return None


def _generation(span_id, attrs: dict, prompt: list, completion: str, when: str | None) -> Generation:
    response_id = attrs.get("gen_ai.response.id")
    keys = ((f"span:{span_id}",) if isinstance(span_id, str) and span_id else ()) + (
        (f"resp:{response_id}",) if isinstance(response_id, str) and response_id else ())
    if not keys:
        raise BadRow(Reason.MISSING_FIELD, "generation has neither a spanId nor a gen_ai.response.id")
    user = next((attrs[k] for k in _USER_KEYS if attrs.get(k) is not None), None)
    return Generation(keys=keys, prompt=prompt, completion=completion, timestamp=when, user_id=user,
                      conversation_id=attrs.get("gen_ai.conversation.id"),
                      model_version=attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model"))


# -- the run's open calls: openai-v2's log records and their span, in any order, across lines ---------------

class _Call:
    __slots__ = ("messages", "refused")

    def __init__(self):
        self.messages: list[dict] = []
        self.refused = False  # its first problem was quarantined already; the rest of it is ignored


class _Calls:
    """Per run (kept on the parse context): log records waiting for their choice, spans waiting for their
    log records, generations from log records waiting for their span (which adds model and response id)."""

    def __init__(self):
        self.open: dict[str, _Call] = {}
        self.spans: dict[str, tuple[dict, object]] = {}  # span id -> (attributes, startTimeUnixNano)
        self.awaiting: dict[str, Generation] = {}


def _calls(ctx) -> _Calls:
    calls = getattr(ctx, "otel_calls", None)
    if calls is None:
        calls = ctx.otel_calls = _Calls()
    return calls


def _span_of(log: dict, name: str) -> str:
    span_id = log.get("spanId")
    if not isinstance(span_id, str) or not span_id:
        raise BadRow(Reason.MISSING_FIELD, f"{name} log record has no spanId: it belongs to no call")
    return span_id


def _body(log: dict, name: str) -> dict:
    body = value_of(log.get("body"))
    if not isinstance(body, dict):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{name} log record's body is {describe(body)}, not a map")
    return body


def _message(log: dict, name: str, ctx) -> list:
    span_id, calls = _span_of(log, name), _calls(ctx)
    call = calls.open.get(span_id)
    if call is None:
        call = calls.open[span_id] = _Call()
    elif call.refused:
        return []
    try:
        body = log.get("body")
        if body is None:  # how openai-v2 writes a message when content capture is off
            raise BadRow(Reason.UNKNOWN_SHAPE, f"{name} has no body.content: content capture is off")
        body = _body(log, name)
        role = body.get("role") if isinstance(body.get("role"), str) else MESSAGES[name]
        if role == "tool" or body.get("tool_calls"):
            raise _unsupported("tool_call_response" if role == "tool" else "tool_call", name)
        if body.get("content") is None:
            raise BadRow(Reason.UNKNOWN_SHAPE, f"{name} has no body.content: content capture is off")
        call.messages.append({"role": _role(role),
                              "content": _openai_content(body["content"], f"{name} body.content")})
    except BadRow:
        call.refused = True
        raise
    return []


def _record_time(log: dict) -> str | None:
    nanos = log.get("timeUnixNano")
    if nanos in (None, "0", 0):
        nanos = log.get("observedTimeUnixNano")
    return None if nanos in (None, "0", 0) else nanos_to_iso(nanos, "timeUnixNano")


def _choice(log: dict, ctx) -> list:
    span_id, calls = _span_of(log, CHOICE), _calls(ctx)
    body = _body(log, CHOICE)
    if body.get("index", 0) != 0:
        return []  # the first choice is the answer
    call = calls.open.pop(span_id, None)
    if call is not None and call.refused:
        return []
    message = body.get("message")
    if not isinstance(message, dict):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{CHOICE} has no body.message")
    if message.get("tool_calls"):
        raise _unsupported("tool_call", f"{CHOICE} body.message")
    if message.get("content") is None:
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{CHOICE} has no body.message.content: content capture is off")
    if call is None or not call.messages:
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{CHOICE} came with no gen_ai.*.message record of its span before it")
    completion = _openai_content(message["content"], f"{CHOICE} body.message.content")
    if ctx.index.get(f"span:{span_id}") is not None:
        return []  # the same call, read already from another record
    span = calls.spans.pop(span_id, None)
    if span is None:
        gen = _generation(span_id, {}, call.messages, completion, _record_time(log))
        calls.awaiting[span_id] = gen
    else:
        attrs, start = span
        gen = _generation(span_id, attrs, call.messages, completion, nanos_to_iso(start, "startTimeUnixNano"))
    return [gen]


def _bare_span(span: dict, span_id, attrs: dict, ctx) -> None:
    """A GenAI span without content: its log records have brought it already, or will."""
    if not isinstance(span_id, str) or not span_id or not any(k in attrs for k in _GENAI_MARKS):
        return
    calls = _calls(ctx)
    gen = calls.awaiting.pop(span_id, None)
    if gen is None:
        if ctx.index.get(f"span:{span_id}") is None:
            calls.spans[span_id] = (attrs, span.get("startTimeUnixNano"))
        return
    more = _generation(span_id, attrs, gen.prompt, gen.completion,
                       nanos_to_iso(span.get("startTimeUnixNano"), "startTimeUnixNano"))
    gen.timestamp, gen.model_version = more.timestamp, more.model_version
    gen.user_id, gen.conversation_id = more.user_id, more.conversation_id
    if more.keys != gen.keys:  # its response id: ratings of this run that name it find it at the end
        gen.keys = more.keys
        ctx.index.add(gen)


# -- records -----------------------------------------------------------------------------------------------

def parse(record: dict, raw: bytes, ctx) -> list:
    out: list = []
    if "resourceSpans" in record:
        for scope in _each(record, "resourceSpans", "scopeSpans"):
            for span in _list(scope, "spans"):
                out.extend(_guard(_span, span, ctx))
    elif "resourceLogs" in record:
        for scope in _each(record, "resourceLogs", "scopeLogs"):
            for log in _list(scope, "logRecords"):
                out.extend(_guard(_log, log, ctx))
    elif "attributes" in record:  # one log record on its own (also how quarantine keeps a rating)
        out.extend(_log(record, raw, ctx))
    else:
        raise BadRow(Reason.MISSING_FIELD, "line has no resourceSpans or resourceLogs")
    return out


def _list(record, name):
    if not isinstance(record, dict):
        raise BadRow(Reason.NOT_AN_OBJECT, f"an item holding {name} is not an object")
    value = record.get(name) or []
    if not isinstance(value, list):
        raise BadRow(Reason.WRONG_TYPE, f"{name} must be a list")
    return value


def _each(record, outer, inner):
    for resource in _list(record, outer):
        yield from _list(resource, inner)


def _guard(fn, item, ctx):
    raw = item  # serialised only if quarantine needs it
    try:
        if not isinstance(item, dict):
            raise BadRow(Reason.NOT_AN_OBJECT, "a span or log record is not an object")
        return fn(item, raw, ctx)
    except BadRow as bad:
        return [(bad, raw)]
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:  # one record, not its whole batch
        return [(BadRow(Reason.WRONG_TYPE, f"record is not in the OTLP shape ({type(err).__name__})"), raw)]


def _span(span: dict, raw: bytes, ctx) -> list:
    attrs = attributes(span.get("attributes") or [])
    span_id = span.get("spanId")
    events = [e for e in span.get("events") or [] if isinstance(e, dict)]
    content = _span_content(attrs, events)
    out: list = []
    if content is None:
        _bare_span(span, span_id, attrs, ctx)
    else:
        if not isinstance(span_id, str) or not span_id:
            raise BadRow(Reason.MISSING_FIELD, "GenAI span has no spanId")
        when = nanos_to_iso(span.get("startTimeUnixNano"), "startTimeUnixNano")
        if ctx.index.get(f"span:{span_id}") is None:  # else the same call, read already from its log record
            out.append(_generation(span_id, attrs, *content, when))
    for event in events:
        if event.get("name") == EVALUATION:
            # kept as the log record it would be, so that quarantine holds a rating that stands on its own
            as_log = {"traceId": span.get("traceId"), "spanId": span_id, "timeUnixNano": event.get("timeUnixNano"),
                      "eventName": EVALUATION, "attributes": event.get("attributes") or []}
            out.extend(_guard(_log, as_log, ctx))
    return out


def _log(log: dict, raw: bytes, ctx) -> list:
    name, attrs = log.get("eventName"), None
    if not name:  # the Events API of SDKs before 1.37 wrote the name as an attribute
        attrs = attributes(log.get("attributes") or [])
        name = attrs.get("event.name")
    if not isinstance(name, str):
        return []
    if name in MESSAGES:
        return _message(log, name, ctx)
    if name == CHOICE:
        return _choice(log, ctx)
    if name == EVALUATION:
        return _evaluation(log, attrs if attrs is not None else attributes(log.get("attributes") or []), raw, ctx)
    if name == DETAILS:
        return _details(log, attrs if attrs is not None else attributes(log.get("attributes") or []), ctx)
    return []


def _details(log: dict, attrs: dict, ctx) -> list:
    """EVENT_ONLY capture: the call's content and attributes on one log record in the span's context."""
    span_id = log.get("spanId")
    if "gen_ai.input.messages" not in attrs and "gen_ai.output.messages" not in attrs:
        return []  # content captured on the span only (SPAN_ONLY with events on), or not at all
    prompt, completion = _current(attrs, DETAILS)
    if isinstance(span_id, str) and span_id:
        calls = _calls(ctx)
        calls.spans.pop(span_id, None)
        if ctx.index.get(f"span:{span_id}") is not None:
            return []  # SPAN_AND_EVENT: the span brought it already
    return [_generation(span_id, attrs, prompt, completion, _record_time(log))]


def _evaluation(log: dict, attrs: dict, raw, ctx) -> list:
    name = attrs.get("gen_ai.evaluation.name")
    if not isinstance(name, str) or not name:
        raise BadRow(Reason.MISSING_FIELD, "gen_ai.evaluation.result has no gen_ai.evaluation.name")
    if name != ctx.options.score_name:
        return [Ignored(name)]
    response_id, span_id = attrs.get("gen_ai.response.id"), log.get("spanId")
    if isinstance(response_id, str) and response_id:
        target = f"resp:{response_id}"
    elif isinstance(span_id, str) and span_id:
        target = f"span:{span_id}"
    else:
        raise BadRow(Reason.MISSING_FIELD, "evaluation names no gen_ai.response.id and belongs to no span")
    value, what = attrs.get("gen_ai.evaluation.score.value"), "gen_ai.evaluation.score.value"
    if value is None:
        value, what = attrs.get("gen_ai.evaluation.score.label"), "gen_ai.evaluation.score.label"
    if value is None:
        raise BadRow(Reason.MISSING_FIELD, "evaluation has neither score.value nor score.label")
    desirable = ctx.options.decide(value, what)
    when = nanos_to_iso(log.get("timeUnixNano"), "timeUnixNano")
    event_id = "otel-" + hashlib.sha256(f"{target}\x1f{log.get('timeUnixNano')}\x1f{name}\x1f{value!r}".encode()
                                        ).hexdigest()[:32]
    return [Rating(event_id, target, desirable, when, raw)]
