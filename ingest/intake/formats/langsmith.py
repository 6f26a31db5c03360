"""`--format langsmith`: LangSmith runs and their feedback, one object per line or one API page per line.

- a run (`id`, `trace_id`, `run_type`, `inputs`, `outputs`, `start_time`, `extra.metadata`): only
  `run_type: "llm"` runs can be rated; the prompt is `inputs.messages` (OpenAI-style or LangChain's
  serialised messages), the answer `outputs` (`choices[0].message`, LangChain `generations`, or a message);
- feedback (`id`, `run_id`, `key`, `score`, `value`, `created_at`, `feedback_source`), in the same file
  or any other of the run;
- a page as the REST API returns it, saved one response per line: `POST /api/v1/runs/query`
  (`{"runs": [...], "cursors": {...}}`), `POST /api/v2/runs/query` (`{"items": [...], "next_cursor": ...}`,
  its runs with `metadata` and `thread_id` at the top) or `GET /api/v1/feedback` (a JSON array). Each of
  its runs and feedback is a record of its own, counted and quarantined on its own under the page's line.

Feedback on an llm run rates it; feedback on the trace's root run (`run_id` = a `trace_id`) rates the
trace's latest llm run. Only feedback whose `key` is `--score-name` is a thumbs (others are counted as
ignored); `score` (bool or number) is read against `--up-at`/`--down-at`, a string `value` against
`--up-values`/`--down-values`. The event id is the feedback id, its time `created_at`; the user, the
conversation and the model come from the run's `extra.metadata` (`user_id`; `thread_id`, `session_id` or
`conversation_id`; `ls_model_name`).

An llm run whose messages or answer hold anything but text (an image part, audio, a file, tool calls) or
that carries attachments is kept as a refused generation: a thumbs on it is quarantined as
`unsupported_content`, never stored as its text alone. A page item that is neither a run nor feedback is
`unknown_shape`.
"""

from __future__ import annotations

from ingest.intake.formats.base import (Generation, Ignored, Rating, non_text, require_str, to_completion,
                                        to_messages)
from ingest.intake.records import BadRow
from ingest.schema import Reason

_THREAD_KEYS = ("thread_id", "session_id", "conversation_id")
_PAGES = ("runs", "items")  # POST /api/v1/runs/query, POST /api/v2/runs/query


def parse(record: dict | list, raw: bytes, ctx) -> list:
    if isinstance(record, list):  # GET /api/v1/feedback returns a bare array
        return _page(record, ctx)
    if "run_type" in record:
        return run(record)
    if "key" in record:
        return [feedback(record, raw, ctx)]
    for name in _PAGES:
        if isinstance(record.get(name), list):
            return _page(record[name], ctx)
    raise BadRow(Reason.UNKNOWN_SHAPE, "line is neither a run (no run_type) nor feedback (no key) nor a page "
                                       "(no runs or items list)")


def _page(items: list, ctx) -> list:
    """A page's records, each on its own: one bad record is one quarantined row, not the whole page."""
    out: list = []
    for item in items:
        try:
            if not isinstance(item, dict):
                raise BadRow(Reason.NOT_AN_OBJECT, "a page's item is not an object")
            if "run_type" in item:
                out.extend(run(item))
            elif "key" in item:
                out.append(feedback(item, item, ctx))
            else:
                raise BadRow(Reason.UNKNOWN_SHAPE, "a page's item is neither a run (no run_type: was it left out "
                                                   "of the query's select?) nor feedback (no key)")
        except BadRow as bad:
            out.append((bad, item))
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
            bad = BadRow(Reason.WRONG_TYPE, f"a page's item is not in the langsmith shape ({type(err).__name__})")
            out.append((bad, item))
    return out


def _attachments(record: dict) -> str | None:
    """Files the run carries beside its inputs: `attachments` (SDK, v2) or `attachment.*` in `s3_urls` (v1)."""
    if record.get("attachments"):
        return "attachments"
    s3 = record.get("s3_urls")
    if isinstance(s3, dict) and any(isinstance(k, str) and k.startswith("attachment.") for k in s3):
        return "s3_urls (attachment.*)"
    return None


def run(record: dict) -> list:
    if record.get("run_type") != "llm":
        return []  # chains, tools and retrievers hold no model answer of their own
    run_id = require_str(record, "id", "run")
    inputs = record.get("inputs")
    if not isinstance(inputs, dict):
        raise BadRow(Reason.WRONG_TYPE, "run inputs must be an object")
    prompt = inputs.get("messages")
    if prompt is None and isinstance(inputs.get("prompts"), list) and inputs["prompts"]:
        prompt = inputs["prompts"][0]  # a completion (not chat) model
    if prompt is None:
        raise BadRow(Reason.MISSING_FIELD, "llm run has no inputs.messages")
    extra = record.get("extra") if isinstance(record.get("extra"), dict) else {}
    metadata = extra.get("metadata") if isinstance(extra.get("metadata"), dict) else None
    if metadata is None:  # the v2 API's run holds it at the top
        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    thread = next((metadata[k] for k in _THREAD_KEYS if metadata.get(k) is not None), record.get("thread_id"))
    trace_id = record.get("trace_id")
    start = record.get("start_time")
    gen = Generation(keys=(f"run:{run_id}",), prompt=None, completion=None, timestamp=start,
                     user_id=metadata.get("user_id"), conversation_id=thread,
                     model_version=metadata.get("ls_model_name"),
                     weak=f"run:{trace_id}" if isinstance(trace_id, str) and trace_id != run_id else None,
                     rank=start if isinstance(start, str) else "")
    found = _attachments(record) or non_text(prompt, "inputs.messages") or non_text(record.get("outputs"), "outputs")
    if found:
        gen.refused = BadRow(Reason.UNSUPPORTED_CONTENT, f"the llm run it rates holds {found}, which is not text: "
                                                         "thumbs keeps text only")
    else:
        gen.prompt, gen.completion = to_messages(prompt), to_completion(record.get("outputs"))
    return [gen]


def feedback(record: dict, raw, ctx) -> Rating | Ignored:
    key = require_str(record, "key", "feedback")
    if key != ctx.options.score_name:
        return Ignored(key)
    feedback_id = require_str(record, "id", "feedback")
    run_id = record.get("run_id")
    if run_id is None or run_id == "":
        raise BadRow(Reason.MISSING_FIELD, "feedback has no run_id (it rates no run)")
    if not isinstance(run_id, str):
        raise BadRow(Reason.WRONG_TYPE, f"feedback run_id must be a string, got {type(run_id).__name__}")
    value = record.get("score")
    what = "feedback score"
    if value is None:
        value, what = record.get("value"), "feedback value"
    if value is None:
        raise BadRow(Reason.MISSING_FIELD, "feedback has neither score nor value")
    return Rating(feedback_id, f"run:{run_id}", ctx.options.decide(value, what), record.get("created_at"), raw)
