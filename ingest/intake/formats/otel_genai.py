"""`--format otel-genai`: OTLP/JSON spans and log records of the OpenTelemetry GenAI instrumentations.

Each line is one export request as the Collector's file exporter writes it: `{"resourceSpans": [...]}`
or `{"resourceLogs": [...]}` (or one bare log record). A generation is read from whichever of these
variants carries its content (tests/data/formats/otel/README.md cites the source of each; the content is read
by `otel_content`, the OTLP encoding by `otlp`):

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
text: the generation is kept as refused, and each rating of it (in its line, another file or a later run) is
`unsupported_content`, naming where the content sits. A record that carries content in none of these
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

from ingest.intake.formats.base import Completed, Generation, Ignored, Rating, nanos_to_iso
from ingest.intake.formats.otel_content import (current_messages, message_role, openai_content, refusal, refusing,
                                                span_content, unsupported)
from ingest.intake.formats.otlp import attributes, items, value_of
from ingest.intake.records import BadRow, describe
from ingest.schema import Reason

EVALUATION = "gen_ai.evaluation.result"
DETAILS = "gen_ai.client.inference.operation.details"
CHOICE = "gen_ai.choice"
MESSAGES = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
            "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool"}
# Attributes that say a span is a GenAI call, whose content log records may bring later.
_GENAI_MARKS = frozenset(("gen_ai.operation.name", "gen_ai.system", "gen_ai.provider.name"))
_USER_KEYS = ("user.id", "traceloop.association.properties.user_id", "llm.user")


# -- a call's generation -----------------------------------------------------------------------------------

def _generation(span_id, attrs: dict, content: tuple[list, str] | BadRow, when: str | None) -> Generation:
    """The generation of a call: its content, or the refusal `refusing` made of it."""
    response_id = attrs.get("gen_ai.response.id")
    keys = ((f"span:{span_id}",) if isinstance(span_id, str) and span_id else ()) + (
        (f"resp:{response_id}",) if isinstance(response_id, str) and response_id else ())
    if not keys:
        raise BadRow(Reason.MISSING_FIELD, "generation has neither a spanId nor a gen_ai.response.id")
    gen = Generation(keys=keys, prompt=None, completion=None, timestamp=when)
    if attrs:  # a call read from its log records before its span has none yet
        _describe_call(gen, attrs)
    if isinstance(content, BadRow):
        gen.refused = content
    else:
        gen.prompt, gen.completion = content
    return gen


def _describe_call(gen: Generation, attrs: dict) -> None:
    """The user, conversation and model of a call, from its span's (or details record's) attributes."""
    for key in _USER_KEYS:
        if attrs.get(key) is not None:
            gen.user_id = attrs[key]
            break
    gen.conversation_id = attrs.get("gen_ai.conversation.id")
    gen.model_version = attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model")


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
        if log.get("body") is None:  # how openai-v2 writes a message when content capture is off
            raise BadRow(Reason.UNKNOWN_SHAPE, f"{name} has no body.content: content capture is off")
        body = _body(log, name)
        role = body.get("role")
        if not isinstance(role, str):
            role = MESSAGES[name]
        if role == "tool" or body.get("tool_calls"):
            raise unsupported("tool_call_response" if role == "tool" else "tool_call", name)
        content = body.get("content")
        if content is None:
            raise BadRow(Reason.UNKNOWN_SHAPE, f"{name} has no body.content: content capture is off")
        if type(content) is not str:  # a list of parts
            content = openai_content(content, f"{name} body.content")
        call.messages.append({"role": message_role(role), "content": content})
    except BadRow as bad:
        call.refused = True  # its other records are ignored: the first problem speaks for the call
        return _call_generation(span_id, refusal(bad), log, ctx)
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
    return _call_generation(span_id, refusing(_choice_content, body, call), log, ctx)


def _choice_content(body: dict, call: _Call | None) -> tuple[list, str]:
    message = body.get("message")
    if not isinstance(message, dict):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{CHOICE} has no body.message")
    if message.get("tool_calls"):
        raise unsupported("tool_call", f"{CHOICE} body.message")
    if message.get("content") is None:
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{CHOICE} has no body.message.content: content capture is off")
    if call is None or not call.messages:
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{CHOICE} came with no gen_ai.*.message record of its span before it")
    return call.messages, openai_content(message["content"], f"{CHOICE} body.message.content")


def _call_generation(span_id: str, content, log: dict, ctx) -> list:
    """The generation of an openai-v2 call read from its log records: with its span's model and response id
    if the span came first, else waiting for it (`_bare_span`)."""
    if ctx.index.get(f"span:{span_id}") is not None:
        return []  # the same call, read already from another record
    calls = _calls(ctx)
    span = calls.spans.pop(span_id, None)
    if span is None:
        gen = _generation(span_id, {}, content, _record_time(log))
        gen.awaiting = True
        calls.awaiting[span_id] = gen
    else:
        attrs, start = span
        gen = _generation(span_id, attrs, content, nanos_to_iso(start, "startTimeUnixNano"))
    return [gen]


def _bare_span(span: dict, span_id, attrs: dict, ctx) -> list:
    """A GenAI span without content: its log records have brought it already (then it completes their
    generation: `Completed`), or will."""
    if not isinstance(span_id, str) or not span_id or _GENAI_MARKS.isdisjoint(attrs):
        return []
    calls = _calls(ctx)
    gen = calls.awaiting.pop(span_id, None)
    if gen is None:
        if ctx.index.get(f"span:{span_id}") is None:
            calls.spans[span_id] = (attrs, span.get("startTimeUnixNano"))
        return []
    gen.timestamp = nanos_to_iso(span.get("startTimeUnixNano"), "startTimeUnixNano")
    gen.user_id = None
    _describe_call(gen, attrs)
    response_id = attrs.get("gen_ai.response.id")
    if isinstance(response_id, str) and response_id:  # ratings of this run that name it find it at the end
        gen.keys = (f"span:{span_id}", f"resp:{response_id}")
        ctx.index.add(gen)
    gen.awaiting = False
    return [Completed(gen)]


# -- records -----------------------------------------------------------------------------------------------

def parse(record: dict, raw: bytes, ctx) -> list:
    out: list = []
    if "resourceSpans" in record:
        _read_each(_span, items(record, "resourceSpans", "scopeSpans", "spans"), ctx, out)
    elif "resourceLogs" in record:
        _read_each(_log, items(record, "resourceLogs", "scopeLogs", "logRecords"), ctx, out)
    elif "attributes" in record:  # one log record on its own (also how quarantine keeps a rating)
        out.extend(_log(record, raw, ctx))
    else:
        raise BadRow(Reason.MISSING_FIELD, "line has no resourceSpans or resourceLogs")
    return out


def _read_each(fn, records, ctx, out: list) -> None:
    """`_guard` over a batch's records, the call inlined (a batch line holds hundreds of them)."""
    for item in records:
        try:
            if not isinstance(item, dict):
                raise BadRow(Reason.NOT_AN_OBJECT, "a span or log record is not an object")
            found = fn(item, item, ctx)  # raw: the record itself, serialised only if quarantine needs it
        except BadRow as bad:
            found = [(bad, item)]
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
            found = [(BadRow(Reason.WRONG_TYPE, f"record is not in the OTLP shape ({type(err).__name__})"), item)]
        if found:
            out += found


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
    content = refusing(span_content, attrs, events)
    if content is None:
        out = _bare_span(span, span_id, attrs, ctx)
    else:
        out = []
        if not isinstance(span_id, str) or not span_id:
            raise BadRow(Reason.MISSING_FIELD, "GenAI span has no spanId")
        when = nanos_to_iso(span.get("startTimeUnixNano"), "startTimeUnixNano")
        if ctx.index.get(f"span:{span_id}") is None:  # else the same call, read already from its log record
            out.append(_generation(span_id, attrs, content, when))
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
    content = refusing(current_messages, attrs, DETAILS)
    if isinstance(span_id, str) and span_id:
        calls = _calls(ctx)
        calls.spans.pop(span_id, None)
        if ctx.index.get(f"span:{span_id}") is not None:
            return []  # SPAN_AND_EVENT: the span brought it already
    return [_generation(span_id, attrs, content, _record_time(log))]


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
