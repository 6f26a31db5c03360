"""`--format openai`: stored chat completions (`store=true`), the thumbs in their `metadata`.

    {"object": "chat.completion", "id": "chatcmpl-abc", "created": 1763608365, "model": "gpt-4o-2024-08-06",
     "input_user": "u-42", "request": {"messages": [{"role": "user", "content": "What is KTO?"}]},
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."}, "finish_reason": "stop"}],
     "metadata": {"thumbs": "up", "conversation_id": "c-7"}}

One completion per line (`GET /v1/chat/completions/{id}`), or one whole page of `GET /v1/chat/completions`
(`{"object": "list", "data": [...]}`) per line, each of its completions a record of its own. The API does
not return the request's messages with the completion: attach what `GET /v1/chat/completions/{id}/messages`
returns as `request.messages` (its `data` list, or the whole page when it has no more). The thumbs is
`metadata[--openai-metadata-key]` (metadata values are strings: "up"/"down", or any configured value);
a completion without it is counted as unrated, not quarantined. The user is `metadata.user_id`, else the
completion's `input_user` (the request's `user`, as the API stores it), else `request.user`; the
conversation `metadata.conversation_id`; the event id is the completion id and its time `created`.

Refused, never stored in part: a record whose `object` is not `chat.completion` (`unknown_shape`: a
Responses API object, a message of the messages page on its own line); a completion with several choices
(`unknown_shape`: the thumbs does not say which was shown); a prompt or answer holding anything but text,
an `image_url` in a message's `content_parts` or `content`, audio, a file, tool calls or a refusal
(`unsupported_content`: thumbs trains on text).
"""

from __future__ import annotations

from typing import Any

from ingest.intake.formats.base import (Event, Unrated, non_text, optional_str, require, seconds_to_iso,
                                        to_completion, to_messages)
from ingest.intake.records import BadRow, describe
from ingest.schema import Reason

_COMPLETION = "chat.completion"


def parse(record: dict, raw: bytes, ctx) -> list:
    if record.get("object") != "list":
        return _completion(record, raw, ctx)
    if not isinstance(record.get("data"), list):
        raise BadRow(Reason.UNKNOWN_SHAPE, "a list object without a data array (GET /v1/chat/completions has one)")
    out: list = []
    for item in record["data"]:
        item_raw = item  # serialised only if quarantine needs it
        try:
            if not isinstance(item, dict):
                raise BadRow(Reason.NOT_AN_OBJECT, "a page's data item is not an object")
            out.extend(_completion(item, item_raw, ctx))
        except BadRow as bad:
            out.append((bad, item_raw))
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:  # one item, not the page
            out.append((BadRow(Reason.WRONG_TYPE, f"a page's item is not a stored completion ({type(err).__name__})"),
                        item_raw))
    return out


def _shape(record: dict) -> None:
    kind = record.get("object")
    if kind == _COMPLETION:
        return
    if kind is None and "role" in record:
        raise BadRow(Reason.UNKNOWN_SHAPE, "a message of GET /v1/chat/completions/{id}/messages, not a completion: "
                                           "attach the messages as request.messages of their completion")
    if kind is None:
        raise BadRow(Reason.UNKNOWN_SHAPE, f"record has no object field: a stored completion has object "
                                           f"'{_COMPLETION}'")
    named = kind if kind in ("response", "chat.completion.chunk", "text_completion") else describe(kind)
    raise BadRow(Reason.UNKNOWN_SHAPE, f"object is {named}, not '{_COMPLETION}': not a stored chat completion")


def _messages(request: dict) -> list:
    """`request.messages`: the messages list, or the messages endpoint's page holding it whole."""
    messages = require(request, "messages", "request")
    if isinstance(messages, dict) and messages.get("object") == "list" and isinstance(messages.get("data"), list):
        if messages.get("has_more"):
            raise BadRow(Reason.MISSING_FIELD, "request.messages is one page of several (has_more): the prompt "
                                               "would be cut; attach every page's data")
        messages = messages["data"]
    found = non_text(messages, "request.messages")
    if found:
        raise BadRow(Reason.UNSUPPORTED_CONTENT, f"{found} is not text: thumbs keeps text prompts only")
    return messages


def _user(record: dict, metadata: dict, request: dict) -> Any:
    return (optional_str(metadata, "user_id", "metadata") or optional_str(record, "input_user", "completion")
            or request.get("user"))


def _completion(record: dict, raw: bytes, ctx) -> list:
    _shape(record)
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
    if len(choices) > 1:
        raise BadRow(Reason.UNKNOWN_SHAPE, f"completion has {len(choices)} choices (n > 1): metadata.{key} does "
                                           "not say which one was rated")
    answer = choices[0].get("message")
    found = non_text(answer, "choices[0].message")
    if found:
        raise BadRow(Reason.UNSUPPORTED_CONTENT, f"{found} is not text: thumbs keeps text answers only")
    desirable = ctx.options.decide(metadata[key], f"metadata.{key}")
    event: dict[str, Any] = {
        "event_id": completion_id, "timestamp": seconds_to_iso(require(record, "created", "stored completion"),
                                                               "created"),
        "prompt": to_messages(_messages(request)), "completion": to_completion(answer), "label": desirable,
        "model_version": record.get("model"), "user_id": _user(record, metadata, request),
        "conversation_id": optional_str(metadata, "conversation_id", "metadata"),
    }
    return [Event({k: v for k, v in event.items() if v is not None}, raw)]
