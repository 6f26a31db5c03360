"""Foreign formats on the real data (tests/data): OpenTelemetry GenAI, LangSmith and OpenAI stored completions."""

from __future__ import annotations

import json

from test_ingest_formats import assert_same_lake_as_events, config, event, hh, pandalm, reasons, rows, write_jsonl

from ingest.intake.formats.otlp import any_value
from ingest.intake.job import ingest
from ingest.lake import quarantine_table

# -- OpenTelemetry GenAI ----------------------------------------------------------------------------------

NS0 = 1_763_600_000_000_000_000  # 2025-11-20T00:53:20Z in unix nanoseconds


def _attrs(**named):
    return [{"key": k.replace("__", "."), "value": any_value(v)} for k, v in named.items() if v is not None]


def _parts(messages):
    return [{"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]} for m in messages]


def _iso(ns: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ns // 1000 / 1e6, timezone.utc).isoformat()


def _evaluation(ns, value=None, label=None, name="thumbs", response_id=None):
    return {"timeUnixNano": str(ns), "name": "gen_ai.evaluation.result",
            "attributes": _attrs(gen_ai__evaluation__name=name, gen_ai__evaluation__score__value=value,
                                 gen_ai__evaluation__score__label=label, gen_ai__response__id=response_id)}


def _otel_world(tmp_path):
    """Spans in batches of 6 per line; half rated by span events, half by log records in another file."""
    spans, logs, expected = [], [], []
    for i, (messages, chosen, rejected) in enumerate(hh(18)):
        system = messages[0]["content"] if i % 4 == 0 else None  # some carry system instructions
        for side, answer, up in (("c", chosen, True), ("r", rejected, False)):
            k = 2 * i + (side == "r")
            span_id, response_id, start = f"{k:016x}", f"resp-{k}", NS0 + k * 1_000_000_000
            inputs = _parts(messages)
            as_string = k % 2 == 0  # the conventions allow JSON strings or structured attribute values
            attributes = _attrs(
                gen_ai__operation__name="chat", gen_ai__request__model="claude-v1",
                gen_ai__response__id=response_id, gen_ai__conversation__id=f"conv-{i}", user__id=f"u-{i % 4}",
                gen_ai__input__messages=json.dumps(inputs) if as_string else inputs,
                gen_ai__output__messages=json.dumps(_parts([{"role": "assistant", "content": answer}])) if as_string
                else [dict(p, finish_reason="stop") for p in _parts([{"role": "assistant", "content": answer}])],
                gen_ai__system_instructions=json.dumps([{"type": "text", "content": system}]) if system else None)
            span = {"traceId": f"{i:032x}", "spanId": span_id, "name": "chat claude-v1", "kind": 3,
                    "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 5), "attributes": attributes,
                    "events": [], "status": {}}
            rated_at = start + 60_000_000_000
            if i < 9:
                ev = _evaluation(rated_at, value=1.0 if up else 0.0)
                span["events"] = [ev, _evaluation(rated_at, value=0.9, name="relevance")]
            else:
                logs.append({"timeUnixNano": str(rated_at), "eventName": "gen_ai.evaluation.result",
                             "traceId": span["traceId"], "severityNumber": 9, "body": {},
                             "attributes": _attrs(gen_ai__evaluation__name="thumbs",
                                                  gen_ai__evaluation__score__label="thumbs_up" if up else "thumbs_down",
                                                  gen_ai__response__id=response_id)})
            spans.append(span)
            prompt = ([{"role": "system", "content": system}] if system else []) + messages
            expected.append((span_id if i < 9 else response_id, rated_at, up,
                             event(None, _iso(rated_at), prompt, answer, up, user_id=f"u-{i % 4}",
                                   conversation_id=f"conv-{i}", model_version="claude-v1")))
    resource = {"attributes": _attrs(service__name="chat-app")}
    batches = [{"resourceSpans": [{"resource": resource, "scopeSpans": [
        {"scope": {"name": "opentelemetry.instrumentation.openai"}, "spans": spans[j:j + 6]}]}]}
        for j in range(0, len(spans), 6)]
    write_jsonl(tmp_path / "spans.jsonl", batches)
    write_jsonl(tmp_path / "evaluations.jsonl", [{"resourceLogs": [{"resource": resource, "scopeLogs": [
        {"scope": {"name": "evals"}, "logRecords": logs[j:j + 5]}]}]} for j in range(0, len(logs), 5)])
    return [tmp_path / "spans.jsonl", tmp_path / "evaluations.jsonl"], expected


def test_otel_spans_with_span_events_and_log_records_in_another_file(tmp_path, lake):
    sources, expected = _otel_world(tmp_path)
    summary = ingest(sources, lake, config("otel-genai"), progress=False).to_dict()
    assert (summary["accepted"], summary["quarantined_total"]) == (36, 0)
    assert summary["ignored"] == {"relevance": 18} and summary["lines"] == 6 + 4
    got = {(r["completion"], r["timestamp"].isoformat()): r["event_id"] for r in rows(lake)}
    events = []
    for _, when, _, e in expected:  # the ids are hashes: take them from the lake, check everything else
        e["event_id"] = got[(e["completion"], e["timestamp"])]
        events.append(e)
    assert len({e["event_id"] for e in events}) == 36
    assert_same_lake_as_events(tmp_path, lake, events)
    with_system = [r for r in rows(lake) if r["prompt"][0]["role"] == "system"]
    assert len(with_system) == 10


def test_otel_hostile_spans_and_evaluations(tmp_path, lake):
    (messages, chosen, _), = hh(1)
    span = {"traceId": "a" * 32, "spanId": "b" * 16, "startTimeUnixNano": str(NS0),
            "attributes": _attrs(gen_ai__input__messages=_parts(messages), gen_ai__response__id="r-1",
                                 gen_ai__output__messages=_parts([{"role": "assistant", "content": chosen}])),
            "events": [_evaluation(NS0 + 1, value=1)]}

    def log(**attrs):
        return {"timeUnixNano": str(NS0 + 2), "eventName": "gen_ai.evaluation.result", "attributes": _attrs(**attrs)}

    bad_logs = [
        (log(gen_ai__evaluation__score__value=1.0, gen_ai__response__id="r-1"), "missing_field"),  # no name
        (log(gen_ai__evaluation__name="thumbs", gen_ai__evaluation__score__value=1.0), "missing_field"),  # no key
        (log(gen_ai__evaluation__name="thumbs", gen_ai__evaluation__score__label="maybe",
             gen_ai__response__id="r-1"), "bad_label"),
        (log(gen_ai__evaluation__name="thumbs", gen_ai__evaluation__score__value=0.5,
             gen_ai__response__id="r-1"), "bad_label"),
        (log(gen_ai__evaluation__name="thumbs", gen_ai__response__id="r-1"), "missing_field"),  # no score
        (log(gen_ai__evaluation__name="thumbs", gen_ai__evaluation__score__value=1.0,
             gen_ai__response__id="r-unknown"), "orphan_feedback"),
        ({**log(gen_ai__evaluation__name="thumbs", gen_ai__evaluation__score__value=1.0,
                gen_ai__response__id="r-1"), "timeUnixNano": "soon"}, "bad_timestamp"),
        ({"eventName": "gen_ai.evaluation.result", "attributes": {"not": "a list"}}, "wrong_type"),
    ]
    ignored = log(gen_ai__evaluation__name="toxicity", gen_ai__evaluation__score__value=0.0, gen_ai__response__id="r-1")
    lines = [{"resourceSpans": [{"scopeSpans": [{"spans": [span, {**span, "spanId": "c" * 16,
                                                                  "startTimeUnixNano": "never"}]}]}]},
             {"resourceSpans": [{"scopeSpans": {"spans": "not a list"}}]}]
    lines += [r for r, _ in bad_logs] + [ignored, {"something": "else"}]
    write_jsonl(tmp_path / "hostile.jsonl", lines)
    summary = ingest([tmp_path / "hostile.jsonl"], lake, config("otel-genai"), progress=False).to_dict()
    assert summary["accepted"] == 1 and summary["ignored"] == {"toxicity": 1}
    expected = {1: "bad_timestamp", 2: "wrong_type", **{i + 3: reason for i, (_, reason) in enumerate(bad_logs)},
                len(lines): "missing_field"}
    assert reasons(lake) == expected
    assert summary["accepted"] + summary["quarantined_total"] + 1 == 1 + 1 + 1 + len(bad_logs) + 1 + 1


# -- LangSmith --------------------------------------------------------------------------------------------

def _lc_message(role, content):
    cls = {"user": "HumanMessage", "assistant": "AIMessage", "system": "SystemMessage"}[role]
    return {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", cls],
            "kwargs": {"content": content, "type": {"user": "human", "assistant": "ai"}.get(role, role)}}


def _langsmith_world(tmp_path):
    runs, feedback, expected = [], [], []
    for i, (prompt, r1, r2, first_better) in enumerate(pandalm(16)):
        root = f"root-{i}"
        runs.append({"id": root, "trace_id": root, "name": "RunnableSequence", "run_type": "chain",
                     "inputs": {"question": prompt}, "outputs": {"output": r1}, "start_time": "2026-11-19T10:00:00"})
        for side, answer in (("1", r1), ("2", r2)):
            run_id = f"llm-{i}-{side}"
            start = f"2026-11-19T10:00:0{side}.000000"
            if i % 2:  # a LangChain chat model run
                inputs = {"messages": [[_lc_message("user", prompt)]]}
                outputs = {"generations": [[{"text": answer, "type": "ChatGeneration",
                                             "message": _lc_message("assistant", answer)}]], "llm_output": None}
            else:  # a traced OpenAI call
                inputs = {"messages": [{"role": "user", "content": prompt}], "model": "gpt-4o-mini"}
                outputs = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                        "finish_reason": "stop"}]}
            runs.append({"id": run_id, "trace_id": root, "parent_run_id": root, "name": "ChatOpenAI",
                         "run_type": "llm", "inputs": inputs, "outputs": outputs, "start_time": start,
                         "extra": {"metadata": {"user_id": f"user-{i % 3}", "thread_id": f"thread-{i}",
                                                "ls_model_name": "gpt-4o-mini"}}})
        # thumbs on each llm run; on odd items a second thumbs on the root run (the trace's latest llm run)
        for side, up in (("1", first_better), ("2", not first_better)):
            fid = f"fb-{i}-{side}"
            value = {"score": 1 if up else 0} if i % 3 else {"score": None, "value": "up" if up else "down"}
            feedback.append({"id": fid, "run_id": f"llm-{i}-{side}", "trace_id": root, "key": "thumbs",
                             **value, "comment": None, "created_at": f"2026-11-20T0{i % 10}:00:00.000000+00:00",
                             "feedback_source": {"type": "api", "metadata": {}}})
            expected.append(event(fid, f"2026-11-20T0{i % 10}:00:00.000000+00:00", prompt, r1 if side == "1" else r2,
                                  up, user_id=f"user-{i % 3}", conversation_id=f"thread-{i}",
                                  model_version="gpt-4o-mini"))
        feedback.append({"id": f"fb-{i}-judge", "run_id": root, "key": "correctness", "score": 0.4,
                         "created_at": "2026-11-20T00:00:00Z"})
        if i % 2:
            feedback.append({"id": f"fb-{i}-root", "run_id": root, "key": "thumbs", "score": True,
                             "created_at": "2026-11-20T09:00:00Z"})
            expected.append(event(f"fb-{i}-root", "2026-11-20T09:00:00Z", prompt, r2, True, user_id=f"user-{i % 3}",
                                  conversation_id=f"thread-{i}", model_version="gpt-4o-mini"))
    write_jsonl(tmp_path / "runs.jsonl", runs)
    write_jsonl(tmp_path / "feedback.jsonl", feedback)
    return [tmp_path / "feedback.jsonl", tmp_path / "runs.jsonl"], expected, len(feedback)


def test_langsmith_runs_and_feedback_in_separate_files(tmp_path, lake):
    sources, expected, n_feedback = _langsmith_world(tmp_path)  # feedback first: the join waits for the runs
    summary = ingest(sources, lake, config("langsmith"), progress=False).to_dict()
    assert summary["quarantined_total"] == 0, summary["quarantined"]
    assert summary["accepted"] == len(expected) == 16 * 2 + 8
    assert summary["accepted"] + sum(summary["ignored"].values()) == n_feedback
    assert summary["unrated"] == 0
    assert_same_lake_as_events(tmp_path, lake, expected)


def test_langsmith_hostile_feedback_and_runs(tmp_path, lake):
    (prompt, r1, _, _), = pandalm(1)
    run = {"id": "r1", "trace_id": "r1", "run_type": "llm", "start_time": "2026-11-19T00:00:00Z",
           "inputs": {"messages": [{"role": "user", "content": prompt}]},
           "outputs": {"choices": [{"message": {"role": "assistant", "content": r1}}]}}
    ok = {"id": "f1", "run_id": "r1", "key": "thumbs", "score": 1, "created_at": "2026-11-20T00:00:00Z"}
    bad = [
        ({**ok, "id": "f2", "run_id": None}, "missing_field"),
        ({**ok, "id": "f3", "run_id": "r-gone"}, "orphan_feedback"),
        ({**ok, "id": "f4", "score": "great"}, "bad_label"),
        ({**ok, "id": "f5", "score": None, "value": None}, "missing_field"),
        ({**ok, "id": "f6", "run_id": 7}, "wrong_type"),
        ({**ok, "id": "f7", "created_at": 1700000000}, "bad_timestamp"),
        ({**run, "id": "r2", "inputs": "a string"}, "wrong_type"),
        ({**run, "id": "r3", "inputs": {"question": prompt}}, "missing_field"),
        ({"neither": "run nor feedback"}, "unknown_shape"),
    ]
    write_jsonl(tmp_path / "hostile.jsonl", [run, ok, {**ok, "id": "f-x", "key": "correctness"}] + [r for r, _ in bad])
    summary = ingest([tmp_path / "hostile.jsonl"], lake, config("langsmith"), progress=False).to_dict()
    assert summary["accepted"] == 1 and summary["ignored"] == {"correctness": 1}
    assert reasons(lake) == {i + 4: reason for i, (_, reason) in enumerate(bad)}
    assert summary["lines"] == 1 + summary["accepted"] + 1 + summary["quarantined_total"]


# -- OpenAI stored completions ----------------------------------------------------------------------------

def _completion(cid, created, messages, answer, thumbs, **metadata):
    meta = {**({"thumbs": thumbs} if thumbs is not None else {}), **metadata}
    return {"object": "chat.completion", "id": cid, "created": created, "model": "gpt-4o-mini-2024-07-18",
            "request": {"messages": messages}, "metadata": meta, "service_tier": "default",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer, "refusal": None},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}


def test_openai_stored_completions_with_thumbs_in_metadata(tmp_path, lake):
    from datetime import datetime, timezone

    lines, expected, page = [], [], []
    for i, (messages, chosen, rejected) in enumerate(hh(20)):
        created = 1_763_600_000 + 60 * i
        when = datetime.fromtimestamp(created, timezone.utc).isoformat()
        for side, answer, up in (("c", chosen, True), ("r", rejected, False)):
            record = _completion(f"chatcmpl-{i}{side}", created, messages, answer, "up" if up else "down",
                                 user_id=f"u-{i % 6}", conversation_id=f"c-{i}")
            (page if i >= 16 else lines).append(record)
            expected.append(event(f"chatcmpl-{i}{side}", when, messages, answer, up, user_id=f"u-{i % 6}",
                                  conversation_id=f"c-{i}", model_version="gpt-4o-mini-2024-07-18"))
        if len(messages) >= 3:  # the same chat's first turn, stored as its own completion and thumbed down
            first = _completion(f"chatcmpl-{i}-turn1", created - 30, messages[:1], messages[1]["content"], "down")
            lines.append(first)
            expected.append(event(first["id"], datetime.fromtimestamp(created - 30, timezone.utc).isoformat(),
                                  messages[:1], messages[1]["content"], False, model_version=first["model"]))
        lines.append(_completion(f"chatcmpl-{i}-unrated", created, messages, chosen, None))
    lines.append({"object": "list", "data": page, "first_id": page[0]["id"], "last_id": page[-1]["id"],
                  "has_more": False})
    write_jsonl(tmp_path / "completions.jsonl", lines)
    summary = ingest([tmp_path / "completions.jsonl"], lake, config("openai"), progress=False).to_dict()
    n_turn1 = sum(1 for e in expected if e["event_id"].endswith("turn1"))
    assert n_turn1 > 3
    assert (summary["accepted"], summary["unrated"], summary["quarantined_total"]) == (40 + n_turn1, 20, 0)
    assert summary["lines"] == len(lines) == summary["accepted"] - len(page) + 1 + summary["unrated"]
    assert_same_lake_as_events(tmp_path, lake, expected)


def test_openai_hostile_completions(tmp_path, lake):
    (messages, chosen, _), = hh(1)
    ok = _completion("chatcmpl-ok", 1_763_600_000, messages, chosen, "up")
    bad = [
        ({**ok, "id": "c2", "metadata": {"thumbs": "meh"}}, "bad_label"),
        ({k: v for k, v in ok.items() if k != "request"}, "missing_field"),
        ({**ok, "id": "c4", "choices": []}, "wrong_type"),
        ({**ok, "id": "c5", "metadata": ["thumbs", "up"]}, "wrong_type"),
        ({**ok, "id": "c6", "created": "yesterday"}, "bad_timestamp"),
        ({**ok, "id": None}, "missing_field"),
        ({**ok, "id": "c8", "request": {"messages": [{"role": "tool", "content": "{}"}]}}, "bad_prompt"),
        ({**ok, "id": "c9", "choices": [{"message": {"role": "assistant", "content": 42}}]}, "wrong_type"),
        ({**ok}, "duplicate_event_id"),
    ]
    write_jsonl(tmp_path / "hostile.jsonl", [ok] + [r for r, _ in bad])
    summary = ingest([tmp_path / "hostile.jsonl"], lake,
                     config("openai", openai_metadata_key="thumbs"), progress=False).to_dict()
    assert summary["lines"] == summary["accepted"] + summary["quarantined_total"] == 1 + len(bad)
    assert reasons(lake) == {i + 2: reason for i, (_, reason) in enumerate(bad)}


def test_user_ids_under_the_tools_names_are_pseudonymised_in_quarantine(tmp_path):
    (messages, chosen, _), = hh(1)
    secret = "alice@corp.example"
    cases = {
        "langfuse": [{"id": "t1", "userId": secret, "input": "q", "output": "a", "observations": "not a list"},
                     {"id": "s1", "traceId": "t1", "name": "thumbs", "value": 7, "authorUserId": secret}],
        "otel-genai": [{"resourceSpans": [{"scopeSpans": [{"spans": [{
            "spanId": "ab", "startTimeUnixNano": "later",
            "attributes": _attrs(user__id=secret, gen_ai__input__messages=_parts(messages))}]}]}]}],
        "openai": [{**_completion("c1", "yesterday", messages, chosen, "up"), "request": {
            "messages": messages, "user": secret}}],
        "langsmith": [{"id": "f1", "run_id": "r-x", "key": "thumbs", "score": 1, "created_at": "2026-11-20T00:00:00Z",
                       "feedback_source": {"type": "app", "user_id": secret}}],
    }
    for fmt, records in cases.items():
        write_jsonl(tmp_path / f"{fmt}.jsonl", records)
        lake = tmp_path / f"lake-{fmt}"
        summary = ingest([tmp_path / f"{fmt}.jsonl"], lake, config(fmt), progress=False).to_dict()
        assert summary["quarantined_total"] == len(records), (fmt, summary["quarantined"])
        for raw in quarantine_table(lake).column("raw").to_pylist():
            assert b"alice" not in raw, (fmt, raw)


def test_scrub_pii_masks_and_counts_in_foreign_records(tmp_path, lake):
    from dataclasses import replace

    messages = [{"role": "user", "content": "mail me at bob@example.com"}]
    record = _completion("c1", 1_763_600_000, messages, "Call +1 415-555-2671 instead.", "down")
    write_jsonl(tmp_path / "pii.jsonl", [record])
    summary = ingest([tmp_path / "pii.jsonl"], lake, replace(config("openai"), scrub_pii=True), progress=False)
    assert (summary.total("emails_masked"), summary.total("phones_masked")) == (1, 1)
    row, = rows(lake)
    assert (row["prompt"][0]["content"], row["completion"]) == ("mail me at [EMAIL]", "Call [PHONE] instead.")
