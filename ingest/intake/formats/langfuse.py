"""`--format langfuse`: traces, observations and scores as Langfuse's public API returns them.

Each line is one object (or one page, `{"data": [...], "meta": {...}}`):

- a trace (`id`, `input`, `output`, `userId`, `sessionId`, `release`, `version`, `timestamp`), optionally
  with its `observations` and `scores` nested as `GET /api/public/traces/{id}` returns them;
- an observation (`id`, `traceId`, `type`, `input`, `output`, `model`, `startTime`); only
  `type: "GENERATION"` ones can be rated;
- a score (`id`, `traceId`, `observationId`, `name`, `value`, `stringValue`, `dataType`, `source`,
  `timestamp`), in the trace's line or in any other source of the run.

A score with an `observationId` rates that generation; one with only a `traceId` rates the trace's
output, or its latest generation when the trace has none. Only scores named `--score-name` are thumbs
(others are counted as ignored): BOOLEAN 1/0, NUMERIC against `--up-at`/`--down-at`, CATEGORICAL
`stringValue` against `--up-values`/`--down-values`. The event id is the score id, its time the score's
`timestamp`, the user the trace's `userId`, the conversation its `sessionId`, the model version the
observation's `model` (a trace's own output: its `release`, else `version`).
"""

from __future__ import annotations

from ingest.intake.formats.base import (Generation, Ignored, Rating, Trace, optional_str, require_str, to_completion,
                                 to_messages)
from ingest.intake.records import BadRow, describe
from ingest.schema import Reason


def parse(record: dict, raw: bytes, ctx) -> list:
    if isinstance(record.get("data"), list) and "meta" in record:  # a page of the list endpoints
        out: list = []
        for item in record["data"]:
            out.extend(_one(item, item, ctx, nested=True))
        return out
    return _one(record, raw, ctx, nested=False)


def _one(record, raw, ctx, nested: bool) -> list:
    try:
        if not isinstance(record, dict):
            raise BadRow(Reason.NOT_AN_OBJECT, "a Langfuse item is not an object")
        if "dataType" in record or ("name" in record and "value" in record and "type" not in record):
            return [score(record, raw, ctx)]
        if "traceId" in record:
            return observation(record)
        return trace(record, ctx)
    except BadRow as bad:
        if not nested:
            raise
        return [(bad, raw)]


def score(record: dict, raw, ctx) -> Rating | Ignored:
    name = require_str(record, "name", "score")
    if name != ctx.options.score_name:
        return Ignored(name)
    score_id = require_str(record, "id", "score")
    observation_id = optional_str(record, "observationId", "score")
    trace_id = optional_str(record, "traceId", "score")
    if observation_id is None and trace_id is None:
        raise BadRow(Reason.MISSING_FIELD, "score has neither observationId nor traceId (a session or dataset-run "
                                           "score rates no single answer)")
    data_type = record.get("dataType")
    if data_type == "BOOLEAN":
        value = record.get("value")
        if value not in (0, 1) or isinstance(value, bool):
            raise BadRow(Reason.BAD_LABEL, f"BOOLEAN score value: {describe(value)} is not 1 or 0")
        desirable = value == 1
    elif data_type == "CATEGORICAL" or (data_type is None and isinstance(record.get("stringValue"), str)):
        desirable = ctx.options.decide(record.get("stringValue"), "CATEGORICAL score stringValue")
    elif data_type in ("NUMERIC", None):
        desirable = ctx.options.decide(record.get("value"), "NUMERIC score value")
    else:
        raise BadRow(Reason.WRONG_TYPE, f"score dataType: {describe(data_type)} is not BOOLEAN, NUMERIC or "
                                           "CATEGORICAL")
    target = f"obs:{observation_id}" if observation_id else f"trace:{trace_id}"
    return Rating(score_id, target, desirable, record.get("timestamp"), raw)


def observation(record: dict) -> list:
    if record.get("type") != "GENERATION":
        return []  # spans and events carry no model answer
    obs_id = require_str(record, "id", "observation")
    trace_id = require_str(record, "traceId", "observation")
    start = record.get("startTime")
    return [Generation(keys=(f"obs:{obs_id}",), prompt=_prompt(record.get("input")),
                       completion=to_completion(record.get("output")), timestamp=start,
                       model_version=record.get("model"), trace=trace_id,
                       weak=f"trace:{trace_id}", rank=start if isinstance(start, str) else "")]


def trace(record: dict, ctx) -> list:
    trace_id = require_str(record, "id", "trace")
    out: list = [Trace(trace_id, record.get("userId"), record.get("sessionId"))]
    if record.get("output") is not None:
        out.append(Generation(keys=(f"trace:{trace_id}",), prompt=_prompt(record.get("input")),
                              completion=to_completion(record["output"]), timestamp=record.get("timestamp"),
                              user_id=record.get("userId"), conversation_id=record.get("sessionId"),
                              model_version=record.get("release") or record.get("version")))
    for name in ("observations", "scores"):
        items = record.get(name) or []
        if not isinstance(items, list):
            raise BadRow(Reason.WRONG_TYPE, f"trace {name} must be a list")
        for item in items:
            if isinstance(item, str):
                continue  # `GET /traces` lists only the ids; their objects come in other lines
            out.extend(_one(item, item, ctx, nested=True))
    return out


def _prompt(value):
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        value = value["messages"]
    return to_messages(value)
