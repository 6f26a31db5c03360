"""deploy/vllm_rules.py on its own (no vLLM needed): which adapters it refuses and what it says, and the
serving client's errors when there is no server. tests/test_vllm.py checks the same rules against vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy import vllm_rules
from deploy.serving import ServingError, publish
from deploy.vllm_server import free_port

LLAMA_KEYS = [f"base_model.model.model.layers.{i}.{m}.lora_{ab}.weight" for i in (0, 1)
              for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj") for ab in "AB"]
PLAIN = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "bias": "none", "use_dora": False, "modules_to_save": None}


def test_module_names_come_from_the_weights_as_vllm_reads_them():
    assert vllm_rules.adapter_modules(LLAMA_KEYS) == {"q_proj", "v_proj", "down_proj"}
    assert vllm_rules.adapter_modules(["base_model.model.model.embed_tokens.lora_embedding_A",
                                       "base_model.model.lm_head.weight"]) == {"embed_tokens"}


def test_a_plain_lora_on_llama_passes_and_each_unservable_feature_is_named():
    modules = vllm_rules.adapter_modules(LLAMA_KEYS)
    assert vllm_rules.problems(PLAIN, modules, "LlamaForCausalLM", 16) == []
    cases = {
        "modules_to_save=['lm_head']": dict(PLAIN, modules_to_save=["lm_head"]),
        "use_dora=True": dict(PLAIN, use_dora=True),
        "bias='all'": dict(PLAIN, bias="all"),
        "init_lora_weights='pissa'": dict(PLAIN, init_lora_weights="pissa"),
        "LoRA rank 32 is above the configured max_lora_rank 16: start vLLM with --max-lora-rank 32":
            dict(PLAIN, r=32),
        "LoRA rank 64 is above": dict(PLAIN, rank_pattern={"q_proj": 64}),
    }
    for message, config in cases.items():
        found = vllm_rules.problems(config, modules, "LlamaForCausalLM", 16)
        assert len(found) == 1 and message in found[0], (message, found)
    assert vllm_rules.problems(dict(PLAIN, modules_to_save=["score"]), modules, "LlamaForCausalLM", 16) == []


def test_targets_are_checked_per_architecture():
    with_head = vllm_rules.adapter_modules(LLAMA_KEYS + ["base_model.model.lm_head.lora_A.weight"])
    assert vllm_rules.problems(PLAIN, with_head, "LlamaForCausalLM") == []  # Llama has LoRA on lm_head
    [found] = vllm_rules.problems(PLAIN, with_head, "MistralForCausalLM")  # Mistral does not
    assert "['lm_head'] are not LoRA-capable in vLLM for MistralForCausalLM" in found and "'o_proj'" in found
    [found] = vllm_rules.problems(PLAIN, {"qkv_proj"}, "LlamaForCausalLM")  # HF Llama never has a fused qkv
    assert "['qkv_proj']" in found
    assert vllm_rules.problems(PLAIN, {"qkv_proj", "gate_up_proj"}, "Phi3ForCausalLM") == []  # Phi-3 does
    assert vllm_rules.problems(PLAIN, {"c_attn"}, "SomeNewForCausalLM") == []  # unknown: not judged here
    assert vllm_rules.lora_supported("GPT2LMHeadModel") is False and vllm_rules.lora_supported("X") is None
    assert "export --format merged" in vllm_rules.no_lora_reason("GPT2LMHeadModel")


def test_ranks_round_up_to_what_max_lora_rank_accepts():
    assert [vllm_rules.next_rank(r) for r in (1, 2, 16, 17, 300, 512)] == [1, 8, 16, 32, 320, 512]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        vllm_rules.next_rank(513)
    with pytest.raises(ValueError, match="one of vLLM's"):
        vllm_rules.check_max_lora_rank(24)


def _export(folder: Path, fmt: str = "peft") -> Path:
    folder.mkdir(parents=True)
    (folder / "serving.json").write_text(json.dumps({"format": fmt, "version": "v0001"}))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_text("{}")
    return folder


def test_publishing_to_a_server_that_is_down_says_so_and_leaves_no_staged_copy(tmp_path):
    export = _export(tmp_path / "lora")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ServingError, match=f"vLLM server at {url} unreachable"):
        publish(url, export, log=lambda s: None)
    assert not [p for p in (tmp_path / "lora.versions").iterdir() if p.is_dir()]
    with pytest.raises(ServingError, match="holds a merged export"):
        publish(url, _export(tmp_path / "merged", "merged"), log=lambda s: None)
    with pytest.raises(ServingError, match="serving.json not found"):
        publish(url, tmp_path / "nowhere", log=lambda s: None)
