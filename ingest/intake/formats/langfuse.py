"""`--format langfuse`: traces, observations and scores as Langfuse's APIs and exports write them.

Each line is one object (or one page, `{"data": [...], "meta": {...}}`, of any list endpoint). The variants
read, and where each shape comes from (tests/data/formats/langfuse/README.md cites the sources):

- a trace (`id`, `input`, `output`, `userId`, `sessionId`, `release`, `version`, `timestamp`), optionally
  with its `observations` and `scores` nested as `GET /api/public/traces/{id}` returns them;
- a trace whose `input` is the Python SDK's `@observe` record of its function's arguments, `{"args": [...],
  "kwargs": {...}}`: its GENERATIONs (inside spans) are what a trace-level score rates, the latest one
  winning; only when it has none does a lone argument (a text or a message list) with the trace's `output`
  stand in;
- a row of the UI's batch export of the traces table (a trace with `bookmarked` and no nested lists):
  each score name is a column holding an array, read from the column `--score-name` (rule below);
- an observation (`id`, `traceId`, `type`, `input`, `output`, `startTime`, and `model` in API v1,
  `providedModelName` or `model`, `userId`, `sessionId` in `GET /api/public/v2/observations`); only
  `type: "GENERATION"` ones can be rated;
- a score: v1/v2 (`id`, `traceId`, `observationId`, `name`, `value`, `stringValue`, `dataType`, `timestamp`)
  or `GET /api/public/v3/scores` (`value` a number, a JSON bool or the category, and the target in
  `subject: {kind, id, traceId}`), in the trace's line or in any other source of the run.

A score on an observation rates that generation; one on a trace rates the trace's output, or its latest
generation when the trace has none (or its input is no prompt). Only scores named `--score-name` are thumbs
(others are counted as ignored): BOOLEAN 1/0 or true/false, NUMERIC against `--up-at`/`--down-at`,
CATEGORICAL (`stringValue`, or v3's `value`) against `--up-values`/`--down-values`. The event id is the score
id, its time the score's `timestamp`, the user the trace's (or the v2 observation's) `userId`, the conversation
its `sessionId`, the model version the observation's model (a trace's own output: its `release`, else `version`).

Inputs and outputs that arrive as JSON text (v2 observations and UI exports always; Langfuse stores a string
input as is and anything else as its JSON) are read as Langfuse's UI reads them: parsed when they parse, kept
as text when they do not, refused (`unknown_shape`) when they open like JSON and do not parse. A generation
holding images, audio, tool calls, tool definitions or Langfuse media references is kept as refused: thumbs
holds text, and dropping them would change what was rated, so each score of it, in this line, another file
or a later run, is `unsupported_content`, naming where the content sits.

A UI export row's score column merges every score of that name on the trace (its observations' too): one
entry per distinct category or boolean, NUMERIC values averaged into one. One entry is the trace's rating of its
own input and output (event id `trace-<trace id>-<score name>`, time the trace's); several are ratings that
disagree and whose count the export lost, refused (`bad_label`). An average is read like any number: +1 and -1
give 0, a thumbs-down by default; export the scores (`GET /api/public/scores`) where traces carry several.
"""

from __future__ import annotations

import json
import re

from ingest.intake.formats.base import (Generation, Ignored, Rating, Trace, Unrated, optional_str, require_str,
                                        to_completion, to_messages)
from ingest.intake.records import BadRow, describe
from ingest.schema import Reason

_TEXT_PARTS = ("text", "input_text", "output_text")  # as base.to_text reads them
_TOOL_ROLES = ("tool", "function")
_NOT_TEXT_KEYS = ("tool_calls", "function_call", "audio", "tools", "functions")  # non-empty: not a text exchange
_PART_KEYS = ("content", "parts")
_UNTYPED_MEDIA = ("image_url", "input_audio", "inline_data", "inlineData", "file_data", "fileData",
                  "function_call", "functionCall", "function_response", "functionResponse")
_MEDIA_REFERENCE = "@@@langfuseMedia:"  # the SDKs replace images, audio and files with this token
_JSON_OPENING = re.compile(r'\s*(?:\{\s*["}]|\[\s*[\[{"\]])')  # an object or a list of objects, lists, texts
_SUBJECT_KINDS = ("trace", "observation", "session", "experiment")


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
        if "id" in record and "timestamp" in record:  # every Langfuse trace has both (the API's Trace type)
            return trace(record, raw, ctx)
        raise BadRow(Reason.UNKNOWN_SHAPE, "not a Langfuse score (name and value), observation (traceId) or "
                                           f"trace (id and timestamp): keys {sorted(record)[:8]}")
    except BadRow as bad:
        if not nested:
            raise
        return [(bad, raw)]


# -- scores -------------------------------------------------------------------------------------------------

def score(record: dict, raw, ctx) -> Rating | Ignored:
    name = require_str(record, "name", "score")
    if name != ctx.options.score_name:
        return Ignored(name)
    score_id = require_str(record, "id", "score")
    target = _score_target(record)
    data_type = record.get("dataType")
    value = record.get("value")
    if data_type == "BOOLEAN":  # v1/v2: 1 or 0; v3: true or false
        if isinstance(value, bool):
            desirable = value
        elif value in (0, 1):
            desirable = value == 1
        else:
            raise BadRow(Reason.BAD_LABEL, f"BOOLEAN score value: {describe(value)} is not 1/0 or true/false")
    elif data_type == "CATEGORICAL" or (data_type is None and isinstance(record.get("stringValue"), str)):
        label = record.get("stringValue")
        if label is None and isinstance(value, str):  # v3 holds the category in `value`
            label = value
        desirable = ctx.options.decide(label, "CATEGORICAL score value")
    elif data_type in ("NUMERIC", None):
        desirable = ctx.options.decide(value, "NUMERIC score value")
    else:
        raise BadRow(Reason.WRONG_TYPE, f"score dataType: {describe(data_type)} is not BOOLEAN, NUMERIC or "
                                        "CATEGORICAL")
    return Rating(score_id, target, desirable, record.get("timestamp"), raw)


def _score_target(record: dict) -> str:
    """The key of what a score rates: `observationId`/`traceId` (v1, v2) or `subject` (v3)."""
    if "subject" in record and "traceId" not in record and "observationId" not in record:
        return _subject_target(record["subject"])
    if "traceId" not in record and "observationId" not in record:
        raise BadRow(Reason.UNKNOWN_SHAPE, "score names nothing it rates: no observationId or traceId (API v1/v2) "
                                           "and no subject (API v3, which lists it with fields=subject)")
    observation_id = optional_str(record, "observationId", "score")
    trace_id = optional_str(record, "traceId", "score")
    if observation_id is None and trace_id is None:
        raise BadRow(Reason.MISSING_FIELD, "score has neither observationId nor traceId (a session or dataset-run "
                                           "score rates no single answer)")
    return f"obs:{observation_id}" if observation_id else f"trace:{trace_id}"


def _subject_target(subject) -> str:
    if not isinstance(subject, dict):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"score subject is {describe(subject)}, not an object {{kind, id}}")
    kind = subject.get("kind")
    if kind not in _SUBJECT_KINDS:
        raise BadRow(Reason.UNKNOWN_SHAPE, f"score subject kind, {describe(kind)}, is none of "
                                           f"{', '.join(_SUBJECT_KINDS)}")
    if kind in ("session", "experiment"):
        raise BadRow(Reason.MISSING_FIELD, f"score subject is a{'n' if kind == 'experiment' else ''} {kind}, which "
                                           "rates no single answer")
    subject_id = require_str(subject, "id", f"score subject ({kind})")
    return f"obs:{subject_id}" if kind == "observation" else f"trace:{subject_id}"


# -- observations -------------------------------------------------------------------------------------------

def observation(record: dict) -> list:
    if record.get("type") != "GENERATION":
        return []  # spans and events carry no model answer
    obs_id = require_str(record, "id", "observation")
    trace_id = optional_str(record, "traceId", "observation")  # v2: nullable
    start = record.get("startTime")
    model = record.get("model") if record.get("model") is not None else record.get("providedModelName")
    gen = Generation(keys=(f"obs:{obs_id}",), prompt=None, completion=None, timestamp=start,
                     user_id=record.get("userId"), conversation_id=record.get("sessionId"), model_version=model,
                     trace=trace_id, weak=f"trace:{trace_id}" if trace_id else None,
                     rank=start if isinstance(start, str) else "")
    _read_io(gen, record.get("input"), record.get("output"), "observation")
    return [gen]


def _read_io(gen: Generation, prompt, completion, what: str) -> None:
    """The generation's prompt and answer; or, where they hold what thumbs cannot hold as text, its refusal,
    which each rating of it carries (kept in LAKE/_generations: a rating in another file or a later run is
    `unsupported_content` too, not `orphan_feedback`). Input that is not understood raises: the record's own."""
    try:
        gen.prompt, gen.completion = _prompt(prompt, f"{what} input"), _completion(completion, f"{what} output")
    except BadRow as bad:
        if bad.reason is not Reason.UNSUPPORTED_CONTENT:
            raise
        gen.refused = bad


# -- traces -------------------------------------------------------------------------------------------------

def trace(record: dict, raw, ctx) -> list:
    trace_id = require_str(record, "id", "trace")
    out: list = [Trace(trace_id, record.get("userId"), record.get("sessionId"))]
    own = _trace_answer(record, trace_id)
    if _is_ui_export_row(record):
        return out + _ui_export_rating(record, raw, trace_id, own, ctx)
    nested, refused, ids_elsewhere = [], {}, False
    for name in ("observations", "scores"):
        items = record.get(name) or []
        if not isinstance(items, list):
            raise BadRow(Reason.WRONG_TYPE, f"trace {name} must be a list")
        for item in items:
            if isinstance(item, str):
                ids_elsewhere = True  # `GET /traces` lists only the ids; their objects come in other lines
                continue
            for it in _one(item, item, ctx, nested=True):
                if isinstance(it, tuple) and name == "observations" and _generation_id(item):
                    refused[f"obs:{item['id']}"] = (it[0], item, None)  # its ratings carry the refusal, if any
                else:
                    nested.append(it)
    has_generation = any(isinstance(g, Generation) for g in nested)
    if isinstance(own, Generation) and (own.keys or not has_generation):  # a stand-in only where none outranks it
        out.append(own)
    if not isinstance(own, Generation) and not has_generation and not ids_elsewhere:
        # Nothing in this line answers its trace-level scores: say why, rather than wait for a generation forever.
        if isinstance(own, BadRow):  # an output with no prompt we can read
            refused[f"trace:{trace_id}"] = (own, None, None)
        elif refused and isinstance(record.get("observations"), list):  # its only generations are refused
            via = next(iter(refused))
            refused[f"trace:{trace_id}"] = (refused[via][0], None, via)
    return out + _carry_refusals(nested, refused)


def _generation_id(item) -> bool:
    return isinstance(item, dict) and item.get("type") == "GENERATION" and isinstance(item.get("id"), str)


def _carry_refusals(items: list, refused: dict) -> list:
    """A rating of a refused generation is quarantined with the generation's reason; a refused generation
    that no rating in the line names is quarantined itself (its line holds it)."""
    out, named = [], set()
    for it in items:
        if isinstance(it, Rating) and it.target in refused:
            bad, _, via = refused[it.target]
            named.update((it.target, via))
            out.append((BadRow(bad.reason, f"what it rates is refused: {bad.detail}"), it.raw))
        else:
            out.append(it)
    out += [(bad, raw) for key, (bad, raw, _) in refused.items() if key not in named and raw is not None]
    return out


def _trace_answer(record: dict, trace_id: str) -> Generation | BadRow | None:
    """The trace's own output as the answer to a trace-level score; a BadRow says why it cannot be one."""
    if record.get("output") is None:
        return None
    try:
        prompt = _decode(record.get("input"), "trace input")
        observed = _observe_arguments(prompt)
        if observed is not None:  # @observe: the function's arguments, not the model's prompt
            prompt = _observed_prompt(observed)
        gen = Generation(keys=(), prompt=None, completion=None, timestamp=record.get("timestamp"),
                         user_id=record.get("userId"), conversation_id=record.get("sessionId"),
                         model_version=record.get("release") or record.get("version"))
        _read_io(gen, prompt, record["output"], "trace")
    except BadRow as bad:
        return bad
    if observed is None:
        gen.keys = (f"trace:{trace_id}",)
    else:  # any GENERATION of the trace beats it: rank "" sorts below every start time
        gen.weak, gen.rank = f"trace:{trace_id}", ""
    return gen


def _observe_arguments(value) -> list | None:
    """The arguments of an `@observe`d function call (langfuse/_client/observe.py), else None."""
    if isinstance(value, dict) and set(value) == {"args", "kwargs"} and isinstance(value["args"], list) \
            and isinstance(value["kwargs"], dict):
        return value["args"] + list(value["kwargs"].values())
    return None


def _observed_prompt(arguments: list):
    if len(arguments) == 1 and isinstance(arguments[0], (str, list)):
        return arguments[0]
    shapes = ", ".join(describe(a) for a in arguments[:3]) or "nothing"
    raise BadRow(Reason.UNKNOWN_SHAPE, f"trace input is @observe's {{args, kwargs}} holding {shapes}: not one "
                                       "text or message list, and no GENERATION of the trace answers for it")


# -- the UI's batch export ----------------------------------------------------------------------------------

def _is_ui_export_row(record: dict) -> bool:
    # worker/src/features/database-read-stream/trace-stream.ts: the traces table, no nested lists
    return "bookmarked" in record and "observations" not in record and "scores" not in record


def _ui_export_rating(record: dict, raw, trace_id: str, own, ctx) -> list:
    name = ctx.options.score_name
    values = record.get(name)
    if values is None or values == []:  # no score of that name on this trace
        return [own] if isinstance(own, Generation) else [Unrated()]
    if not isinstance(values, list):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"score column {name} holds {describe(values)}, not the export's array "
                                           "of values")
    if len(values) > 1:
        raise BadRow(Reason.BAD_LABEL, f"score column {name} holds {len(values)} distinct values: the export merges "
                                       "a trace's scores of a name, so its rating is unknown; export the scores "
                                       "(GET /api/public/scores) instead")
    if isinstance(own, BadRow):
        raise own
    desirable = ctx.options.decide(values[0], f"score column {name}")
    rating = Rating(f"trace-{trace_id}-{name}", f"trace:{trace_id}", desirable, None, raw)
    return ([own] if own is not None else []) + [rating]


# -- inputs and outputs -------------------------------------------------------------------------------------

def _decode(value, what: str):
    """JSON text to its value, as Langfuse's UI reads it (parseJsonPrioritised): a text that does not parse
    stays text, unless it opens like a JSON object or list of them: then it is truncated or broken."""
    if not isinstance(value, str) or value.lstrip()[:1] not in ("{", "[", '"'):
        return value
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        if _JSON_OPENING.match(value):
            raise BadRow(Reason.UNKNOWN_SHAPE, f"{what} is {describe(value)} that opens as JSON and does not "
                                               "parse (truncated?)") from None
        return value
    return parsed if isinstance(parsed, (dict, list, str)) else value


def _prompt(value, what: str):
    value = _decode(value, what)
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        _refuse_non_text({k: v for k, v in value.items() if k != "messages"}, what)  # tools, functions
        value = value["messages"]
    if value is not None and not isinstance(value, (str, list)):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{what} is {describe(value)}: not a text, a message list or an object "
                                           "with messages")
    _refuse_non_text(value, what)
    return to_messages(value)


def _completion(value, what: str):
    value = _decode(value, what)
    _refuse_non_text(value, what)
    return to_completion(value)


def _refuse_non_text(value, what: str) -> None:
    found = _non_text(value, what)
    if found is not None:
        raise BadRow(Reason.UNSUPPORTED_CONTENT, f"the generation it rates holds {found}: thumbs keeps text only, "
                                                 "and dropping it would change what was rated")


def _name(key) -> str:
    """A field name for a detail; a key that could be a value (not a short identifier) is not quoted."""
    return key if isinstance(key, str) and key.isidentifier() and len(key) <= 40 else "?"


def _non_text(value, where: str) -> str | None:
    """What in a message, a message list or a model response is not text (images, audio, tool calls), and
    where it sits (`observation input[1].content[0]`); None when all of it is text."""
    if isinstance(value, str):
        return f"a Langfuse media reference in {where}" if _MEDIA_REFERENCE in value else None
    if isinstance(value, list):
        return next((found for i, item in enumerate(value) if (found := _non_text(item, f"{where}[{i}]"))), None)
    if not isinstance(value, dict):
        return None
    if value.get("role") in _TOOL_ROLES or (value.get("type") in _TOOL_ROLES and "content" in value):
        return f"a tool message at {where}"
    for key in _NOT_TEXT_KEYS:
        if value.get(key):
            return f"a non-empty {key} at {where}.{key}"
    for key in _PART_KEYS:
        parts = value.get(key)
        for j, part in enumerate(parts if isinstance(parts, list) else ()):
            if isinstance(part, dict) and (part.get("type", "text") not in _TEXT_PARTS
                                           or any(k in part for k in _UNTYPED_MEDIA)):
                kind = part.get("type")
                named = (f"a content part of type {kind}" if isinstance(kind, str) and kind.isidentifier()
                         and len(kind) <= 40 else "a content part that is not text")
                return f"{named} at {where}.{key}[{j}]"
    return next((found for key, item in value.items() if (found := _non_text(item, f"{where}.{_name(key)}"))),
                None)
