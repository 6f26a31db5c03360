"""The OpenTelemetry GenAI shapes beyond the current conventions' span attributes, on real HH-RLHF and PandaLM text.

Each variant is built here with the exact field names of the OTLP/JSON encoding (resourceSpans/scopeSpans/spans,
resourceLogs/scopeLogs/logRecords, attributes as key/value AnyValues) and of the instrumentation that writes it
(tests/data/formats/otel/README.md cites the source file of each shape), ingested, and the lake checked field by
field: prompt messages (system included), completion, label, pseudonymised user, conversation, model and time.
Each has its hostile case: what thumbs cannot hold as text is quarantined as `unsupported_content`, a record
missing half of its content as `unknown_shape`.

    pytest -q tests/test_format_otel_variants.py
"""

from __future__ import annotations

import json

import pytest
from test_ingest_formats import config, hh, pandalm, rows, write_jsonl
from test_ingest_formats_more import NS0, _iso

from ingest.intake.formats.otlp import any_value
from ingest.intake.job import ingest
from ingest.lake import quarantine_table
from ingest.privacy import INSECURE_DEV_KEY, Pseudonymizer

PSEUDONYM = Pseudonymizer(INSECURE_DEV_KEY.encode("utf-8"))
MODEL, SNAPSHOT = "gpt-4o-mini", "gpt-4o-mini-2024-07-18"
SECOND = 1_000_000_000


def kv(attributes: dict) -> list[dict]:
    """Dotted attribute names to OTLP/JSON key/value pairs (None left out, as the SDKs leave unset values out)."""
    return [{"key": k, "value": any_value(v)} for k, v in attributes.items() if v is not None]


def spans_line(spans, scope="opentelemetry.instrumentation.openai_v2") -> dict:
    return {"resourceSpans": [{"resource": {"attributes": kv({"service.name": "chat-app"})},
                               "scopeSpans": [{"scope": {"name": scope}, "spans": spans}]}]}


def logs_line(records, scope="opentelemetry.instrumentation.openai_v2") -> dict:
    return {"resourceLogs": [{"resource": {"attributes": kv({"service.name": "chat-app"})},
                              "scopeLogs": [{"scope": {"name": scope}, "logRecords": records}]}]}


def span(k: int, attributes: dict, events=()) -> dict:
    start = NS0 + k * SECOND
    return {"traceId": f"{k:032x}", "spanId": f"{k:016x}", "name": f"chat {MODEL}", "kind": 3,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 900_000_000),
            "attributes": kv(attributes), "events": list(events), "status": {}}


def record(k: int, name: str, body=None, attributes=None, at: int = 0) -> dict:
    """A log record in span k's context, as the SDK's OTLP exporter writes an event (`eventName`)."""
    out = {"timeUnixNano": str(NS0 + k * SECOND + at), "observedTimeUnixNano": str(NS0 + k * SECOND + at),
           "severityNumber": 9, "eventName": name, "traceId": f"{k:032x}", "spanId": f"{k:016x}", "flags": 1,
           "attributes": kv(attributes or {"gen_ai.system": "openai"})}
    if body is not None:
        out["body"] = any_value(body)
    return out


def rating(k: int, up: bool, by_response: bool = False, name: str = "thumbs") -> dict:
    """The app's thumbs as a gen_ai.evaluation.result log record, in the call's span context or naming its response."""
    out = record(k, "gen_ai.evaluation.result", attributes={
        "gen_ai.evaluation.name": name, "gen_ai.evaluation.score.label": "thumbs_up" if up else "thumbs_down",
        "gen_ai.response.id": f"chatcmpl-{k}" if by_response else None}, at=120 * SECOND)
    if by_response:
        out.pop("spanId"), out.pop("traceId")
    return out


def evaluation_event(k: int, up: bool) -> dict:
    return {"timeUnixNano": str(NS0 + k * SECOND + 120 * SECOND), "name": "gen_ai.evaluation.result",
            "attributes": kv({"gen_ai.evaluation.name": "thumbs", "gen_ai.evaluation.score.value": 1.0 if up else 0.0})}


def expect(k: int, prompt, completion, up, user=None, conversation=None, model=SNAPSHOT) -> dict:
    return {"timestamp": _iso(NS0 + k * SECOND + 120 * SECOND), "prompt": prompt, "completion": completion,
            "desirable": up, "user_id": PSEUDONYM(user) if user else None, "conversation_id": conversation,
            "model_version": model}


def lake_rows(lake) -> list[dict]:
    out = []
    for r in rows(lake):
        assert r["event_id"].startswith("otel-") and r["metadata"] is None
        out.append({"timestamp": r["timestamp"].isoformat(), "prompt": r["prompt"], "completion": r["completion"],
                    "desirable": r["desirable"], "user_id": r["user_id"], "conversation_id": r["conversation_id"],
                    "model_version": r["model_version"]})
    return sorted(out, key=lambda r: r["timestamp"])


def quarantined(lake) -> list[tuple[str, int, str]]:
    table = quarantine_table(lake)
    return sorted(zip(table.column("source").to_pylist(), table.column("line").to_pylist(),
                      table.column("reason").to_pylist()))


def details(lake) -> list[str]:
    return quarantine_table(lake).column("detail").to_pylist()


def parts(messages) -> list[dict]:
    return [{"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]} for m in messages]


# -- openai-v2, default mode (conventions 1.30): a content-less span and the call's log records ---------------

def _v2_call(k: int, system, messages, answer) -> list[dict]:
    """What chat_completions_create_v_old emits, in order: one gen_ai.{role}.message per request message
    (message_to_event: body {content}), then one gen_ai.choice per choice (choice_to_event)."""
    request = ([{"role": "system", "content": system}] if system else []) + messages
    out = [record(k, f"gen_ai.{m['role']}.message", {"content": m["content"]}, at=i) for i, m in enumerate(request)]
    return out + [record(k, "gen_ai.choice", {"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": answer}}, at=len(request))]


def _v2_span(k: int, user=None) -> dict:
    """The span's attributes in the default mode (get_llm_request_attributes + _set_response_attributes); user.id
    is the app's own attribute on the span (the instrumentation writes none)."""
    return span(k, {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": MODEL,
                    "server.address": "api.openai.com", "gen_ai.response.model": SNAPSHOT,
                    "gen_ai.response.id": f"chatcmpl-{k}", "gen_ai.usage.input_tokens": 40,
                    "gen_ai.usage.output_tokens": 60, "gen_ai.response.finish_reasons": ["stop"], "user.id": user})


def test_openai_v2_default_mode_log_records_joined_to_their_span(tmp_path):
    records, spans, ratings, expected = [], [], [], []
    system = pandalm(1)[0][0].split("\n\n")[0]
    for i, (messages, chosen, rejected) in enumerate(hh(6)):
        for k, answer, up in ((2 * i, chosen, True), (2 * i + 1, rejected, False)):
            with_system = system if i % 2 == 0 else None
            records += _v2_call(k, with_system, messages, answer)
            spans.append(_v2_span(k, user=f"u-{i % 3}"))
            ratings.append(rating(k, up, by_response=k % 3 == 0))
            prompt = ([{"role": "system", "content": with_system}] if with_system else []) + messages
            expected.append(expect(k, prompt, answer, up, user=f"u-{i % 3}"))
    # records in export batches of 7: calls straddle lines; spans in their own file, read after the logs
    write_jsonl(tmp_path / "logs.jsonl", [logs_line(records[j:j + 7]) for j in range(0, len(records), 7)])
    write_jsonl(tmp_path / "spans.jsonl", [spans_line(spans[j:j + 5]) for j in range(0, len(spans), 5)])
    write_jsonl(tmp_path / "thumbs.jsonl", [logs_line(ratings[:6], "app"), logs_line(ratings[6:], "app")])
    for name, order in (("logs-first", ("logs", "spans", "thumbs")), ("spans-first", ("spans", "logs", "thumbs"))):
        lake = tmp_path / name
        summary = ingest([tmp_path / f"{f}.jsonl" for f in order], lake, config("otel-genai"), progress=False).to_dict()
        assert (summary["accepted"], summary["quarantined_total"], summary["unrated"]) == (12, 0, 0), name
        assert lake_rows(lake) == expected, name


def test_openai_v2_ratings_exported_beside_their_calls_wait_for_the_span(tmp_path):
    """The app's thumbs in the same logs batch as the calls (benchmarks/ingest.py's shape), the content-less
    spans in the next line or in a later file: each event still has the span's model and user, and so has the
    generation a later run's rating finds in the store."""
    records, spans, expected = [], [], []
    for i, (messages, chosen, rejected) in enumerate(hh(3)):
        for k, answer, up in ((2 * i, chosen, True), (2 * i + 1, rejected, False)):
            records += _v2_call(k, None, messages, answer) + [rating(k, up)]
            spans.append(_v2_span(k, user=f"u-{i}"))
            expected.append(expect(k, messages, answer, up, user=f"u-{i}"))
    write_jsonl(tmp_path / "one.jsonl", [logs_line(records), spans_line(spans)])
    write_jsonl(tmp_path / "logs.jsonl", [logs_line(records)])
    write_jsonl(tmp_path / "spans.jsonl", [spans_line(spans)])
    for name, files in (("next-line", ["one"]), ("later-file", ["logs", "spans"])):
        lake = tmp_path / name
        summary = ingest([tmp_path / f"{f}.jsonl" for f in files], lake, config("otel-genai"), progress=False)
        totals = summary.to_dict()
        assert (totals["accepted"], totals["quarantined_total"], totals["unrated"]) == (6, 0, 0), name
        assert lake_rows(lake) == expected, name

    later = rating(2, False)
    later["timeUnixNano"] = str(NS0 + 500 * SECOND)
    write_jsonl(tmp_path / "later.jsonl", [logs_line([later], "app")])
    summary = ingest([tmp_path / "later.jsonl"], tmp_path / "next-line", config("otel-genai"), progress=False)
    assert summary.to_dict()["accepted"] == 1
    row = next(r for r in lake_rows(tmp_path / "next-line") if r["timestamp"] == _iso(NS0 + 500 * SECOND))
    assert row == {**expected[2], "timestamp": _iso(NS0 + 500 * SECOND), "desirable": False}


def test_openai_v2_default_mode_hostile_calls(tmp_path):
    (messages, chosen, _), = hh(1)
    image = [{"type": "text", "text": "What is in this picture?"},
             {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    tool_call = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    calls = {
        1: _v2_call(1, None, messages, chosen),  # the good one
        2: [record(2, "gen_ai.user.message", {"content": image}),
            record(2, "gen_ai.choice", {"index": 0, "finish_reason": "stop", "message": {"content": chosen}})],
        3: [record(3, "gen_ai.user.message", {"content": "What's the weather in Paris?"}),
            record(3, "gen_ai.choice", {"index": 0, "finish_reason": "tool_calls",
                                        "message": {"role": "assistant", "tool_calls": tool_call}})],
        4: [record(4, "gen_ai.user.message", {"content": "What's the weather in Paris?"}),
            record(4, "gen_ai.assistant.message", {"tool_calls": tool_call}),
            record(4, "gen_ai.tool.message", {"content": "rainy, 57°F", "id": "call_1"}),
            record(4, "gen_ai.choice", {"index": 0, "finish_reason": "stop", "message": {"content": chosen}})],
        5: [record(5, "gen_ai.user.message"),  # content capture off: no body, and a choice without content
            record(5, "gen_ai.choice", {"index": 0, "finish_reason": "stop", "message": {}})],
        6: [record(6, "gen_ai.choice", {"index": 0, "finish_reason": "stop", "message": {"content": chosen}})],
        7: [{**record(7, "gen_ai.user.message", {"content": "hi"}), "body": {"stringValue": "hi"}}],
    }
    no_span = record(8, "gen_ai.user.message", {"content": "hi"})
    no_span.pop("spanId")
    lines = [logs_line(records) for records in calls.values()] + [logs_line([no_span])]
    lines += [spans_line([_v2_span(k) for k in calls]), logs_line([rating(k, True) for k in calls], "app")]
    write_jsonl(tmp_path / "hostile.jsonl", lines)
    lake = tmp_path / "lake"
    summary = ingest([tmp_path / "hostile.jsonl"], lake, config("otel-genai"), progress=False).to_dict()
    assert summary["accepted"] == 1
    # A call with an image or a tool call is a refused generation: its rating (line 10) carries the refusal. A
    # record not understood is quarantined itself, and the rating of its call finds nothing to rate.
    assert quarantined(lake) == sorted(
        [("hostile.jsonl", 5, "unknown_shape"), ("hostile.jsonl", 6, "unknown_shape"),
         ("hostile.jsonl", 7, "unknown_shape"), ("hostile.jsonl", 8, "missing_field")]
        + [("hostile.jsonl", 10, "unsupported_content")] * 3 + [("hostile.jsonl", 10, "orphan_feedback")] * 3)
    said = details(lake)
    assert any("'image_url'" in d for d in said) and any("content capture is off" in d for d in said)
    assert not any("Paris" in d or "57°F" in d for d in said)  # details name fields, never content


# -- EVENT_ONLY: the call on one gen_ai.client.inference.operation.details log record --------------------------

def _details_record(k: int, system_parts, messages, answer, user, conversation) -> dict:
    """InferenceInvocation._maybe_create_event: the span's attributes and the content, structured (for_span=False)."""
    return record(k, "gen_ai.client.inference.operation.details", attributes={
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": MODEL,
        "gen_ai.response.finish_reasons": ["stop"], "gen_ai.response.model": SNAPSHOT,
        "gen_ai.response.id": f"chatcmpl-{k}", "gen_ai.usage.input_tokens": 40, "gen_ai.usage.output_tokens": 60,
        "gen_ai.input.messages": parts(messages),
        "gen_ai.output.messages": [dict(p, finish_reason="stop") for p in parts([{"role": "assistant",
                                                                                   "content": answer}])],
        "gen_ai.system_instructions": [{"type": "text", "content": p} for p in system_parts] if system_parts else None,
        "user.id": user, "gen_ai.conversation.id": conversation}, at=900_000_000)


def test_event_only_details_records_and_two_part_system_instructions(tmp_path):
    """The two system parts are two instructions: joined with a newline, never run together."""
    items = pandalm(8)
    first = items[0][0].split("\n\n")[0]  # 'The sentence ... or unclear. Rewrite the sentence ...'
    head, tail = first.split(". ", 1)
    system_parts = [head + ".", tail]
    records, spans, ratings, expected = [], [], [], []
    for i, (prompt, response1, response2, first_better) in enumerate(items[1:]):
        for k, answer, up in ((2 * i, response1, first_better), (2 * i + 1, response2, not first_better)):
            user, conversation = f"u-{i % 2}", f"conv-{i}"
            records.append(_details_record(k, system_parts if i % 2 == 0 else None,
                                           [{"role": "user", "content": prompt}], answer, user, conversation))
            spans.append(span(k, {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                  "gen_ai.request.model": MODEL, "gen_ai.response.model": SNAPSHOT,
                                  "gen_ai.response.id": f"chatcmpl-{k}"}))
            ratings.append(rating(k, up, by_response=k % 2 == 0))
            system = [{"role": "system", "content": head + ".\n" + tail}] if i % 2 == 0 else []
            expected.append(expect(k, system + [{"role": "user", "content": prompt}], answer, up, user, conversation))
    write_jsonl(tmp_path / "spans.jsonl", [spans_line(spans)])
    write_jsonl(tmp_path / "logs.jsonl", [logs_line(records[:5]), logs_line(records[5:] + ratings)])
    lake = tmp_path / "lake"
    summary = ingest([tmp_path / "spans.jsonl", tmp_path / "logs.jsonl"], lake, config("otel-genai"),
                     progress=False).to_dict()
    assert (summary["accepted"], summary["quarantined_total"], summary["unrated"]) == (len(expected), 0, 0)
    assert lake_rows(lake) == expected
    assert "or unclear.\nRewrite the sentence" in lake_rows(lake)[0]["prompt"][0]["content"]


def test_event_only_hostile_and_span_and_event_read_once(tmp_path):
    (messages, chosen, _), = hh(1)
    def changed(k, changes: dict) -> dict:
        """The good record of call k with some attributes changed (None: left out)."""
        out = _details_record(k, None, messages, chosen, "u-1", "c-1")
        named = {a["key"]: a["value"] for a in out["attributes"]}
        named.update({key: None if v is None else any_value(v) for key, v in changes.items()})
        out["attributes"] = [{"key": key, "value": v} for key, v in named.items() if v is not None]
        return out

    good = changed(1, {})
    image = changed(2, {"gen_ai.input.messages": [{"role": "user", "parts": [
        {"type": "text", "content": "What is this?"},
        {"type": "blob", "modality": "image", "mime_type": "image/png", "content": "iVBORw0KGgo="}]}]})
    tool = changed(3, {"gen_ai.output.messages": [{"role": "assistant", "finish_reason": "tool_call", "parts": [
        {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]}]})
    half = changed(4, {"gen_ai.output.messages": None})
    bare = record(5, "gen_ai.client.inference.operation.details", attributes={"gen_ai.operation.name": "chat"})
    # SPAN_AND_EVENT: the same call on its span (JSON strings) and on its details record: one generation
    both = span(1, {"gen_ai.operation.name": "chat", "gen_ai.request.model": MODEL,
                    "gen_ai.response.id": "chatcmpl-1",
                    "gen_ai.input.messages": json.dumps(parts(messages)),
                    "gen_ai.output.messages": json.dumps(parts([{"role": "assistant", "content": chosen}]))})
    write_jsonl(tmp_path / "hostile.jsonl", [logs_line([good]), logs_line([image, tool, half, bare]),
                                             spans_line([both]), logs_line([rating(k, False) for k in range(1, 6)])])
    lake = tmp_path / "lake"
    summary = ingest([tmp_path / "hostile.jsonl"], lake, config("otel-genai"), progress=False).to_dict()
    assert (summary["accepted"], summary["unrated"]) == (1, 0)
    # the image's and the tool call's ratings carry their refusal; the half-captured call's rating finds nothing
    assert quarantined(lake) == [("hostile.jsonl", 2, "unknown_shape")] + [
        ("hostile.jsonl", 4, "orphan_feedback")] * 2 + [("hostile.jsonl", 4, "unsupported_content")] * 2
    row, = lake_rows(lake)
    assert (row["prompt"], row["completion"], row["user_id"]) == (messages, chosen, PSEUDONYM("u-1"))
    assert any("'blob'" in d for d in details(lake)) and any("'tool_call'" in d for d in details(lake))
    assert any("no gen_ai.output.messages" in d for d in details(lake))


# -- OpenLLMetry before the current conventions: indexed span attributes --------------------------------------

def _openllmetry_span(k: int, system, messages, answer, user=None, evaluation=None) -> dict:
    """chat_wrappers._set_prompts / _set_completions: gen_ai.prompt.{i}.role/content, gen_ai.completion.{i}.*;
    a list content as its JSON; the user as a Traceloop association property."""
    request = ([{"role": "system", "content": system}] if system else []) + messages
    attributes = {"llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.request.model": MODEL,
                  "gen_ai.response.model": SNAPSHOT, "gen_ai.response.id": f"chatcmpl-{k}", "llm.is_streaming": False,
                  "traceloop.association.properties.user_id": user}
    for i, m in enumerate(request):
        attributes[f"gen_ai.prompt.{i}.role"] = m["role"]
        attributes[f"gen_ai.prompt.{i}.content"] = m["content"]
    attributes.update({"gen_ai.completion.0.finish_reason": "stop", "gen_ai.completion.0.role": "assistant",
                       "gen_ai.completion.0.content": answer})
    return span(k, attributes, [evaluation] if evaluation else [])


def test_openllmetry_indexed_attributes(tmp_path):
    system = pandalm(1)[0][0].split("\n\n")[0]
    spans, ratings, expected = [], [], []
    for i, (messages, chosen, rejected) in enumerate(hh(6, start=20)):
        for k, answer, up in ((2 * i, chosen, True), (2 * i + 1, rejected, False)):
            with_system = system if i % 3 == 0 else None
            sent = [dict(m) for m in messages]
            if i == 1:  # a parts list, which OpenLLMetry writes as its JSON
                sent[-1]["content"] = json.dumps([{"type": "text", "text": messages[-1]["content"]}])
            in_span = k % 2 == 0
            spans.append(_openllmetry_span(k, with_system, sent, answer, user=f"u-{i}",
                                           evaluation=evaluation_event(k, up) if in_span else None))
            if not in_span:
                ratings.append(rating(k, up, by_response=True))
            prompt = ([{"role": "system", "content": with_system}] if with_system else []) + messages
            expected.append(expect(k, prompt, answer, up, user=f"u-{i}"))
    write_jsonl(tmp_path / "spans.jsonl", [spans_line(spans[j:j + 4], "opentelemetry.instrumentation.openai.v1")
                                           for j in range(0, len(spans), 4)])
    write_jsonl(tmp_path / "thumbs.jsonl", [logs_line(ratings, "app")])
    lake = tmp_path / "lake"
    summary = ingest([tmp_path / "thumbs.jsonl", tmp_path / "spans.jsonl"], lake, config("otel-genai"),
                     progress=False).to_dict()
    assert (summary["accepted"], summary["quarantined_total"], summary["unrated"]) == (12, 0, 0)
    assert lake_rows(lake) == expected


def test_openllmetry_hostile_spans(tmp_path):
    (messages, chosen, _), = hh(1, start=20)
    ev = evaluation_event(0, True)

    def variant(k, changes: dict) -> dict:
        """The good span with some attributes changed (None: left out, as OpenLLMetry leaves out empty values)."""
        s = _openllmetry_span(k, None, messages, chosen, evaluation=evaluation_event(k, True))
        named = {a["key"]: a["value"] for a in s["attributes"]}
        named.update({key: None if v is None else any_value(v) for key, v in changes.items()})
        s["attributes"] = [{"key": key, "value": v} for key, v in named.items() if v is not None]
        return s

    image = json.dumps([{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "x"}}])
    spans = [
        _openllmetry_span(0, None, messages, chosen, user="u-0", evaluation=ev),  # the good one
        variant(1, {f"gen_ai.prompt.{len(messages) - 1}.content": image}),
        variant(2, {"gen_ai.completion.0.content": None, "gen_ai.completion.0.tool_calls.0.name": "get_weather"}),
        variant(3, {"gen_ai.completion.0.content": None, "gen_ai.completion.0.role": None,
                    "gen_ai.completion.0.finish_reason": None}),
        variant(4, {"gen_ai.completion.0.finish_reason": "content_filter", "gen_ai.completion.0.content": "FILTERED"}),
        span(5, {"llm.request.type": "embedding", "gen_ai.request.model": "text-embedding-3-small",
                 "gen_ai.prompt.0.content": messages[0]["content"]}),  # an embedding call: no generation, no row
    ]
    write_jsonl(tmp_path / "hostile.jsonl", [spans_line([s]) for s in spans])
    lake = tmp_path / "lake"
    summary = ingest([tmp_path / "hostile.jsonl"], lake, config("otel-genai"), progress=False).to_dict()
    assert (summary["accepted"], summary["unrated"]) == (1, 0)
    assert quarantined(lake) == [("hostile.jsonl", 2, "unsupported_content"),
                                 ("hostile.jsonl", 3, "unsupported_content"), ("hostile.jsonl", 4, "unknown_shape"),
                                 ("hostile.jsonl", 5, "empty_completion")]
    row, = lake_rows(lake)
    assert (row["prompt"], row["completion"], row["user_id"]) == (messages, chosen, PSEUDONYM("u-0"))


# -- conventions <= 1.27: gen_ai.content.prompt / gen_ai.content.completion span events -----------------------

def _content_events_span(k: int, prompt_json: str | None, completion_json: str | None, up: bool) -> dict:
    events = []
    if prompt_json is not None:
        events.append({"timeUnixNano": str(NS0 + k * SECOND), "name": "gen_ai.content.prompt",
                       "attributes": kv({"gen_ai.prompt": prompt_json})})
    if completion_json is not None:
        events.append({"timeUnixNano": str(NS0 + k * SECOND + 1), "name": "gen_ai.content.completion",
                       "attributes": kv({"gen_ai.completion": completion_json})})
    return span(k, {"gen_ai.system": "openai", "gen_ai.request.model": MODEL, "gen_ai.response.model": SNAPSHOT,
                    "gen_ai.response.id": f"chatcmpl-{k}", "gen_ai.usage.prompt_tokens": 40,
                    "gen_ai.usage.completion_tokens": 60, "user.id": f"u-{k % 2}",
                    "gen_ai.conversation.id": f"conv-{k // 2}"}, events + [evaluation_event(k, up)])


def test_semconv_1_27_content_events(tmp_path):
    system = pandalm(1)[0][0].split("\n\n")[0]
    spans, expected = [], []
    for i, (messages, chosen, rejected) in enumerate(hh(5, start=40)):
        for k, answer, up in ((2 * i, chosen, True), (2 * i + 1, rejected, False)):
            prompt = ([{"role": "system", "content": system}] if i % 2 else []) + messages
            spans.append(_content_events_span(k, json.dumps(prompt), json.dumps([{"role": "assistant",
                                                                                  "content": answer}]), up))
            expected.append(expect(k, prompt, answer, up, user=f"u-{k % 2}", conversation=f"conv-{k // 2}"))
    write_jsonl(tmp_path / "spans.jsonl", [spans_line(spans, "opentelemetry.instrumentation.openai")])
    lake = tmp_path / "lake"
    summary = ingest([tmp_path / "spans.jsonl"], lake, config("otel-genai"), progress=False).to_dict()
    assert (summary["accepted"], summary["quarantined_total"], summary["unrated"]) == (10, 0, 0)
    assert lake_rows(lake) == expected


def test_semconv_1_27_hostile_spans(tmp_path):
    (messages, chosen, _), = hh(1, start=40)
    answer = json.dumps([{"role": "assistant", "content": chosen}])
    image = messages[:-1] + [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    tool = messages + [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
                       {"role": "tool", "content": "57°F", "tool_call_id": "c"}]
    python_repr = str([{"role": "user", "content": "What is the capital of France?"}])  # the conventions' example
    as_attributes = span(6, {"gen_ai.system": "openai", "gen_ai.prompt": json.dumps(messages),
                             "gen_ai.completion": answer}, [evaluation_event(6, True)])
    spans = [_content_events_span(0, json.dumps(messages), answer, True),  # the good one
             _content_events_span(1, json.dumps(messages), None, True),
             _content_events_span(2, json.dumps(image), answer, True),
             _content_events_span(3, json.dumps(tool), answer, True),
             _content_events_span(4, python_repr, answer, True),
             _content_events_span(5, json.dumps(messages), json.dumps([{"role": "user", "content": chosen}]), True),
             as_attributes]
    write_jsonl(tmp_path / "hostile.jsonl", [spans_line([s]) for s in spans])
    lake = tmp_path / "lake"
    summary = ingest([tmp_path / "hostile.jsonl"], lake, config("otel-genai"), progress=False).to_dict()
    assert (summary["accepted"], summary["unrated"]) == (1, 0)
    assert quarantined(lake) == [("hostile.jsonl", 2, "unknown_shape"), ("hostile.jsonl", 3, "unsupported_content"),
                                 ("hostile.jsonl", 4, "unsupported_content"), ("hostile.jsonl", 5, "wrong_type"),
                                 ("hostile.jsonl", 6, "unknown_shape"), ("hostile.jsonl", 7, "unknown_shape")]
    row, = lake_rows(lake)
    assert (row["prompt"], row["completion"], row["conversation_id"]) == (messages, chosen, "conv-0")



# -- a rating of a refused call in another file or a later run ------------------------------------------------

def _refused_calls() -> dict:
    """Per variant: (the call's lines, no rating in them; where its refusal says the content that is not text is)."""
    (messages, chosen, _), = hh(1, start=60)
    answer = [{"role": "assistant", "content": chosen}]
    image = [{"type": "text", "text": messages[-1]["content"]}, {"type": "image_url", "image_url": {"url": "x"}}]
    blob = {"type": "blob", "modality": "image", "mime_type": "image/png", "content": "iVBORw0KGgo="}
    with_blob = [{"role": "user", "parts": [{"type": "text", "content": messages[-1]["content"]}, blob]}]
    details = _details_record(0, None, messages, chosen, "u-0", "c-0")
    details["attributes"] = [a if a["key"] != "gen_ai.output.messages" else {"key": a["key"], "value": any_value([{
        "role": "assistant", "finish_reason": "tool_call", "parts": [
            {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]}])}
        for a in details["attributes"]]
    openllmetry = _openllmetry_span(0, None, messages, chosen)
    openllmetry["attributes"] = [a for a in openllmetry["attributes"] if a["key"] != "gen_ai.completion.0.content"]
    openllmetry["attributes"] += kv({"gen_ai.completion.0.tool_calls.0.name": "get_weather"})
    tool_message = messages + [{"role": "tool", "content": "57°F", "tool_call_id": "c"}]
    old = _content_events_span(0, json.dumps(tool_message), json.dumps(answer), True)
    old["events"] = old["events"][:2]  # its content events, not its rating
    current = span(0, {"gen_ai.operation.name": "chat", "gen_ai.request.model": MODEL,
                       "gen_ai.input.messages": json.dumps(with_blob),
                       "gen_ai.output.messages": json.dumps(parts(answer))})
    v2_call = _v2_call(0, None, messages[:-1] + [{"role": "user", "content": image}], chosen)
    return {
        "span attributes": ([spans_line([current])], "gen_ai.input.messages[0].parts holds 'blob'"),
        "details log record": ([logs_line([details])], "gen_ai.output.messages[0].parts holds 'tool_call'"),
        "span + message log records": ([logs_line(v2_call), spans_line([_v2_span(0)])],
                                       "gen_ai.user.message body.content holds 'image_url'"),
        "indexed attributes": ([spans_line([openllmetry])], "gen_ai.completion.0 holds 'tool_call'"),
        "content span events": ([spans_line([old])], f"gen_ai.prompt[{len(messages)}] holds 'tool_call_response'"),
    }


REFUSED_CALLS = _refused_calls()


@pytest.mark.parametrize("later_run", [False, True], ids=["second file", "later run"])
@pytest.mark.parametrize("variant", sorted(REFUSED_CALLS))
def test_a_rating_of_a_refused_call_elsewhere_is_unsupported_content(tmp_path, variant, later_run):
    """The call is kept as refused (LAKE/_generations), so its rating, wherever it comes, says why it is not an
    event, naming where the content sits, instead of waiting as an orphan for a generation that never comes."""
    lines, where = REFUSED_CALLS[variant]
    write_jsonl(tmp_path / "calls.jsonl", lines)
    write_jsonl(tmp_path / "thumbs.jsonl", [logs_line([rating(0, True)], "app")])
    lake = tmp_path / "lake"
    if later_run:
        first = ingest([tmp_path / "calls.jsonl"], lake, config("otel-genai"), progress=False).to_dict()
        assert (first["accepted"], first["quarantined_total"], first["unrated"]) == (0, 0, 1)
        summary = ingest([tmp_path / "thumbs.jsonl"], lake, config("otel-genai"), progress=False).to_dict()
    else:
        summary = ingest([tmp_path / "calls.jsonl", tmp_path / "thumbs.jsonl"], lake, config("otel-genai"),
                         progress=False).to_dict()
    assert (summary["accepted"], summary["quarantined"], summary["unrated"]) == (0, {"unsupported_content": 1}, 0)
    assert quarantined(lake) == [("thumbs.jsonl", 1, "unsupported_content")]  # the rating, not the call
    assert details(lake) == [f"the generation it rates: {where}, which thumbs cannot hold as text"]


@pytest.mark.parametrize("value", ["text", "", 7, -2**63, 0.5, True, False, [1, "a", [2.5]],
                                   {"role": "user", "parts": [{"type": "text", "content": "hi"}]}])
def test_otlp_any_value_is_read_back_as_written(value):
    from ingest.intake.formats.otlp import value_of

    assert value_of(any_value(value)) == value


def test_generations_waited_for_past_the_bound_are_settled_without_their_span_and_nothing_is_lost(tmp_path,
                                                                                                 monkeypatch):
    """At most AWAITING_GENERATIONS calls wait for their spans (memory stays bounded when spans never come):
    past it the oldest is stored and its ratings become events as they are, without the span's model and user."""
    from ingest.intake.formats import batch

    monkeypatch.setattr(batch, "AWAITING_GENERATIONS", 2)
    records, spans = [], []
    for i, (messages, chosen, _) in enumerate(hh(4)):
        records += _v2_call(i, None, messages, chosen) + [rating(i, True)]
        spans.append(_v2_span(i, user=f"u-{i}"))
    write_jsonl(tmp_path / "calls.jsonl", [logs_line(records), spans_line(spans)])
    summary = ingest([tmp_path / "calls.jsonl"], tmp_path / "lake", config("otel-genai"), progress=False).to_dict()
    assert (summary["accepted"], summary["quarantined_total"], summary["unrated"]) == (4, 0, 0)
    models = sorted((r["model_version"] or "") for r in lake_rows(tmp_path / "lake"))
    assert models == ["", "", SNAPSHOT, SNAPSHOT]  # the first two waited past the bound; the last two got their span
