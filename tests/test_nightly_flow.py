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
from flows.config import FILE, ThumbsConfig, merge, resolve
from flows.run import run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def feedback(style_snapshot) -> Path:
    return style_snapshot.parents[1] / "feedback.jsonl"  # the events file the snapshot was ingested from


def nightly(workdir: Path, feedback: Path, base_model: Path, **sections) -> ThumbsConfig:
    """The tests' thumbs.yaml: the tiny model, a short training, `sections` merged over it."""
    base = {"run": {"sources": [str(feedback)], "workdir": str(workdir), "base_model": str(base_model)},
            "ingest": {"insecure_dev_key": True}, "curate": {"eval_fraction": 0.2},
            "train": {"max_steps": 12, "learning_rate": 5e-3, "micro_batch_size": 8},
            "evaluate": {"generation_prompts": 2, "max_new_tokens": 8}}
    return resolve([(FILE, merge(base, sections))])[0]


def test_a_full_run_promotes_and_exports_then_a_failed_training_changes_nothing(harness, feedback, tiny_model, tmp_path):
    from prefect.artifacts import Artifact


    workdir = tmp_path / "work"
    stored_before = prefect_stored()  # an earlier session's failed runs may have left theirs
    state = run_config(nightly(workdir, feedback, tiny_model))
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
    assert prefect_stored() == stored_before  # nothing to read back

    aliases_before = (workdir / "registry" / "default" / "aliases.json").read_bytes()
    # Training sent to a deployment no one registered: the train stage fails, after ingest and curate ran.
    failing = nightly(workdir, feedback, tiny_model, run={"train_deployment": "thumbs-train/missing"})
    state = run_config(failing)
    assert state.is_failed()
    assert "stage 'train' failed" in state.message and "thumbs-train/missing" in state.message
    assert (workdir / "registry" / "default" / "aliases.json").read_bytes() == aliases_before
    assert Registry(workdir / "registry").versions() == ["v0001"]

    shutil.rmtree(workdir / "serving")  # an export lost after its promotion: the next run writes it again
    another = nightly(workdir, feedback, tiny_model, train={"learning_rate": 4e-3})  # v0001's settings rebuild v0001
    state = run_config(another)
    assert state.is_completed(), state.message
    assert state.result()["version"] == "v0002" and Artifact.get("thumbs-decision") is not None
    serving = json.loads((workdir / "serving" / "serving.json").read_text())
    assert serving["version"] == Registry(workdir / "registry").aliases()["production"]


def test_a_canary_release_is_settled_first_thing_each_night(harness, feedback, tiny_model, tmp_path):
    """rollout: canary. Night 1 makes production (nothing to compare with), night 2's candidate the canary for
    half the users; night 3 reads their thumbs right after ingest, before any training: users like the canary less,
    so it is rolled back (its look an artifact of the run), production untouched. Night 3's training fails here
    (a missing training deployment): the canary's settling does not depend on it."""
    from prefect.artifacts import Artifact

    from canary_helpers import canary_votes

    workdir, votes = tmp_path / "work", tmp_path / "votes" / "night3.jsonl"
    canary = {"rollout": "canary", "canary": {"share": 0.5, "min_votes": 100}, "max_auc_drop": 0.5}
    night = lambda **sections: nightly(workdir, feedback, tiny_model, promotion=canary, **sections)  # noqa: E731
    first = run_config(night())
    assert first.is_completed(), first.message
    assert first.result()["canary"] is None  # nothing to settle on the first night
    second = run_config(night(train={"learning_rate": 4e-3}))
    assert second.is_completed(), second.message
    registry = Registry(workdir / "registry")
    aliases = registry.aliases()
    assert (aliases["production"], aliases["canary"]["version"]) == ("v0001", "v0002")
    serving = json.loads((workdir / "serving" / "serving.json").read_text())
    assert serving["version"] == "v0001"  # production serves; the canary arm is the application's to route
    arms = json.loads((workdir / "serving.canary" / "serving.json").read_text())  # exported beside it, for the router
    assert arms["version"] == "v0002" and arms["canary"]["share"] == 0.5 and arms["canary"]["against"] == "v0001"

    votes.parent.mkdir()
    canary_votes(votes, registry, {"production": 0.6, "canary": 0.2}, users=400)
    third = run_config(night(run={"sources": [str(feedback), str(votes.parent)],
                                  "train_deployment": "thumbs-train/missing"}))
    assert third.is_failed() and "stage 'train' failed" in third.message
    aliases = registry.aliases()
    assert aliases["canary"] is None and aliases["production"] == "v0001"
    assert aliases["events"][-1]["action"] == "canary-rollback"
    assert "users like the canary less" in aliases["events"][-1]["decision"]["sentence"]
    assert "rolled back (production unchanged)" in Artifact.get("thumbs-canary").data


def prefect_stored() -> set:
    """The files in Prefect's result storage. Nothing of the nightly is read back from there, where a planted file
    could run code when deserialised (pickle, or Prefect's JSON, which imports the exception class a file names):
    curate finds and verifies its published snapshot itself. (Prefect itself pickles a failed run's exception there;
    thumbs never reads it back.)"""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    return {p for p in storage.rglob("*") if p.is_file()} if storage.exists() else set()


def test_the_run_form_has_one_section_per_stage_with_every_field_described():
    """The Prefect UI renders the flow's parameter schema: one section per stage (run, ingest, curate, train,
    evaluate, promotion, export), each the stage's own config with its defaults, ranges and descriptions."""
    from prefect.utilities.callables import parameter_schema

    from flows.config import SECTIONS
    from flows.nightly import nightly_retrain

    schema = parameter_schema(nightly_retrain).model_dump()
    assert list(schema["properties"]) == list(SECTIONS) and schema["required"] == ["run"]
    train = schema["definitions"]["TrainConfig"]["properties"]
    assert train["beta"]["description"].startswith("β") and train["beta"]["exclusiveMinimum"] == 0
    assert set(schema["definitions"]["ExportConfig"]["properties"]["format"]["enum"]) == {"peft", "merged", "none"}
    assert "base_model" in schema["definitions"]["RunSettings"]["required"]
    with pytest.raises(ValueError, match="max_step"):  # a misspelt field is refused, not silently dropped
        resolve([(FILE, {"run": {"base_model": "base"}, "train": {"max_step": 3}})])


def test_a_taken_lock_fails_the_run_before_any_stage_and_unlock_frees_a_leaked_slot(harness, feedback, tiny_model,
                                                                                    tmp_path):
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.concurrency.sync import concurrency

    from flows.lock import ensure_concurrency_limit, lock_name

    workdir = tmp_path / "work"
    name = lock_name("locked")
    ensure_concurrency_limit(name)
    with concurrency(name, occupy=1, strict=True):  # another retrain of the same model is running
        state = run_config(nightly(workdir, feedback, tiny_model, run={"model_name": "locked", "lock_timeout_s": 2}))
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
