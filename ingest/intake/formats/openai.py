"""`--format openai`: stored chat completions (`store=true`), the thumbs in their `metadata`.

    {"object": "chat.completion", "id": "chatcmpl-abc", "created": 1763608365, "model": "gpt-4o-2024-08-06",
     "request": {"messages": [{"role": "user", "content": "What is KTO?"}]},
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."}, "finish_reason": "stop"}],
     "metadata": {"thumbs": "up", "user_id": "u-42", "conversation_id": "c-7"}}

One completion per line, or one whole page of `GET /v1/chat/completions` (`{"object": "list", "data":
[...]}`) per line. The list endpoint does not return the request's messages: attach what
`GET /v1/chat/completions/{id}/messages` returns as `request.messages`. The thumbs is
`metadata[--openai-metadata-key]` (metadata values are strings: "up"/"down", or any configured value);
a completion without it is counted as unrated, not quarantined. `metadata.user_id` (else `request.user`)
is the user, `metadata.conversation_id` the conversation; the event id is the completion id and its
time `created`.
"""

from __future__ import annotations

from typing import Any

from ingest.intake.formats.base import Event, Unrated, optional_str, require, seconds_to_iso, to_completion, to_messages
from ingest.intake.records import BadRow
from ingest.schema import Reason


def parse(record: dict, raw: bytes, ctx) -> list:
    if record.get("object") == "list" and isinstance(record.get("data"), list):
        out: list = []
        for item in record["data"]:
            item_raw = item  # serialised only if quarantine needs it
            try:
                if not isinstance(item, dict):
                    raise BadRow(Reason.NOT_AN_OBJECT, "a page's data item is not an object")
                out.extend(_completion(item, item_raw, ctx))
            except BadRow as bad:
                out.append((bad, item_raw))
        return out
    return _completion(record, raw, ctx)


def _completion(record: dict, raw: bytes, ctx) -> list:
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadRow(Reason.WRONG_TYPE, f"metadata must be an object, got {type(metadata).__name__}")
    key = ctx.options.openai_metadata_key
    if metadata.get(key) is None:
        return [Unrated()]
    completion_id = require(record, "id", "stored completion")
    request = require(record, "request", "stored completion")
    if not isinstance(request, dict):
        raise BadRow(Reason.WRONG_TYPE, "request must be an object holding the request's messages")
    choices = require(record, "choices", "stored completion")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadRow(Reason.WRONG_TYPE, "choices must be a non-empty list of objects")
    desirable = ctx.options.decide(metadata[key], f"metadata.{key}")
    event: dict[str, Any] = {
        "event_id": completion_id, "timestamp": seconds_to_iso(require(record, "created", "stored completion"),
                                                               "created"),
        "prompt": to_messages(require(request, "messages", "request")),
        "completion": to_completion(choices[0].get("message")), "label": desirable,
        "model_version": record.get("model"),
        "user_id": optional_str(metadata, "user_id", "metadata") or request.get("user"),
        "conversation_id": optional_str(metadata, "conversation_id", "metadata"),
    }
    return [Event({k: v for k, v in event.items() if v is not None}, raw)]
