"""`--format langsmith`: LangSmith runs and their feedback, one object per line.

- a run (`id`, `trace_id`, `run_type`, `inputs`, `outputs`, `start_time`, `extra.metadata`): only
  `run_type: "llm"` runs can be rated; the prompt is `inputs.messages` (OpenAI-style or LangChain's
  serialised messages), the answer `outputs` (`choices[0].message`, LangChain `generations`, or a message);
- feedback (`id`, `run_id`, `key`, `score`, `value`, `created_at`, `feedback_source`), in the same file
  or any other of the run.

Feedback on an llm run rates it; feedback on the trace's root run (`run_id` = a `trace_id`) rates the
trace's latest llm run. Only feedback whose `key` is `--score-name` is a thumbs (others are counted as
ignored); `score` (bool or number) is read against `--up-at`/`--down-at`, a string `value` against
`--up-values`/`--down-values`. The event id is the feedback id, its time `created_at`; the user, the
conversation and the model come from the run's `extra.metadata` (`user_id`; `thread_id`, `session_id` or
`conversation_id`; `ls_model_name`).
"""

from __future__ import annotations

from ingest.intake.formats.base import Generation, Ignored, Rating, require_str, to_completion, to_messages
from ingest.intake.records import BadRow
from ingest.schema import Reason

_THREAD_KEYS = ("thread_id", "session_id", "conversation_id")


def parse(record: dict, raw: bytes, ctx) -> list:
    if "run_type" in record:
        return run(record)
    if "key" in record:
        return [feedback(record, raw, ctx)]
    raise BadRow(Reason.MISSING_FIELD, "line is neither a run (no run_type) nor feedback (no key)")


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
    metadata = extra.get("metadata") if isinstance(extra.get("metadata"), dict) else {}
    thread = next((metadata[k] for k in _THREAD_KEYS if metadata.get(k) is not None), None)
    trace_id = record.get("trace_id")
    start = record.get("start_time")
    return [Generation(keys=(f"run:{run_id}",), prompt=to_messages(prompt),
                       completion=to_completion(record.get("outputs")), timestamp=start,
                       user_id=metadata.get("user_id"), conversation_id=thread,
                       model_version=metadata.get("ls_model_name"),
                       weak=f"run:{trace_id}" if isinstance(trace_id, str) and trace_id != run_id else None,
                       rank=start if isinstance(start, str) else "")]


def feedback(record: dict, raw: bytes, ctx) -> Rating | Ignored:
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
