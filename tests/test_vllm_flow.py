"""The nightly flow with `notify`: each new production reaches the running vLLM server under its alias;
with the server down the promotion still lands, the export stage reports the failed notify, nothing is lost.

Real stages end to end (ingest → Beam curate → LoRA KTO → evaluate → promote → export → notify) on the
tiny Llama the session's vLLM server serves (vllm_harness), under Prefect's test harness.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from vllm_harness import prompts_for, reference, served

from deploy.registry import Registry
from deploy.serving import Client
from deploy.vllm_server import free_port
from flows.config import ThumbsConfig
from flows.run import run_config

pytestmark = [pytest.mark.slow, pytest.mark.services]
N_TOKENS = 12
ALIAS = "nightly"  # the server is the session's: other tests use other names on it


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def nightly(workdir: Path, style_snapshot: Path, base: Path, learning_rate: float, notify: str) -> ThumbsConfig:
    return ThumbsConfig.model_validate({
        "run": {"sources": [str(style_snapshot.parents[1] / "feedback.jsonl")], "workdir": str(workdir),
                "base_model": str(base)},
        "ingest": {"insecure_dev_key": True}, "curate": {"eval_fraction": 0.2},
        "train": {"max_steps": 12, "micro_batch_size": 8, "quantize": "none", "learning_rate": learning_rate},
        "evaluate": {"generation_prompts": 2, "max_new_tokens": 8},
        # the versions differ little; each must be promoted
        "promotion": {"min_auc": 0.0, "max_auc_drop": 1.0, "max_kl_per_token": 100, "max_length_ratio": 100,
                      "min_length_ratio": 0.01},
        "export": {"notify": notify, "notify_alias": ALIAS}})


def test_nightly_runs_put_production_on_the_server_and_a_down_server_loses_nothing(harness, style_snapshot,
                                                                                  tiny_llama, vllm_server, tmp_path):
    workdir, url = tmp_path / "work", vllm_server.url
    registry, client = Registry(workdir / "registry"), Client(url)
    prompts = prompts_for(tiny_llama, ["How do I bake bread at home?", "What is the capital of France?"])

    def answers_as(version: str) -> bool:
        """The alias's greedy tokens and log-probs are transformers + peft's with that registry version."""
        got = served(client, ALIAS, prompts, N_TOKENS)
        peft = reference(tiny_llama, registry.path("versions", version), prompts, N_TOKENS)
        return got["tokens"] == peft["tokens"] and all(
            abs(a - b) < 2e-3 for x, y in zip(got["logprobs"], peft["logprobs"]) for a, b in zip(x, y))

    for run, learning_rate in enumerate((5e-3, 2e-3), start=1):
        state = run_config(nightly(workdir, style_snapshot, tiny_llama, learning_rate, notify=url))
        assert state.is_completed(), state.message
        summary = state.result()
        version = f"v000{run}"
        assert summary["promoted"] and summary["version"] == version
        assert summary["served"]["version"] == version and summary["served"]["alias"] == ALIAS
    assert summary["served"]["previous"] == "v0001" and summary["served"]["retired"] == [f"{ALIAS}-v0001"]
    assert answers_as("v0002") and not answers_as("v0001")

    down = f"http://127.0.0.1:{free_port()}"  # the server is down: nothing listens there
    state = run_config(nightly(workdir, style_snapshot, tiny_llama, 3e-3, notify=down))
    assert state.is_failed()
    assert "stage 'export' failed" in state.message and "notify failed" in state.message
    assert f"vLLM server at {down} unreachable" in state.message and "Production is v0003" in state.message
    assert registry.aliases()["production"] == "v0003"  # the promotion landed
    serving = json.loads((workdir / "serving" / "serving.json").read_text())
    assert serving["version"] == "v0003"  # and the export with it
    assert answers_as("v0002")  # the live server, never reached, still serves what it served

    from flows.cli import app

    healed = CliRunner().invoke(app, ["export", "production", "--registry", registry.url, "--out",
                                      str(workdir / "serving"), "--notify", url, "--notify-alias", ALIAS])  # the fix named
    assert healed.exit_code == 0, healed.output
    assert answers_as("v0003") and {n for n in client.adapters() if n.startswith(ALIAS)} == {ALIAS, f"{ALIAS}-v0003"}
