"""`--format langfuse` on the shapes Langfuse's own code writes: v3 scores, v2 observations, `@observe` traces,
the UI's traces export, and non-text content.

Each record mirrors the field names of the Langfuse source cited in tests/data/formats/langfuse/README.md, filled
with real HH-RLHF dialogues and PandaLM answers; the lake is checked field by field and against the same
feedback written as a `--format events` file; each variant's hostile records are quarantined with their reason.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from ingest.intake.job import ingest
from ingest.lake import quarantine_table
from test_ingest_formats import assert_same_lake_as_events, config, event, hh, pandalm, rows, write_jsonl

PROJECT = "cm3project0000000000000001"


def quarantined(lake) -> list[tuple[int, str]]:
    table = quarantine_table(lake)
    return sorted(zip(table.column("line").to_pylist(), table.column("reason").to_pylist()))


def details(lake) -> list[str]:
    return quarantine_table(lake).column("detail").to_pylist()


def assert_row(row: dict, *, prompt, completion, desirable, user, conversation, model, timestamp) -> None:
    """One lake row field by field; the user is there, pseudonymised (32 hex digits), never in the clear."""
    assert row["prompt"] == prompt
    assert row["completion"] == completion
    assert row["desirable"] is desirable
    assert row["user_id"] and row["user_id"] != user and len(row["user_id"]) == 32
    int(row["user_id"], 16)
    assert row["conversation_id"] == conversation
    assert row["model_version"] == model
    assert row["timestamp"] == datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def _trace(trace_id, user, session, messages, output=None, start="2026-11-19T00:00:00.000Z", **more):
    return {"id": trace_id, "projectId": PROJECT, "name": "chat", "timestamp": start, "environment": "default",
            "userId": user, "sessionId": session, "release": "v3", "version": None, "input": messages,
            "output": output, "metadata": {}, "tags": [], "public": False, **more}


def _generation(obs_id, trace_id, messages, answer, start, parent=None, model="claude-v1"):
    """An observation of `GET /api/public/observations` (API v1: input and output as JSON values)."""
    return {"id": obs_id, "traceId": trace_id, "projectId": PROJECT, "type": "GENERATION", "name": "chat",
            "startTime": start, "endTime": start, "completionStartTime": None, "model": model,
            "modelParameters": {"temperature": 0.7}, "input": messages,
            "output": {"role": "assistant", "content": answer}, "level": "DEFAULT", "statusMessage": None,
            "parentObservationId": parent, "version": None, "environment": "default",
            "usageDetails": {"input": 10, "output": 20, "total": 30}, "costDetails": {}}


# -- 1. GET /api/public/v3/scores ---------------------------------------------------------------------------

def _v3_score(i, subject, data_type, value, name="thumbs"):
    """fields=details,subject,annotation (packages/shared/src/server/repositories/scores.ts scoreDomainToV3)."""
    return {"id": f"v3-score-{i}", "projectId": PROJECT, "name": name, "dataType": data_type, "value": value,
            "source": "API", "timestamp": f"2026-11-20T04:{i:02d}:00.000Z", "environment": "default",
            "createdAt": f"2026-11-20T04:{i:02d}:00.100Z", "updatedAt": f"2026-11-20T04:{i:02d}:00.100Z",
            "comment": None, "configId": None, "metadata": {}, "authorUserId": None, "queueId": None,
            "subject": subject}


def test_v3_scores_with_polymorphic_values_and_subjects(tmp_path, lake):
    records, scores, expected = [], [], []
    values = {"BOOLEAN": (True, False), "CATEGORICAL": ("thumbs_up", "thumbs_down"), "NUMERIC": (1, -1)}
    for i, (messages, chosen, rejected) in enumerate(hh(6)):
        for side, answer, up in (("c", chosen, True), ("r", rejected, False)):
            k, trace_id, obs_id = 2 * i + (side == "r"), f"trace-{i}{side}", f"obs-{i}{side}"
            start = f"2026-11-19T0{i}:00:00.000Z"
            records += [_trace(trace_id, f"user-{i}", f"session-{i}", messages, start=start),
                        _generation(obs_id, trace_id, messages, answer, start)]
            data_type = ("BOOLEAN", "CATEGORICAL", "NUMERIC")[k % 3]
            subject = ({"kind": "observation", "id": obs_id, "traceId": trace_id} if k % 4 else
                       {"kind": "trace", "id": trace_id})  # a trace subject rates its latest generation
            scores.append(_v3_score(k, subject, data_type, values[data_type][not up]))
            expected.append(event(f"v3-score-{k}", f"2026-11-20T04:{k:02d}:00.000Z", messages, answer, up,
                                  user_id=f"user-{i}", conversation_id=f"session-{i}", model_version="claude-v1"))
    scores.append(_v3_score(40, {"kind": "trace", "id": "trace-0c"}, "NUMERIC", 0.9, name="helpfulness-judge"))
    write_jsonl(tmp_path / "traces.jsonl", records)
    write_jsonl(tmp_path / "scores-v3.jsonl", [  # two pages of GET /api/public/v3/scores, then a lone score
        {"data": scores[:5], "meta": {"limit": 5, "cursor": "eyJ0cyI6IjIwMjYtMTEtMjBUMDQ6MDQ6MDAuMDAwWiJ9"}},
        {"data": scores[5:-1], "meta": {"limit": 50}}, scores[-1]])

    summary = ingest([tmp_path / "traces.jsonl", tmp_path / "scores-v3.jsonl"], lake, config("langfuse"),
                     progress=False).to_dict()
    assert summary["quarantined_total"] == 0, summary["quarantined"]
    assert (summary["accepted"], summary["desirable"], summary["ignored"]) == (12, 6, {"helpfulness-judge": 1})
    assert summary["unrated"] == 0
    assert_same_lake_as_events(tmp_path, lake, expected)
    by_id = {r["event_id"]: r for r in rows(lake)}
    (messages, chosen, _), = hh(1)
    assert_row(by_id["v3-score-0"], prompt=messages, completion=chosen, desirable=True, user="user-0",
               conversation="session-0", model="claude-v1", timestamp="2026-11-20T04:00:00.000Z")


def test_v3_hostile_scores(tmp_path, lake):
    (messages, chosen, _), = hh(1)
    obs = {"kind": "observation", "id": "obs-1", "traceId": "trace-1"}
    ok = _v3_score(1, obs, "BOOLEAN", True)
    bad = [
        (_v3_score(2, {"kind": "dataset", "id": "trace-1"}, "BOOLEAN", True), "unknown_shape"),  # unknown kind
        ({k: v for k, v in _v3_score(3, obs, "BOOLEAN", True).items() if k != "subject"}, "unknown_shape"),
        (_v3_score(4, "trace-1", "BOOLEAN", True), "unknown_shape"),  # subject not an object
        (_v3_score(5, {"kind": "session", "id": "session-1"}, "BOOLEAN", True), "missing_field"),
        (_v3_score(6, {"kind": "observation", "traceId": "trace-1"}, "BOOLEAN", True), "missing_field"),
        (_v3_score(7, obs, "BOOLEAN", "true"), "bad_label"),  # a string, not the JSON bool
        (_v3_score(8, obs, "CATEGORICAL", "meh"), "bad_label"),
        (_v3_score(9, obs, "TEXT", "great answer"), "wrong_type"),
        (_v3_score(10, {"kind": "observation", "id": "obs-elsewhere"}, "BOOLEAN", False), "orphan_feedback"),
    ]
    records = [_trace("trace-1", "user-1", "s-1", messages), _generation("obs-1", "trace-1", messages, chosen,
                                                                         "2026-11-19T00:00:00.000Z"), ok]
    write_jsonl(tmp_path / "hostile.jsonl", records + [r for r, _ in bad])
    summary = ingest([tmp_path / "hostile.jsonl"], lake, config("langfuse"), progress=False).to_dict()
    assert summary["accepted"] == 1
    assert quarantined(lake) == [(i + 4, reason) for i, (_, reason) in enumerate(bad)]
    assert "kind" in details(lake)[0] and "dataset" not in details(lake)[0]  # names the field, not the value


# -- 2. GET /api/public/v2/observations ---------------------------------------------------------------------

def _v2_observation(obs_id, trace_id, user, session, input_text, output_text, start, model="gpt-4o-2024-08-06"):
    """fields=core,basic,io,model: input and output as the raw strings Langfuse stored (always strings)."""
    return {"id": obs_id, "traceId": trace_id, "startTime": start, "endTime": start, "projectId": PROJECT,
            "parentObservationId": None, "type": "GENERATION", "isRootObservation": True, "name": "chat",
            "level": "DEFAULT", "statusMessage": None, "version": None, "environment": "production",
            "bookmarked": False, "public": False, "userId": user, "sessionId": session, "input": input_text,
            "output": output_text, "providedModelName": model, "internalModelId": "cm-gpt-4o",
            "modelParameters": {"temperature": 0.5}, "modelId": "cm-gpt-4o", "inputPrice": "0.0000025",
            "outputPrice": "0.00001", "totalPrice": None}


def _v1_score(i, trace_id, obs_id, value, name="thumbs"):
    return {"id": f"score-{i}", "traceId": trace_id, "observationId": obs_id, "name": name, "source": "API",
            "dataType": "NUMERIC", "value": value, "timestamp": f"2026-11-20T05:{i % 60:02d}:00.000Z"}


def test_v2_observations_with_json_text_io_and_cursor_pages(tmp_path, lake):
    observations, scores, expected = [], [], []
    for i, (messages, chosen, rejected) in enumerate(hh(4)):
        for side, answer, up in (("c", chosen, True), ("r", rejected, False)):
            k, obs_id, start = 2 * i + (side == "r"), f"obs-{i}{side}", f"2026-11-19T1{i}:00:00.000Z"
            observations.append(_v2_observation(
                obs_id, f"trace-{i}{side}", f"user-{i}", f"session-{i}", json.dumps(messages, ensure_ascii=False),
                json.dumps({"role": "assistant", "content": answer}, ensure_ascii=False), start))
            scores.append(_v1_score(k, f"trace-{i}{side}", obs_id, 1 if up else 0))
            expected.append(event(f"score-{k}", f"2026-11-20T05:{k:02d}:00.000Z", messages, answer, up,
                                  user_id=f"user-{i}", conversation_id=f"session-{i}",
                                  model_version="gpt-4o-2024-08-06"))
    for j, (prompt, r1, _, first_better) in enumerate(pandalm(3)):  # string input and output, stored verbatim
        k = 100 + j
        observations.append(_v2_observation(f"obs-p{j}", f"trace-p{j}", "user-p", None, prompt, r1,
                                            f"2026-11-19T20:0{j}:00.000Z", model="llama-7b"))
        scores.append(_v1_score(k, f"trace-p{j}", f"obs-p{j}", 1 if first_better else 0))
        expected.append(event(f"score-{k}", f"2026-11-20T05:{k % 60:02d}:00.000Z", prompt, r1, first_better,
                              user_id="user-p", model_version="llama-7b"))
    scores[-1]["timestamp"] = scores[-2]["timestamp"] = None  # the observation's start time stands in
    expected[-1]["timestamp"], expected[-2]["timestamp"] = "2026-11-19T20:02:00.000Z", "2026-11-19T20:01:00.000Z"
    write_jsonl(tmp_path / "observations-v2.jsonl", [
        {"data": observations[:6], "meta": {"cursor": "eyJsYXN0U3RhcnRUaW1lVG8iOiIyMDI2LTExLTE5In0"}},
        {"data": observations[6:], "meta": {}}])
    write_jsonl(tmp_path / "scores.jsonl", scores)

    summary = ingest([tmp_path / "observations-v2.jsonl", tmp_path / "scores.jsonl"], lake, config("langfuse"),
                     progress=False).to_dict()
    assert summary["quarantined_total"] == 0, summary["quarantined"]
    assert (summary["accepted"], summary["unrated"]) == (len(expected), 0) == (11, 0)
    assert_same_lake_as_events(tmp_path, lake, expected)
    by_id = {r["event_id"]: r for r in rows(lake)}
    (messages, _, rejected), = hh(1)
    assert_row(by_id["score-1"], prompt=messages, completion=rejected, desirable=False, user="user-0",
               conversation="session-0", model="gpt-4o-2024-08-06", timestamp="2026-11-20T05:01:00.000Z")
    prompt, r1, _, _ = pandalm(1)[0]
    assert by_id["score-100"]["prompt"] == [{"role": "user", "content": prompt}]  # text, not JSON of text
    assert by_id["score-100"]["completion"] == r1


def test_v2_observations_whose_io_is_not_understood_are_refused(tmp_path, lake):
    (messages, chosen, _), = hh(1)
    text = json.dumps(messages, ensure_ascii=False)
    answer = json.dumps({"role": "assistant", "content": chosen}, ensure_ascii=False)
    media = "@@@langfuseMedia:type=image/png|id=m1|source=base64_data_uri@@@"  # the SDK's stand-in for the image
    image = [{"role": "user", "content": [{"type": "text", "text": messages[0]["content"]},
                                          {"type": "image_url", "image_url": {"url": media}}]}]
    cases = [
        (text[: len(text) // 2], answer, "unknown_shape"),  # truncated JSON
        (json.dumps({"question": messages[0]["content"]}), answer, "unknown_shape"),  # an object, no messages
        (text, answer[:-5], "unknown_shape"),
        (json.dumps(image), answer, "unsupported_content"),
        (text, json.dumps({"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]}),
         "unsupported_content"),
    ]
    observations = [_v2_observation("obs-ok", "t-ok", "user-1", "s-1", text, answer, "2026-11-19T00:00:00.000Z")]
    observations += [_v2_observation(f"obs-{i}", f"t-{i}", "user-1", "s-1", inp, out, "2026-11-19T00:00:00.000Z")
                     for i, (inp, out, _) in enumerate(cases)]
    write_jsonl(tmp_path / "observations.jsonl", observations)
    write_jsonl(tmp_path / "scores.jsonl", [_v1_score(0, "t-ok", "obs-ok", 1)] +
                [_v1_score(i + 1, f"t-{i}", f"obs-{i}", 1) for i in range(len(cases))])
    summary = ingest([tmp_path / "observations.jsonl", tmp_path / "scores.jsonl"], lake, config("langfuse"),
                     progress=False).to_dict()
    assert summary["accepted"] == 1  # nothing plausible-looking was made of what was not understood
    # An observation not understood is quarantined itself, and its score finds no generation; one holding an
    # image or a tool call is a refused generation, and its score (in the other file) carries the refusal.
    table = quarantine_table(lake)
    assert sorted(zip(table.column("source").to_pylist(), table.column("reason").to_pylist())) == sorted(
        [("observations.jsonl", "unknown_shape")] * 3 + [("scores.jsonl", "orphan_feedback")] * 3
        + [("scores.jsonl", "unsupported_content")] * 2)


# -- 3. the Python SDK's @observe ---------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are a helpful, harmless assistant."}


def _observed_trace(i, messages, answer, nested=True, generation=True, args=None):
    """What `@observe def chat(messages)` calling the OpenAI integration leaves: a trace (input: the call's
    {args, kwargs}), a SPAN for the function, the GENERATION inside it (parentObservationId: the span)."""
    trace_id, span_id, start = f"obs-trace-{i}", f"span-{i}", f"2026-11-19T0{i % 10}:00:00.000Z"
    call = {"args": [messages] if args is None else args, "kwargs": {}}
    span = {"id": span_id, "traceId": trace_id, "projectId": PROJECT, "type": "SPAN", "name": "chat",
            "startTime": start, "endTime": start, "input": call, "output": answer, "parentObservationId": None,
            "level": "DEFAULT", "model": None}
    gen = _generation(f"gen-{i}", trace_id, [SYSTEM] + messages, answer, f"2026-11-19T0{i % 10}:00:01.000Z",
                      parent=span_id, model="gpt-4o-mini-2024-07-18")
    trace = _trace(trace_id, f"user-{i}", f"chat-{i}", call, output=answer, start=start, name="chat")
    observations = [span, gen] if generation else [span]
    return ({**trace, "observations": observations, "scores": []} if nested else trace), observations


def _feedback(i, trace_id, value):
    """The user-feedback docs' trace-level score: traceId only (langfuse.create_score(trace_id=...))."""
    return {"id": f"fb-{i}", "traceId": trace_id, "observationId": None, "sessionId": None, "name": "user-feedback",
            "source": "API", "dataType": "NUMERIC", "value": value, "stringValue": None, "comment": None,
            "timestamp": f"2026-11-20T06:{i:02d}:00.000Z", "environment": "default", "configId": None}


def test_observe_decorator_traces_rate_their_generation(tmp_path, lake):
    lines, expected = [], []
    for i, (messages, chosen, rejected) in enumerate(hh(6, start=10)):
        answer, up = (chosen, True) if i % 2 == 0 else (rejected, False)
        if i < 3:  # GET /api/public/traces/{id}: observations and scores nested
            trace, _ = _observed_trace(i, messages, answer)
            trace["scores"] = [_feedback(i, trace["id"], int(up))]
            lines.append(trace)
        else:  # the same, flat: trace, observations and score on lines of their own (generation last)
            trace, observations = _observed_trace(i, messages, answer, nested=False)
            lines += [_feedback(i, trace["id"], int(up)), trace] + observations
        expected.append(event(f"fb-{i}", f"2026-11-20T06:{i:02d}:00.000Z", [SYSTEM] + messages, answer, up,
                              user_id=f"user-{i}", conversation_id=f"chat-{i}", model_version="gpt-4o-mini-2024-07-18"))
    (messages, chosen, _), = hh(1, start=20)  # no GENERATION: the lone argument and the output stand in
    trace, _ = _observed_trace(7, messages, chosen, generation=False)
    trace["scores"] = [_feedback(7, trace["id"], 1)]
    lines.append(trace)
    expected.append(event("fb-7", "2026-11-20T06:07:00.000Z", messages, chosen, True, user_id="user-7",
                          conversation_id="chat-7", model_version="v3"))
    write_jsonl(tmp_path / "observe.jsonl", lines)

    summary = ingest([tmp_path / "observe.jsonl"], lake, config("langfuse", score_name="user-feedback"),
                     progress=False).to_dict()
    assert summary["quarantined_total"] == 0, summary["quarantined"]
    assert summary["accepted"] == len(expected) == 7
    # A flat trace's own stand-in answer cannot know, in its line, that a generation elsewhere outranks it:
    # it is left unrated (one per flat trace); a nested trace does not offer one beside its generation.
    assert summary["unrated"] == 3
    assert_same_lake_as_events(tmp_path, lake, expected)
    by_id = {r["event_id"]: r for r in rows(lake)}
    (messages, chosen, _), = hh(1, start=10)
    assert_row(by_id["fb-0"], prompt=[SYSTEM] + messages, completion=chosen, desirable=True, user="user-0",
               conversation="chat-0", model="gpt-4o-mini-2024-07-18", timestamp="2026-11-20T06:00:00.000Z")


def test_observe_traces_with_arguments_that_are_no_prompt_are_refused(tmp_path, lake):
    (messages, chosen, _), = hh(1)
    cases = [[{"order_id": 7, "question": messages[0]["content"]}],  # an object, not messages
             [messages[0]["content"], "en-US"]]  # two arguments: which is the prompt?
    lines = []
    for i, args in enumerate(cases):
        trace, _ = _observed_trace(i, messages, chosen, generation=False, args=args)
        trace["scores"] = [_feedback(i, trace["id"], 1)]
        lines.append(trace)
    trace, _ = _observed_trace(5, messages, chosen, generation=True, args=cases[0])  # its generation answers
    trace["scores"] = [_feedback(5, trace["id"], 0)]
    write_jsonl(tmp_path / "observe.jsonl", lines + [trace])
    summary = ingest([tmp_path / "observe.jsonl"], lake, config("langfuse", score_name="user-feedback"),
                     progress=False).to_dict()
    assert summary["accepted"] == 1
    assert quarantined(lake) == [(1, "unknown_shape"), (2, "unknown_shape")]
    assert all("@observe" in d and "GENERATION" in d for d in details(lake))
    assert rows(lake)[0]["prompt"] == [SYSTEM] + messages


# -- 4. the UI's batch export of the traces table (JSONL) ---------------------------------------------------

def _export_row(i, messages, answer, columns, start=None):
    """worker/src/features/database-read-stream/trace-stream.ts: input and output are ClickHouse's strings,
    each score name a column (an array, or null where the trace has none of that name)."""
    return {"id": f"exp-trace-{i}", "timestamp": start or f"2026-11-18T0{i % 10}:00:00.000Z", "name": "chat",
            "userId": f"user-{i}", "sessionId": f"conv-{i}", "release": "2.4.1", "version": None,
            "environment": "production", "tags": ["web"], "bookmarked": False, "public": False,
            "input": json.dumps(messages, ensure_ascii=False) if isinstance(messages, list) else messages,
            "output": answer, "metadata": "{}", "comments": [], **columns}


def test_ui_traces_export_reads_the_score_column(tmp_path, lake):
    lines, expected = [], []
    for i, (messages, chosen, rejected) in enumerate(hh(4, start=30)):
        answer, up = (chosen, True) if i % 2 else (rejected, False)
        value = ["thumbs_up" if up else "thumbs_down"] if i == 3 else [1 if up else 0]
        lines.append(_export_row(i, messages, answer, {"user-feedback": value, "helpfulness-judge": [0.7]}))
        expected.append(event(f"trace-exp-trace-{i}-user-feedback", f"2026-11-18T0{i}:00:00.000Z", messages,
                              answer, up, user_id=f"user-{i}", conversation_id=f"conv-{i}", model_version="2.4.1"))
    prompt, r1, _, first_better = pandalm(1)[0]  # a string input is stored (and exported) as is
    lines.append(_export_row(5, prompt, r1, {"user-feedback": [int(first_better)], "helpfulness-judge": None}))
    expected.append(event("trace-exp-trace-5-user-feedback", "2026-11-18T05:00:00.000Z", prompt, r1, first_better,
                          user_id="user-5", conversation_id="conv-5", model_version="2.4.1"))
    lines.append(_export_row(6, prompt, r1, {"user-feedback": None, "helpfulness-judge": [0.2]}))  # not rated
    write_jsonl(tmp_path / "lf-traces-export.jsonl", lines)

    summary = ingest([tmp_path / "lf-traces-export.jsonl"], lake, config("langfuse", score_name="user-feedback"),
                     progress=False).to_dict()
    assert summary["quarantined_total"] == 0, summary["quarantined"]
    assert (summary["lines"], summary["accepted"], summary["unrated"]) == (6, 5, 1)
    assert_same_lake_as_events(tmp_path, lake, expected)
    by_id = {r["event_id"]: r for r in rows(lake)}
    (messages, chosen, _), = hh(1, start=30)
    row = by_id["trace-exp-trace-1-user-feedback"]
    assert_row(row, prompt=hh(2, start=30)[1][0], completion=hh(2, start=30)[1][1], desirable=True, user="user-1",
               conversation="conv-1", model="2.4.1", timestamp="2026-11-18T01:00:00.000Z")


def test_ui_traces_export_hostile_rows(tmp_path, lake):
    (messages, chosen, _), = hh(1)
    text = json.dumps(messages, ensure_ascii=False)
    ok = _export_row(0, messages, chosen, {"user-feedback": [1]})
    bad = [
        ({**_export_row(1, messages, chosen, {}), "user-feedback": 1}, "unknown_shape"),  # not an array
        ({**_export_row(2, messages, chosen, {}), "user-feedback": "[1]"}, "unknown_shape"),
        (_export_row(3, messages, chosen, {"user-feedback": [1, 0]}), "bad_label"),  # two ratings merged
        (_export_row(4, messages, chosen, {"user-feedback": [0.5]}), "bad_label"),  # an average of +1 and 0
        ({**_export_row(5, messages, chosen, {"user-feedback": [1]}), "input": text[:40]}, "unknown_shape"),
        (_export_row(6, json.dumps({"args": [{"order_id": 7}], "kwargs": {}}), chosen, {"user-feedback": [1]}),
         "unknown_shape"),
        (_export_row(7, messages, json.dumps({"role": "assistant", "content": [
            {"type": "output_audio", "data": "@@@langfuseMedia:type=audio/wav|id=a1|source=bytes@@@"}]}),
            {"user-feedback": [0]}), "unsupported_content"),
    ]
    write_jsonl(tmp_path / "export.jsonl", [ok] + [r for r, _ in bad])
    summary = ingest([tmp_path / "export.jsonl"], lake, config("langfuse", score_name="user-feedback"),
                     progress=False).to_dict()
    assert summary["accepted"] == 1
    assert quarantined(lake) == [(i + 2, reason) for i, (_, reason) in enumerate(bad)]
    assert summary["lines"] == summary["accepted"] + summary["quarantined_total"]
    raws = quarantine_table(lake).column("raw").to_pylist()
    assert all(b'"userId"' in raw and not re.search(rb'"user-\d', raw) for raw in raws)  # pseudonymised there too


# -- non-text content in nested traces ----------------------------------------------------------------------

def test_images_audio_and_tool_calls_are_refused_never_dropped(tmp_path, lake):
    (messages, chosen, _), = hh(1, start=50)
    question = messages[-1]["content"]
    prompts = {
        "image part": messages[:-1] + [{"role": "user", "content": [
            {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}],
        "media reference": messages[:-1] + [{"role": "user", "content": question + " @@@langfuseMedia:type=image/"
                                             "jpeg|id=123|source=bytes@@@"}],
        "tool result": messages + [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}],
        "tool definitions": {"tools": [{"type": "function", "function": {"name": "lookup"}}], "messages": messages},
    }
    lines = []
    for i, prompt in enumerate(prompts.values()):
        gen = _generation(f"o{i}", f"t{i}", prompt, chosen, "2026-11-19T00:00:00.000Z")
        lines.append({**_trace(f"t{i}", "user-1", "s", prompt), "observations": [gen],
                      "scores": [_v1_score(i, f"t{i}", f"o{i}", 1)]})
    gen = _generation("o9", "t9", messages, chosen, "2026-11-19T00:00:00.000Z")
    gen["output"] = {"role": "assistant", "content": [{"type": "text", "text": chosen},
                                                      {"type": "tool_use", "id": "tu1", "name": "search", "input": {}}]}
    lines.append({**_trace("t9", "user-1", "s", messages), "observations": [gen],
                  "scores": [_v1_score(9, "t9", None, 1)]})  # trace-level: its only generation is refused
    write_jsonl(tmp_path / "media.jsonl", lines)
    summary = ingest([tmp_path / "media.jsonl"], lake, config("langfuse"), progress=False).to_dict()
    assert summary["accepted"] == 0
    assert quarantined(lake) == [(i + 1, "unsupported_content") for i in range(len(lines))]
    assert summary["lines"] == summary["quarantined_total"]  # one per rating: the refused generation rides along


# -- a score of a refused generation in another file or a later run -----------------------------------------

def _refused_generations() -> dict:
    """Per variant: (its records, no score among them; the score rating it; where the refusal says it sits)."""
    (messages, chosen, _), = hh(1, start=50)
    start = "2026-11-19T00:00:00.000Z"
    image = messages[:-1] + [{"role": "user", "content": [
        {"type": "text", "text": messages[-1]["content"]},
        {"type": "image_url", "image_url": {"url": "https://x/c.png"}}]}]
    tool_call = json.dumps({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]})
    media = {"role": "assistant", "content": chosen + " @@@langfuseMedia:type=audio/wav|id=a1|source=bytes@@@"}
    observed, _ = _observed_trace(0, image[len(messages) - 1:], chosen)  # its GENERATION holds the image
    last = len(messages) - 1
    return {
        "v1 observation": ([_generation("o1", "t1", image, chosen, start)], _v1_score(1, "t1", "o1", 1),
                           f"a content part of type image_url at observation input[{last}].content[1]"),
        "v2 observation": ([{"data": [_v2_observation("o2", "t2", "user-2", "s-2", json.dumps(messages), tool_call,
                                                      start)], "meta": {}}], _v1_score(2, "t2", "o2", 0),
                           "a non-empty tool_calls at observation output.tool_calls"),
        "v3 score on a trace's output": ([_trace("t3", "user-3", "s-3", messages, output=media)],
                                         _v3_score(3, {"kind": "trace", "id": "t3"}, "BOOLEAN", True),
                                         "a Langfuse media reference in trace output.content"),
        "@observe trace": ([observed], _feedback(4, observed["id"], 1) | {"name": "thumbs"},
                           "a content part of type image_url at observation input[1].content[1]"),
    }


REFUSED_GENERATIONS = _refused_generations()


@pytest.mark.parametrize("later_run", [False, True], ids=["second file", "later run"])
@pytest.mark.parametrize("variant", sorted(REFUSED_GENERATIONS))
def test_a_score_of_a_refused_generation_elsewhere_is_unsupported_content(tmp_path, lake, variant, later_run):
    """The generation is kept as refused (LAKE/_generations), so its score, wherever it comes, says why it is not
    an event, naming where the content sits, instead of waiting as an orphan for a generation that never comes."""
    records, score, where = REFUSED_GENERATIONS[variant]
    write_jsonl(tmp_path / "traces.jsonl", records)
    write_jsonl(tmp_path / "scores.jsonl", [score])
    if later_run:
        first = ingest([tmp_path / "traces.jsonl"], lake, config("langfuse"), progress=False).to_dict()
        assert (first["accepted"], first["quarantined_total"]) == (0, 0)
        summary = ingest([tmp_path / "scores.jsonl"], lake, config("langfuse"), progress=False).to_dict()
    else:
        summary = ingest([tmp_path / "traces.jsonl", tmp_path / "scores.jsonl"], lake, config("langfuse"),
                         progress=False).to_dict()
    assert (summary["accepted"], summary["quarantined"]) == (0, {"unsupported_content": 1})
    table = quarantine_table(lake)
    assert list(zip(table.column("source").to_pylist(), table.column("line").to_pylist())) == [("scores.jsonl", 1)]
    assert details(lake) == [f"the generation it rates holds {where}: thumbs keeps text only, and dropping it would "
                             "change what was rated"]
