"""`--format trl-kto`: TRL's preference datasets, unpaired (KTO) or paired, as JSONL rows.

    {"prompt": "The sky is", "completion": " blue.", "label": true}
    {"prompt": [{"role": "user", "content": "What color is the sky?"}],
     "completion": [{"role": "assistant", "content": "It is blue."}], "label": true}
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    {"chosen": [{"role": "user", ...}, {"role": "assistant", ...}], "rejected": [...]}   # implicit prompt

A paired row is split the way TRL's KTOTrainer prepares one: `maybe_extract_prompt` (the longest shared
prefix becomes the prompt when there is no explicit one) and then `unpair_preference_dataset` (the chosen
answer labelled True, the rejected one False). Rows carry no id or time: ids come from a hash of the line
(the same line gives the same ids) and the time is `--timestamp` (default: now).
"""

from __future__ import annotations

import hashlib
from typing import Any

from ingest.intake.formats.base import Event, to_completion, to_messages
from ingest.intake.records import BadRow
from ingest.schema import Reason


def _is_conversational(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """TRL's `extract_prompt`: split the longest common prefix (messages, or characters) off both."""
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":  # TRL leaves the space with the answers
                idx -= 1
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def _event_id(raw: bytes, desirable: bool) -> str:
    return f"trl-kto-{hashlib.sha256(raw).hexdigest()[:32]}-{'d' if desirable else 'u'}"


def parse(record: dict, raw: bytes, ctx) -> list:
    if "chosen" in record or "rejected" in record:
        return _paired(record, raw, ctx)
    for name in ("prompt", "completion"):
        if name not in record:
            raise BadRow(Reason.MISSING_FIELD, f"TRL row has no {name} (nor chosen/rejected)")
    if "label" not in record:
        raise BadRow(Reason.MISSING_FIELD, "TRL unpaired row has no label")
    label = record["label"]
    desirable = label if isinstance(label, bool) else None
    event = {"event_id": _event_id(raw, desirable is not False), "timestamp": ctx.default_timestamp,
             "prompt": to_messages(record["prompt"]), "completion": to_completion(record["completion"]),
             "label": label}
    return [Event(event, raw)]


def _paired(record: dict, raw: bytes, ctx) -> list:
    if "chosen" not in record or "rejected" not in record:
        raise BadRow(Reason.MISSING_FIELD, "TRL paired row needs both chosen and rejected")
    chosen, rejected = record["chosen"], record["rejected"]
    if not isinstance(chosen, (str, list)) or not isinstance(rejected, (str, list)) \
            or isinstance(chosen, str) != isinstance(rejected, str):
        raise BadRow(Reason.WRONG_TYPE, "chosen and rejected must both be strings or both lists of messages")
    prompt = record.get("prompt")
    if prompt is None or _is_conversational(prompt) != _is_conversational(chosen):
        prompt, chosen, rejected = extract_prompt(chosen, rejected)  # as TRL's maybe_extract_prompt
    return [Event({"event_id": _event_id(raw, desirable), "timestamp": ctx.default_timestamp,
                   "prompt": to_messages(prompt), "completion": to_completion(answer), "label": desirable}, raw)
            for desirable, answer in ((True, chosen), (False, rejected))]
