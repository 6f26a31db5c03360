"""The nightly retrain flow under Prefect's test harness: a full run promotes; a failed stage changes nothing.

Real stages end to end (ingest → Beam curate → QLoRA KTO → evaluate → promote → export) on the tiny
GPT-2 and polite-up / curt-down feedback over real HH-RLHF questions (conftest `style_snapshot`'s data).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deploy.registry import Registry
from flows.params import RetrainParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def feedback(style_snapshot) -> Path:
    return style_snapshot.parents[1] / "feedback.jsonl"  # the events file the snapshot was ingested from


def params(workdir: Path, feedback: Path, base_model: Path, **fields) -> RetrainParams:
    base = dict(sources=[str(feedback)], workdir=str(workdir), base_model=str(base_model), insecure_dev_key=True,
                eval_fraction=0.2, max_steps=12, learning_rate=5e-3, micro_batch_size=8, generation_prompts=2,
                max_new_tokens=8)
    return RetrainParams(**{**base, **fields})


def test_a_full_run_promotes_and_exports_then_a_failed_training_changes_nothing(harness, feedback, tiny_model, tmp_path):
    from prefect.artifacts import Artifact

    from flows.nightly import nightly_retrain

    workdir = tmp_path / "work"
    state = nightly_retrain(params(workdir, feedback, tiny_model), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["promoted"] and summary["version"] == "v0001" and summary["events"] == 300
    assert summary["auc"] > 0.9 and summary["n_desirable"] == summary["n_undesirable"]
    registry = Registry(workdir / "registry")
    assert registry.aliases()["production"] == "v0001"
    serving = json.loads((workdir / "serving" / "serving.json").read_text())
    assert serving["version"] == "v0001" and serving["format"] == "peft"
    table = Artifact.get("thumbs-eval")
    assert table is not None and "preference AUC" in json.dumps(table.data)
    report = Artifact.get("thumbs-report")
    assert "data:image/png;base64," in report.data
    assert_prefect_stored_nothing_to_read_back()

    aliases_before = (workdir / "registry" / "default" / "aliases.json").read_bytes()
    failing = params(workdir, feedback, tiny_model, max_steps=12, micro_batch_size=8, train_config=str(tmp_path / "x.yaml"))
    (tmp_path / "x.yaml").write_text("max_length: 64\nmax_prompt_length: 128\n")  # contradictory: training refuses
    state = nightly_retrain(failing, return_state=True)
    assert state.is_failed()
    assert "stage 'train' failed" in state.message and "max_prompt_length" in state.message
    assert (workdir / "registry" / "default" / "aliases.json").read_bytes() == aliases_before
    assert Registry(workdir / "registry").versions() == ["v0001"]

    shutil.rmtree(workdir / "serving")  # an export lost after its promotion: the next run writes it again
    another = params(workdir, feedback, tiny_model, learning_rate=4e-3)  # the same settings would rebuild v0001
    state = nightly_retrain(another, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["version"] == "v0002" and Artifact.get("thumbs-decision") is not None
    serving = json.loads((workdir / "serving" / "serving.json").read_text())
    assert serving["version"] == Registry(workdir / "registry").aliases()["production"]


def assert_prefect_stored_nothing_to_read_back():
    """Nothing of the nightly is read back from Prefect's result storage, where a planted file could run code when
    deserialised (pickle, or Prefect's JSON, which imports the exception class a file names): curate finds and
    verifies its published snapshot itself. (Prefect itself pickles a failed run's exception there; thumbs never
    reads it back.)"""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    assert not storage.exists() or not [p for p in storage.rglob("*") if p.is_file()]


def test_parameters_render_as_a_form_with_defaults_and_descriptions():
    from prefect.utilities.callables import parameter_schema

    from flows.nightly import nightly_retrain

    schema = parameter_schema(nightly_retrain).model_dump()
    fields = schema["definitions"]["RetrainParams"]["properties"]
    assert fields["beta"]["description"].startswith("β") and fields["export_format"]["default"] == "peft"
    assert set(fields["export_format"]["enum"]) == {"peft", "merged", "none"}
    assert "default 16" in schema["definitions"]["LoraSettings"]["properties"]["r"]["description"]
    assert "base_model" in schema["definitions"]["RetrainParams"]["required"]
    with pytest.raises(ValueError, match="max_step"):  # a misspelt field is refused, not silently dropped
        RetrainParams(base_model="base", max_step=3)
    assert RetrainParams(base_model="base", lora={"r": 8}).train_overrides() == {"lora_r": 8}  # the rest: the YAML's


def test_a_taken_lock_fails_the_run_before_any_stage_and_unlock_frees_a_leaked_slot(harness, feedback, tiny_model,
                                                                                    tmp_path):
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.concurrency.sync import concurrency

    from flows.lock import ensure_concurrency_limit, lock_name
    from flows.nightly import nightly_retrain

    workdir = tmp_path / "work"
    name = lock_name("locked")
    ensure_concurrency_limit(name)
    with concurrency(name, occupy=1, strict=True):  # another retrain of the same model is running
        state = nightly_retrain(params(workdir, feedback, tiny_model, model_name="locked", lock_timeout_s=2),
                                return_state=True)
    assert state.is_failed() and "stage 'lock' failed" in state.message and "thumbs unlock locked" in state.message
    assert not (workdir / "lake").exists()  # nothing ran

    with get_client(sync_client=True) as client:  # a run killed with SIGKILL leaves its slot taken
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=1))
    from flows.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["unlock", "locked"])
    assert result.exit_code == 0 and "freed 1 slot(s)" in result.output
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
