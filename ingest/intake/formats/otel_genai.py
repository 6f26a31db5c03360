"""`--format otel-genai`: OTLP/JSON spans that follow the OpenTelemetry GenAI semantic conventions.

Each line is one export request as the Collector's file exporter writes it: `{"resourceSpans": [...]}`
or `{"resourceLogs": [...]}` (or one bare log record). A span with `gen_ai.input.messages` or
`gen_ai.output.messages` is a generation: `gen_ai.system_instructions` and the input messages (their
text `parts`) become the prompt, the first output message the answer; `gen_ai.conversation.id` is the
conversation, `gen_ai.response.model` (else `gen_ai.request.model`) the model version, `user.id` the
user. Attributes may hold the messages as structured values or as JSON strings.

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

from ingest.intake.formats.base import Generation, Ignored, Rating, nanos_to_iso, to_completion, to_messages
from ingest.intake.records import MAX_DEPTH, TOO_DEEP, BadRow, describe, too_deep
from ingest.schema import Reason

EVALUATION = "gen_ai.evaluation.result"


def value_of(value):
    """An OTLP AnyValue to Python."""
    if not isinstance(value, dict) or len(value) != 1:
        return value
    kind, inner = next(iter(value.items()))
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


def _span(span: dict, raw: bytes, ctx) -> list:
    attrs = attributes(span.get("attributes") or [])
    span_id = span.get("spanId")
    out: list = []
    if "gen_ai.input.messages" in attrs or "gen_ai.output.messages" in attrs:
        if not isinstance(span_id, str) or not span_id:
            raise BadRow(Reason.MISSING_FIELD, "GenAI span has no spanId")
        prompt = to_messages(_structured(attrs.get("gen_ai.input.messages"), "gen_ai.input.messages"))
        system = _structured(attrs.get("gen_ai.system_instructions"), "gen_ai.system_instructions")
        if system is not None and isinstance(prompt, list):
            prompt = [{"role": "system", "content": to_completion(system if isinstance(system, str)
                                                                  else {"parts": system})}] + prompt
        output = _structured(attrs.get("gen_ai.output.messages"), "gen_ai.output.messages")
        response_id = attrs.get("gen_ai.response.id")
        keys = (f"span:{span_id}",) + ((f"resp:{response_id}",) if isinstance(response_id, str) else ())
        out.append(Generation(
            keys=keys, prompt=prompt, completion=to_completion(output[:1] if isinstance(output, list) else output),
            timestamp=nanos_to_iso(span.get("startTimeUnixNano"), "startTimeUnixNano"),
            user_id=attrs.get("user.id"), conversation_id=attrs.get("gen_ai.conversation.id"),
            model_version=attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model")))
    for event in span.get("events") or []:
        if isinstance(event, dict) and event.get("name") == EVALUATION:
            # kept as the log record it would be, so that quarantine holds a rating that stands on its own
            as_log = {"traceId": span.get("traceId"), "spanId": span_id, "timeUnixNano": event.get("timeUnixNano"),
                      "eventName": EVALUATION, "attributes": event.get("attributes") or []}
            out.extend(_guard(_log, as_log, ctx))
    return out


def _log(log: dict, raw: bytes, ctx) -> list:
    attrs = attributes(log.get("attributes") or [])
    if (log.get("eventName") or attrs.get("event.name")) != EVALUATION:
        return []
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
