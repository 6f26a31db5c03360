"""Privacy after a full nightly run: raw user ids and e-mail addresses planted in the feedback appear in
no file the pipeline wrote (lake, quarantine, snapshots, the run's adapter folder, registry, serving
export; Parquet read back as text, since its pages are compressed) nor in the Prefect artifacts and logs
of the run. User ids are HMAC pseudonyms everywhere; `scrub_pii` masks e-mails in prompts and completions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import STYLE_DOWN, STYLE_UP

pytestmark = pytest.mark.slow

SECRET_IDS = ["alice.w@corp-mail.example", "uid-7f3a9c-SECRET", "4711-raw-customer"]
EMAILS = ["bob.jones@private-mail.example", "carol+orders@shop.example"]


def planted_feedback(path: Path) -> Path:
    lines = []
    for i in range(120):
        question = f"How do I reset my password on account {i}? Write to {EMAILS[i % 2]} please."
        for label, answer in (("up", STYLE_UP), ("down", STYLE_DOWN + f" Or mail {EMAILS[(i + 1) % 2]}.")):
            lines.append(json.dumps({"event_id": f"e{i}-{label}", "timestamp": "2026-11-20T03:00:00Z",
                                     "user_id": SECRET_IDS[i % 3], "prompt": question, "completion": answer,
                                     "label": label}))
    # Bad lines are kept verbatim in quarantine: their identities must be masked there too.
    lines.append(f'{{"event_id": "bad", "user_id": "{SECRET_IDS[0]}", "prompt": "mail {EMAILS[0]}", "label": "meh"')
    lines.append(json.dumps({"event_id": "bad2", "timestamp": "2026-11-20T03:00:00Z", "user_id": SECRET_IDS[1],
                             "prompt": f"I am {EMAILS[1]}", "completion": "x", "label": "sideways"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def file_text(path: Path) -> str:
    """A file's content as text a leak would show up in: Parquet decoded row by row, anything else raw."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False)
    return path.read_bytes().decode("utf-8", "replace")


def every(page) -> list:
    """All items of a paged Prefect API read (the server caps a page at 200)."""
    items = []
    while True:
        batch = page(len(items))
        items += batch
        if len(batch) < 200:
            return items


def test_no_raw_identity_or_email_survives_a_full_run(tiny_model, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter
    from prefect.testing.utilities import prefect_test_harness

    from flows.config import ThumbsConfig
    from flows.run import run_config

    source = planted_feedback(tmp_path / "feedback.jsonl")
    workdir = tmp_path / "work"
    config = ThumbsConfig.model_validate({
        "run": {"sources": [str(source)], "workdir": str(workdir), "base_model": str(tiny_model)},
        "ingest": {"insecure_dev_key": True, "scrub_pii": True}, "curate": {"eval_fraction": 0.2},
        "train": {"max_steps": 4, "micro_batch_size": 8, "quantize": "none"},
        "evaluate": {"generation_prompts": 2, "max_new_tokens": 8}})
    with prefect_test_harness(server_startup_timeout=120):
        state = run_config(config)
        assert state.is_completed(), state.message
        with get_client(sync_client=True) as client:
            logs = [log.message for log in every(lambda offset: client.read_logs(LogFilter(), limit=200,
                                                                                  offset=offset))]
            artifacts = [json.dumps(a.data, default=str) + (a.description or "")
                         for a in every(lambda offset: client.read_artifacts(limit=200, offset=offset))]
            flow_run = client.read_flow_run(state.state_details.flow_run_id)
            result = json.dumps(state.result(), default=str) + json.dumps(flow_run.parameters, default=str)
    summary = state.result()
    assert summary["events"] == 240 and summary["quarantined"] == 2 and summary["version"] == "v0001"
    assert any("masked" in line for line in logs)  # scrubbing happened and said so

    written = [p for p in workdir.rglob("*") if p.is_file()]
    kinds = {p.relative_to(workdir).parts[0] for p in written}
    assert {"lake", "snapshots", "runs", "registry", "serving"} <= kinds
    assert any("quarantine" in p.parts for p in written)
    texts = {str(p.relative_to(workdir)): file_text(p) for p in written}
    texts["prefect logs"] = "\n".join(logs)
    texts["prefect artifacts"] = "\n".join(artifacts)
    texts["flow run result"] = result.replace(str(source), "")  # the parameters name the source file, not its data
    for secret in SECRET_IDS + EMAILS:
        leaks = sorted(name for name, text in texts.items() if secret in text)
        assert not leaks, f"{secret!r} found in {leaks}"
    lake_text = "".join(t for n, t in texts.items() if n.startswith("lake"))
    assert "[EMAIL]" in lake_text  # the e-mails were masked, not the rows dropped
