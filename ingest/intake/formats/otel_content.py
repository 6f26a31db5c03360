"""OTel GenAI message content to thumbs' text: the shapes each convention writes it in, and what it refuses.

Read by `otel_genai` (which finds the calls and their ratings) for each call's prompt and answer:

- `current_messages`: `gen_ai.input.messages` / `gen_ai.output.messages` (conventions >= 1.37), structured or
  as JSON strings, with `gen_ai.system_instructions` (its text parts joined with a newline);
- `span_content`: whichever variant a span carries, that one, OpenLLMetry's indexed `gen_ai.prompt.{i}.*`, or
  the `gen_ai.content.prompt` / `.completion` events of conventions <= 1.27; None for a span without content;
- `openai_content`: an OpenAI message's content (the openai-v2 log records' bodies).

Only text is read. Anything else (an image, audio, a file, a tool call or its result, reasoning) raises
`unsupported` (`unsupported_content`, naming where it sits); `refusing` turns that into the refusal a call's
ratings carry. A shape half there (one side missing, capture off) is `unknown_shape`.
"""

from __future__ import annotations

import json

from ingest.intake.formats.otlp import attributes
from ingest.intake.records import MAX_DEPTH, TOO_DEEP, BadRow, describe, too_deep
from ingest.schema import Reason

PROMPT_EVENT, COMPLETION_EVENT = "gen_ai.content.prompt", "gen_ai.content.completion"
_INDEXED_MARKS = frozenset(("gen_ai.prompt.0.role", "gen_ai.prompt.0.content", "gen_ai.prompt.0.user",
                            "gen_ai.completion.0.role", "gen_ai.completion.0.content"))
_NOT_GENERATIONS = ("embeddings", "embedding")  # gen_ai.operation.name / OpenLLMetry's llm.request.type
_ROLES = {"developer": "system"}  # OpenAI's name for the system role of its reasoning models
_PART_TYPES = {"blob", "file", "uri", "reasoning", "tool_call", "tool_call_response", "server_tool_call",
               "server_tool_call_response", "image", "image_url", "input_audio", "audio", "input_image",
               "input_file", "refusal", "tool_use", "tool_result", "document", "thinking"}


def _structured(value, name: str):
    if isinstance(value, str):  # the conventions allow a JSON string where structured values are not supported
        if too_deep(value.encode("utf-8", "surrogatepass")):
            raise BadRow(TOO_DEEP, f"{name} is a JSON string nested deeper than {MAX_DEPTH} levels")
        try:
            return json.loads(value)
        except ValueError:
            raise BadRow(Reason.WRONG_TYPE, f"{name} is a string that is not JSON") from None
    return value


# -- what thumbs can hold as text, and what it refuses ------------------------------------------------------

def unsupported(kind, what: str) -> BadRow:
    name = repr(kind) if isinstance(kind, str) and kind in _PART_TYPES else "a part of another type"
    return BadRow(Reason.UNSUPPORTED_CONTENT, f"{what} holds {name}, which thumbs cannot hold as text")


def refusing(read, *args) -> tuple[list, str] | BadRow:
    """`read(*args)`: a call's prompt and answer; where the call holds what thumbs cannot hold as text, the
    refusal that each rating of it carries instead (as LangSmith's refused runs: kept in LAKE/_generations,
    so that a rating in another file or a later run is `unsupported_content`, not `orphan_feedback`). Any
    other problem is the record's own, and raised."""
    try:
        return read(*args)
    except BadRow as bad:
        return refusal(bad)


def refusal(bad: BadRow) -> BadRow:
    if bad.reason is not Reason.UNSUPPORTED_CONTENT:
        raise bad
    return BadRow(bad.reason, f"the generation it rates: {bad.detail}")


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
            raise unsupported(kind, what)
        text = part.get("content")
        if not isinstance(text, str):
            raise BadRow(Reason.UNKNOWN_SHAPE, f"{what}: a text part's content is {describe(text)}")
        texts.append(text)
    return sep.join(texts)


def openai_content(content, what: str) -> str:
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
            raise unsupported(kind, what)
    return "".join(texts)


def message_role(role):
    return _ROLES.get(role, role) if isinstance(role, str) else role  # anything else: the validator names it


def _openai_message(message, what: str) -> dict:
    """One OpenAI-format message (conventions <= 1.27, OpenLLMetry's JSON) to {role, content}."""
    if not isinstance(message, dict):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{what} is {describe(message)}, not a message")
    role = message.get("role")
    if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
        raise unsupported("tool_call" if role not in ("tool", "function") else "tool_call_response", what)
    if message.get("content") is None:
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{what} has no content")
    return {"role": message_role(role), "content": openai_content(message["content"], f"{what}.content")}


def _parts_message(message, what: str) -> dict:
    """One message of `gen_ai.input.messages` / `gen_ai.output.messages` to {role, content}."""
    if not isinstance(message, dict):
        raise BadRow(Reason.UNKNOWN_SHAPE, f"{what} is {describe(message)}, not a message")
    role = message.get("role")
    if role == "tool":
        raise unsupported("tool_call_response", what)
    if "parts" not in message and isinstance(message.get("content"), str):  # written by some before the schema
        return {"role": message_role(role), "content": message["content"]}
    return {"role": message_role(role), "content": _parts_text(message.get("parts"), f"{what}.parts")}


# -- the variants ------------------------------------------------------------------------------------------

def current_messages(attrs: dict, where: str) -> tuple[list, str]:
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
            raise unsupported("tool_call", prefix)
        if f"{prefix}.tool_call_id" in attrs:
            raise unsupported("tool_call_response", prefix)
        message = {"role": attrs.get(f"{prefix}.role"), "content": _indexed_content(attrs, prefix)}
        prompt.append(_openai_message(message, prefix))
        i += 1
    if not prompt and "gen_ai.prompt.0.user" in attrs:  # the legacy completions API: one prompt string
        prompt = [{"role": "user", "content": openai_content(attrs["gen_ai.prompt.0.user"], "gen_ai.prompt.0.user")}]
    if not prompt:
        raise BadRow(Reason.UNKNOWN_SHAPE, "span has gen_ai.completion.0.* but no gen_ai.prompt.0.role/content")
    if attrs.get("gen_ai.completion.0.finish_reason") == "content_filter":
        raise BadRow(Reason.EMPTY_COMPLETION, "gen_ai.completion.0 was withheld by the content filter")
    if "gen_ai.completion.0.tool_calls.0.name" in attrs:
        raise unsupported("tool_call", "gen_ai.completion.0")
    content = _indexed_content(attrs, "gen_ai.completion.0")
    if content is None:
        content = attrs.get("gen_ai.completion.0.refusal")  # what the user was shown instead
    if content is None:
        raise BadRow(Reason.UNKNOWN_SHAPE, "span has gen_ai.prompt.* but no gen_ai.completion.0.content")
    return prompt, openai_content(content, "gen_ai.completion.0.content")


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


def span_content(attrs: dict, events: list) -> tuple[list, str] | None:
    """The span's prompt and answer in whichever variant carries them; None for a span without content."""
    if "gen_ai.input.messages" in attrs or "gen_ai.output.messages" in attrs:
        return current_messages(attrs, "span")
    if not _INDEXED_MARKS.isdisjoint(attrs):
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
