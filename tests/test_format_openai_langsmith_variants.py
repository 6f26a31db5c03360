"""The OpenAI and LangSmith shapes beyond one record per line, on real HH-RLHF and PandaLM text.

Each variant is built here with the tool's own field names (tests/data/formats/openai/README.md and
tests/data/formats/langsmith/README.md cite the source file of each shape), ingested, and the lake checked
field by field: prompt messages, completion, label, pseudonymised user, conversation, model and time.
Each has its hostile case: what thumbs cannot hold as text is quarantined as `unsupported_content`, a shape
it does not read as `unknown_shape`, and the records of one line (an API page) are each counted on their own
under that line's number.

    pytest -q tests/test_format_openai_langsmith_variants.py
"""

from __future__ import annotations

from datetime import datetime, timezone

from test_ingest_formats import config, hh, pandalm, rows, write_jsonl

from ingest.intake.job import ingest
from ingest.lake import quarantine_table
from ingest.privacy import INSECURE_DEV_KEY, Pseudonymizer

PSEUDONYM = Pseudonymizer(INSECURE_DEV_KEY.encode("utf-8"))
MODEL = "gpt-4o-mini-2024-07-18"


def by_id(lake) -> dict[str, dict]:
    return {r["event_id"]: r for r in rows(lake, keep_source=True)}


def quarantined(lake) -> list[tuple[int, str]]:
    """(line, reason) of every quarantined row, repeats kept: a page line may hold several."""
    table = quarantine_table(lake)
    return sorted(zip(table.column("line").to_pylist(), table.column("reason").to_pylist()))


def details(lake) -> list[str]:
    return quarantine_table(lake).column("detail").to_pylist()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


# -- OpenAI stored completions ------------------------------------------------------------------------------

def _stored(cid, created, answer, thumbs=None, input_user=None, messages=None, **metadata):
    """A completion as GET /v1/chat/completions/{id} returns it (every field of the API reference's example),
    with the thumbs (and anything else the app set) in `metadata`, and `request.messages` attached."""
    record = {"object": "chat.completion", "id": cid, "model": MODEL, "created": created,
              "request_id": f"req_{cid}", "tool_choice": None,
              "usage": {"total_tokens": 31, "completion_tokens": 18, "prompt_tokens": 13},
              "seed": 4944116822809979520, "top_p": 1.0, "temperature": 1.0, "presence_penalty": 0.0,
              "frequency_penalty": 0.0, "system_fingerprint": "fp_50cad350e4", "input_user": input_user,
              "service_tier": "default", "tools": None,
              "metadata": {**({"thumbs": thumbs} if thumbs is not None else {}), **metadata},
              "choices": [{"index": 0, "message": {"content": answer, "role": "assistant", "tool_calls": None,
                                                   "function_call": None, "refusal": None, "annotations": []},
                           "finish_reason": "stop", "logprobs": None}],
              "response_format": None}
    if messages is not None:
        record["request"] = {"messages": messages}
    return record


def _messages_page(cid, messages, has_more=False):
    """What GET /v1/chat/completions/{id}/messages returns for a text-only request."""
    data = [{"id": f"{cid}-{k}", "role": m["role"], "content": m["content"], "name": None, "content_parts": None}
            for k, m in enumerate(messages)]
    return {"object": "list", "data": data, "first_id": data[0]["id"], "last_id": data[-1]["id"],
            "has_more": has_more}


def test_openai_user_only_in_input_user_and_messages_from_the_messages_endpoint(tmp_path, lake):
    lines, expected = [], {}
    dialogues = hh(6)
    for i, (messages, chosen, rejected) in enumerate(dialogues):
        created = 1_763_600_000 + 60 * i
        for side, answer, up in (("c", chosen, True), ("r", rejected, False)):
            cid = f"chatcmpl-{i}{side}"
            # the page itself on even dialogues, its data list on odd ones
            attached = _messages_page(cid, messages) if i % 2 == 0 else _messages_page(cid, messages)["data"]
            lines.append(_stored(cid, created, answer, "up" if up else "down", input_user=f"end-user-{i % 3}",
                                 messages=attached, conversation_id=f"c-{i}"))
            expected[cid] = (len(lines), messages, answer, up, f"end-user-{i % 3}", f"c-{i}", created)
    # metadata.user_id still wins over input_user; a completion with no user anywhere has none
    (messages, chosen, _), = hh(1, start=40)
    lines.append(_stored("chatcmpl-meta", 1_763_700_000, chosen, "up", input_user="end-user-x",
                         messages=messages, user_id="app-user-7"))
    expected["chatcmpl-meta"] = (len(lines), messages, chosen, True, "app-user-7", None, 1_763_700_000)
    lines.append(_stored("chatcmpl-nouser", 1_763_700_060, chosen, "down", messages=messages))
    expected["chatcmpl-nouser"] = (len(lines), messages, chosen, False, None, None, 1_763_700_060)
    write_jsonl(tmp_path / "completions.jsonl", lines)

    summary = ingest([tmp_path / "completions.jsonl"], lake, config("openai"), progress=False).to_dict()
    assert (summary["accepted"], summary["quarantined_total"], summary["unrated"]) == (len(expected), 0, 0)
    got = by_id(lake)
    assert set(got) == set(expected)
    for cid, (line, messages, answer, up, user, conversation, created) in expected.items():
        row = got[cid]
        assert row["prompt"] == [{"role": m["role"], "content": m["content"]} for m in messages]
        assert row["completion"] == answer
        assert row["desirable"] is up
        assert row["user_id"] == (PSEUDONYM(user) if user else None)
        assert row["conversation_id"] == conversation
        assert row["model_version"] == MODEL
        assert row["timestamp"] == datetime.fromtimestamp(created, timezone.utc)
        assert (row["source"], row["source_line"]) == ("completions.jsonl", line)


def test_openai_hostile_users_pages_and_shapes(tmp_path, lake):
    (messages, chosen, _), = hh(1)
    secret = "carol@corp.example"
    ok = _stored("chatcmpl-ok", 1_763_600_000, chosen, "up", input_user=secret, messages=messages)
    message_alone = _messages_page("chatcmpl-ok", messages)["data"][0]
    bad = [
        ({**ok, "id": "c2", "input_user": 7}, "wrong_type"),
        ({**ok, "id": "c3", "request": {"messages": _messages_page("c3", messages, has_more=True)}}, "missing_field"),
        ({**ok, "id": "c4", "object": "response"}, "unknown_shape"),  # a Responses API object
        ({k: v for k, v in ok.items() if k != "object"} | {"id": "c5"}, "unknown_shape"),
        (message_alone, "unknown_shape"),  # the messages page's item on a line of its own
        ({**ok, "id": "c7", "choices": ok["choices"] * 2}, "unknown_shape"),  # n=2: which one was rated?
        ({"object": "list", "data": "none"}, "unknown_shape"),
    ]
    write_jsonl(tmp_path / "hostile.jsonl", [ok] + [r for r, _ in bad])
    summary = ingest([tmp_path / "hostile.jsonl"], lake, config("openai"), progress=False).to_dict()
    assert summary["lines"] == summary["accepted"] + summary["quarantined_total"] == 1 + len(bad)
    assert quarantined(lake) == [(i + 2, reason) for i, (_, reason) in enumerate(bad)]
    assert by_id(lake)["chatcmpl-ok"]["user_id"] == PSEUDONYM(secret)
    for raw in quarantine_table(lake).column("raw").to_pylist():  # input_user is a user id: never in the clear
        assert b"carol" not in raw, raw
    assert any("has_more" in d for d in details(lake)) and any("2 choices" in d for d in details(lake))


def test_openai_images_audio_files_and_tool_calls_are_refused_never_dropped(tmp_path, lake):
    (messages, chosen, _), (messages2, chosen2, _) = hh(2, start=10)
    question = messages[0]["content"]
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "auto"}}
    text = {"type": "text", "text": question}

    def with_first(message_fields, cid):
        return _stored(cid, 1_763_600_000, chosen, "up", messages=[{**messages[0], **message_fields}] + messages[1:])

    def answering(message_fields, cid):
        record = _stored(cid, 1_763_600_000, chosen, "down", messages=messages)
        record["choices"][0]["message"] = {**record["choices"][0]["message"], **message_fields}
        return record

    text_parts_only = with_first({"id": "m-0", "content": question, "content_parts": [text]}, "chatcmpl-text-parts")
    bad = [
        # the messages endpoint: `content` holds the text, `content_parts` the image beside it
        (with_first({"id": "m-0", "content": question, "content_parts": [text, image]}, "c-parts"),
         "request.messages[0].content_parts[1] (part type image_url)"),
        # the request's own form: a parts list in `content`
        (with_first({"content": [text, image]}, "c-content"), "request.messages[0].content[1] (part type image_url)"),
        (with_first({"content": [text, {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}]},
                    "c-audio-in"), "request.messages[0].content[1] (part type input_audio)"),
        (with_first({"content": [text, {"type": "file", "file": {"file_id": "file-abc"}}]}, "c-file"),
         "request.messages[0].content[1] (part type file)"),
        (_stored("c-tool-turn", 1_763_600_000, chosen, "up", messages=messages[:1] + [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "search", "arguments": "{}"}}]}] + messages[1:]), "request.messages[1].tool_calls"),
        (answering({"content": None, "tool_calls": [{"id": "call_2", "type": "function", "function": {
            "name": "search", "arguments": "{\"q\": \"x\"}"}}]}, "c-tool-answer"), "choices[0].message.tool_calls"),
        (answering({"content": chosen, "tool_calls": [{"id": "call_3", "type": "function", "function": {
            "name": "log", "arguments": "{}"}}]}, "c-tool-beside"), "choices[0].message.tool_calls"),
        (answering({"content": None, "audio": {"id": "audio_1", "data": "UklGR", "expires_at": 1763603600,
                                               "transcript": chosen}}, "c-audio-out"), "choices[0].message.audio"),
        (answering({"content": None, "refusal": "I can't help with that."}, "c-refusal"), "choices[0].message.refusal"),
    ]
    lines = [text_parts_only] + [r for r, _ in bad] + [_stored("chatcmpl-plain", 1_763_600_100, chosen2, "down",
                                                                messages=messages2)]
    write_jsonl(tmp_path / "multimodal.jsonl", lines)
    summary = ingest([tmp_path / "multimodal.jsonl"], lake, config("openai"), progress=False).to_dict()
    assert summary["quarantined"] == {"unsupported_content": len(bad)} and summary["accepted"] == 2
    assert quarantined(lake) == [(i + 2, "unsupported_content") for i in range(len(bad))]
    for detail, (_, where) in zip(details(lake), bad):
        assert detail.startswith(where + " is not text"), detail
    got = by_id(lake)
    assert got["chatcmpl-text-parts"]["prompt"][0] == {"role": "user", "content": question}  # text parts are text
    assert (got["chatcmpl-plain"]["completion"], got["chatcmpl-plain"]["desirable"]) == (chosen2, False)


# -- LangSmith ----------------------------------------------------------------------------------------------

def _run_v1(run_id, trace_id, prompt, answer, start, user, thread, run_type="llm", **fields):
    """A run as POST /api/v1/runs/query returns it with the SDK's default select (client.list_runs)."""
    is_llm = run_type == "llm"
    return {"app_path": f"/o/x/projects/p/p-1/r/{run_id}", "completion_cost": 0.0001, "completion_tokens": 18,
            "dotted_order": f"20261119T100000000000Z{trace_id}", "end_time": start, "error": None, "events": [],
            "extra": {"metadata": {"user_id": user, "thread_id": thread, "ls_model_name": "gpt-4o-mini",
                                   "ls_provider": "openai"}, "runtime": {"sdk": "langsmith-py"}},
            "feedback_stats": None, "first_token_time": None, "id": run_id,
            "inputs": {"messages": [{"role": "user", "content": prompt}]} if is_llm else {"question": prompt},
            "name": "ChatOpenAI" if is_llm else "RunnableSequence",
            "outputs": ({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                      "finish_reason": "stop"}]} if is_llm else {"output": answer}),
            "parent_run_id": trace_id if run_id != trace_id else None,
            "parent_run_ids": [trace_id] if run_id != trace_id else [], "prompt_cost": 0.0, "prompt_tokens": 13,
            "reference_example_id": None, "run_type": run_type, "session_id": "project-1", "start_time": start,
            "status": "success", "tags": [], "total_cost": 0.0001, "total_tokens": 31, "trace_id": trace_id,
            **fields}


def _feedback(fid, run_id, trace_id, up, created, key="thumbs", **fields):
    """Feedback as GET /api/v1/feedback returns it (schemas.Feedback's fields)."""
    return {"id": fid, "created_at": created, "modified_at": created, "run_id": run_id, "trace_id": trace_id,
            "key": key, "score": (1 if up else 0) if isinstance(up, bool) else up, "value": None, "comment": None,
            "correction": None, "feedback_source": {"type": "api", "metadata": {}, "user_id": None, "user_name": None},
            "session_id": "project-1", "start_time": None, "comparative_experiment_id": None,
            "feedback_group_id": None, "extra": None, **fields}


def _pandalm_runs(n):
    """Per PandaLM item: a root chain run, its two llm runs, and thumbs on each by the annotators' majority."""
    runs, feedback, expected = [], [], {}
    for i, (prompt, r1, r2, first_better) in enumerate(pandalm(n)):
        root = f"root-{i}"
        runs.append(_run_v1(root, root, prompt, r1, "2026-11-19T10:00:00.000000", f"user-{i % 3}", f"thread-{i}",
                            run_type="chain"))
        for side, answer, up in (("1", r1, first_better), ("2", r2, not first_better)):
            run_id = f"llm-{i}-{side}"
            runs.append(_run_v1(run_id, root, prompt, answer, f"2026-11-19T10:00:0{side}.000000", f"user-{i % 3}",
                                f"thread-{i}"))
            created = f"2026-11-20T0{i % 10}:0{side}:00.000000+00:00"
            feedback.append(_feedback(f"fb-{i}-{side}", run_id, root, up, created))
            expected[f"fb-{i}-{side}"] = (prompt, answer, up, f"user-{i % 3}", f"thread-{i}", created)
        feedback.append(_feedback(f"fb-{i}-judge", root, root, 0.4, "2026-11-20T00:00:00Z", key="correctness"))
    return runs, feedback, expected


def _check_rows(lake, expected, model="gpt-4o-mini"):
    got = by_id(lake)
    assert set(got) == set(expected)
    for fid, (prompt, answer, up, user, thread, created) in expected.items():
        row = got[fid]
        assert row["prompt"] == [{"role": "user", "content": prompt}]
        assert row["completion"] == answer
        assert row["desirable"] is up
        assert row["user_id"] == PSEUDONYM(user)
        assert row["conversation_id"] == thread
        assert row["model_version"] == model
        assert row["timestamp"] == utc(created)
    return got


def test_langsmith_runs_query_pages_and_feedback_arrays_one_response_per_line(tmp_path, lake):
    runs, feedback, expected = _pandalm_runs(8)
    half = len(runs) // 2
    write_jsonl(tmp_path / "runs.jsonl", [{"runs": runs[:half], "cursors": {"next": "cursor-2"}},
                                          {"runs": runs[half:], "cursors": {"next": None}}])
    half = len(feedback) // 2
    write_jsonl(tmp_path / "feedback.jsonl", [feedback[:half], feedback[half:]])
    summary = ingest([tmp_path / "feedback.jsonl", tmp_path / "runs.jsonl"], lake, config("langsmith"),
                     progress=False).to_dict()
    assert summary["quarantined_total"] == 0, summary["quarantined"]
    assert summary["lines"] == 4
    # every record counted: each feedback accepted or ignored, every llm run rated
    assert summary["accepted"] + sum(summary["ignored"].values()) == len(feedback)
    assert (summary["accepted"], summary["ignored"], summary["unrated"]) == (16, {"correctness": 8}, 0)
    got = _check_rows(lake, expected)
    assert {r["source_line"] for fid, r in got.items()} == {1, 2}  # each feedback under its array's line


def test_langsmith_v2_runs_query_items_with_top_level_metadata_and_thread(tmp_path, lake):
    runs, feedback, expected = _pandalm_runs(4)
    items = []
    for run in runs:  # POST /api/v2/runs/query: metadata and thread_id at the top of the run, no extra
        v2 = {k: run[k] for k in ("id", "trace_id", "name", "run_type", "start_time", "inputs", "outputs", "tags")}
        metadata = run["extra"]["metadata"]
        items.append({**v2, "metadata": {k: v for k, v in metadata.items() if k != "thread_id"},
                      "thread_id": metadata["thread_id"], "is_root": run["id"] == run["trace_id"],
                      "project_id": "project-1", "status": "SUCCESS"})
    write_jsonl(tmp_path / "runs-v2.jsonl", [{"items": items, "next_cursor": None}, feedback])
    summary = ingest([tmp_path / "runs-v2.jsonl"], lake, config("langsmith"), progress=False).to_dict()
    assert (summary["accepted"], summary["quarantined_total"], summary["unrated"]) == (8, 0, 0)
    got = _check_rows(lake, expected)
    assert {r["source_line"] for r in got.values()} == {2}


def test_langsmith_hostile_records_in_a_page_are_each_quarantined_under_its_line(tmp_path, lake):
    runs, feedback, expected = _pandalm_runs(2)
    ok = feedback[0]
    hostile_feedback = [
        ok,
        "not an object",  # not_an_object
        {"id": "stray", "score": 1},  # unknown_shape: neither run (run_type) nor feedback (key)
        {**ok, "id": "fb-bad-score", "score": "great"},  # bad_label
        {**ok, "id": "fb-orphan", "run_id": "llm-gone"},  # orphan_feedback
        {**ok, "id": "fb-no-run", "run_id": None},  # missing_field
    ]
    rest = feedback[1:]
    runs_page = {"runs": runs + [{"id": "llm-selected-away"}], "cursors": {"next": None}}  # v2 without selects
    write_jsonl(tmp_path / "mixed.jsonl", [runs_page, hostile_feedback, rest, [ok], [], "a string line"])
    summary = ingest([tmp_path / "mixed.jsonl"], lake, config("langsmith"), progress=False).to_dict()
    assert quarantined(lake) == [(1, "unknown_shape"), (2, "bad_label"), (2, "missing_field"), (2, "not_an_object"),
                                 (2, "orphan_feedback"), (2, "unknown_shape"), (4, "duplicate_event_id"),
                                 (6, "not_an_object")]
    assert summary["lines"] == 6
    # records: the page's run without run_type, the three arrays' feedback (the empty one holds none), the string
    records = 1 + len(hostile_feedback) + len(rest) + 1 + 1
    assert summary["accepted"] + summary["quarantined_total"] + sum(summary["ignored"].values()) == records
    _check_rows(lake, expected)
    assert any("select" in d for d in details(lake))


def _lc(cls, content, **kwargs):
    return {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", cls],
            "kwargs": {"content": content, "type": {"HumanMessage": "human", "AIMessage": "ai"}[cls], **kwargs}}


def test_langsmith_images_tool_calls_and_attachments_refuse_the_rating_not_the_run(tmp_path, lake):
    items = pandalm(6)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/chart.png"}}
    runs, feedback, where = [], [], {}

    def llm(i, **fields):
        prompt, answer = items[i][0], items[i][1]
        run = _run_v1(f"llm-{i}", f"root-{i}", prompt, answer, "2026-11-19T10:00:01.000000", "user-0", f"t-{i}")
        runs.append({**run, **fields})
        feedback.append(_feedback(f"fb-{i}", f"llm-{i}", f"root-{i}", True, "2026-11-20T01:00:00Z"))

    text = {"type": "text", "text": items[0][0]}
    llm(0, inputs={"messages": [{"role": "user", "content": [text, image]}]})
    where["fb-0"] = "inputs.messages[0].content[1] (part type image_url)"
    llm(1, inputs={"messages": [[_lc("HumanMessage", [{"type": "text", "text": items[1][0]}, image])]]})
    where["fb-1"] = "inputs.messages[0][0].kwargs.content[1] (part type image_url)"
    llm(2, outputs={"generations": [[{"text": "", "type": "ChatGeneration", "message": _lc(
        "AIMessage", "", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "call_1", "type": "tool_call"}])}]]})
    where["fb-2"] = "outputs.generations[0][0].message.kwargs.tool_calls"
    llm(3, outputs={"choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": "{}"}}]}}]})
    where["fb-3"] = "outputs.choices[0].message.tool_calls"
    llm(4, s3_urls={"attachment.photo": {"presigned_url": "/s3/x", "mime_type": "image/png"}})
    where["fb-4"] = "s3_urls (attachment.*)"
    llm(5)  # text only: accepted
    feedback.append(_feedback("fb-root-0", "root-0", "root-0", False, "2026-11-20T02:00:00Z"))  # its only llm run
    where["fb-root-0"] = where["fb-0"]
    write_jsonl(tmp_path / "feedback.jsonl", feedback)
    write_jsonl(tmp_path / "runs.jsonl", runs)
    summary = ingest([tmp_path / "feedback.jsonl", tmp_path / "runs.jsonl"], lake, config("langsmith"),
                     progress=False).to_dict()
    assert summary["quarantined"] == {"unsupported_content": 6} and summary["accepted"] == 1
    assert summary["unrated"] == 0  # the refused runs were reached: their ratings are the quarantined rows
    table = quarantine_table(lake)
    assert set(table.column("source").to_pylist()) == {"feedback.jsonl"}  # the ratings, not the runs
    for line, detail in zip(table.column("line").to_pylist(), table.column("detail").to_pylist()):
        fid = feedback[line - 1]["id"]
        assert detail == f"the llm run it rates holds {where[fid]}, which is not text: thumbs keeps text only"
    row, = rows(lake)
    assert (row["event_id"], row["completion"]) == ("fb-5", items[5][1])

    # A thumbs arriving in a later run finds the refused run as it was stored (its reason, no text-only copy):
    # it is refused too, never an event without its image.
    write_jsonl(tmp_path / "later.jsonl", [_feedback("fb-0-late", "llm-0", "root-0", True, "2026-11-21T00:00:00Z")])
    later = ingest([tmp_path / "later.jsonl"], lake, config("langsmith"), progress=False).to_dict()
    assert (later["accepted"], later["quarantined"]) == (0, {"unsupported_content": 1})
