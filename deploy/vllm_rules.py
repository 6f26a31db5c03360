"""What vLLM (0.32) refuses to load as a LoRA adapter, as data: the export checks an adapter against it.

Read from vLLM's source, not guessed: `PEFTHelper.validate_legal` (vllm/lora/peft_helper.py) for the
adapter_config.json features it rejects and the rank limit, `LoRAModel.from_local_checkpoint`
(vllm/lora/lora_model.py) for the module names it accepts, which are the model class's linear layers
with each `packed_modules_mapping` entry expanded to its parts, plus its `embedding_modules`.
tests/test_vllm.py checks these tables against the vLLM installed in .venv-vllm, so a vLLM upgrade that
changes them fails a test instead of letting an export through that the server then refuses.

    problems(config, modules, architecture, max_lora_rank) -> ["what is wrong, and what to change", ...]
    lora_supported(architecture) -> True | False (vLLM serves it merged only) | None (not in the tables)
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

VLLM_VERSION = "0.32.0"
# vllm.config.lora.MaxLoRARanks: the only values --max-lora-rank accepts.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16  # vLLM's default --max-lora-rank

_LLAMA_LINEAR = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
_EMBEDDINGS = frozenset({"embed_tokens", "lm_head"})
# Architecture (config.json `architectures[0]`) -> the module names an adapter for it may target.
LORA_MODULES = {
    "LlamaForCausalLM": _LLAMA_LINEAR | _EMBEDDINGS,
    "MistralForCausalLM": _LLAMA_LINEAR,          # embedding_modules = {}: no LoRA on embed_tokens / lm_head
    "Qwen2ForCausalLM": _LLAMA_LINEAR,
    "Qwen3ForCausalLM": _LLAMA_LINEAR | _EMBEDDINGS,
    "Gemma2ForCausalLM": _LLAMA_LINEAR,
    "Gemma3ForCausalLM": _LLAMA_LINEAR,
    "GraniteForCausalLM": _LLAMA_LINEAR | _EMBEDDINGS,
    "Phi3ForCausalLM": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}) | _EMBEDDINGS,  # fused in HF too
}
# Architectures vLLM serves, but without LoRA ("... does not support LoRA yet"): only the merged export works.
NO_LORA = ("GPT2LMHeadModel", "GPTJForCausalLM", "BloomForCausalLM", "FalconForCausalLM", "StableLmForCausalLM")
# init_lora_weights values that rewrite the base when peft loads the adapter; vLLM refuses them.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")
_LORA_TENSOR = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.|$)")


def adapter_modules(tensor_names: Iterable[str]) -> set:
    """The module names (last dotted part) an adapter's safetensors file holds LoRA weights for. Other
    tensors (modules_to_save copies) are left out: problems() refuses them through the config."""
    modules = set()
    for name in tensor_names:
        match = _LORA_TENSOR.search(name)
        if match:
            modules.add(name[:match.start()].rsplit(".", 1)[-1])
    return modules


def problems(config: dict, modules: Iterable[str], architecture: Optional[str],
             max_lora_rank: int = MAX_LORA_RANKS[-1]) -> list:
    """Why vLLM would refuse the adapter (`config` = adapter_config.json, `modules` = `adapter_modules(...)`);
    empty when it loads. An architecture missing from LORA_MODULES is not checked for its modules; whether
    vLLM has LoRA for it at all is `lora_supported`'s question."""
    found = []
    if config.get("peft_type", "LORA") != "LORA":
        found.append(f"peft_type is {config['peft_type']}; vLLM serves LoRA adapters only")
    saved = [m for m in config.get("modules_to_save") or [] if m not in ("classifier", "score")]
    if saved:
        found.append(f"modules_to_save={saved}: vLLM loads no full module copies; train without modules_to_save "
                     "or serve the merged export")
    if config.get("use_dora"):
        found.append("use_dora=True: vLLM does not serve DoRA; train plain LoRA or serve the merged export")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        found.append(f"bias={config.get('bias')!r}, lora_bias={config.get('lora_bias', False)!r}: vLLM serves no "
                     "adapter biases; train with bias='none'")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        found.append(f"init_lora_weights={init!r} rewrites the base weights when loaded; vLLM refuses it: "
                     "convert it to plain LoRA or serve the merged export")
    for key in ("layer_replication", "alora_invocation_tokens", "use_bdlora", "use_qalora"):
        if config.get(key):
            found.append(f"{key} is set; vLLM does not implement it")
    rank = max([int(config.get("r", 0)), *(config.get("rank_pattern") or {}).values()])
    if rank > max_lora_rank:
        found.append(f"LoRA rank {rank} is above the configured max_lora_rank {max_lora_rank}: start vLLM with "
                     f"--max-lora-rank {next_rank(rank)} and export with the same --max-lora-rank, or train with "
                     f"r <= {max_lora_rank}")
    if architecture in LORA_MODULES:
        allowed = LORA_MODULES[architecture]
        extra = sorted(set(modules) - allowed)
        if extra:
            found.append(f"target modules {extra} are not LoRA-capable in vLLM for {architecture}: it serves only "
                         f"{sorted(allowed)}; retrain with target_modules among those")
    return found


def lora_supported(architecture: Optional[str]) -> Optional[bool]:
    """True, False (vLLM serves it merged only), or None: not in thumbs' tables."""
    if architecture in LORA_MODULES:
        return True
    return False if architecture in NO_LORA else None


def no_lora_reason(architecture: str) -> str:
    return (f"vLLM {VLLM_VERSION} has no LoRA for {architecture} ('{architecture} does not support LoRA yet'): "
            "export --format merged and serve that, or train on a base vLLM serves with LoRA (Llama, Mistral, Qwen2/3, "
            "Gemma2/3, Phi3, Granite)")


def next_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds `rank`."""
    for allowed in MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {MAX_LORA_RANKS[-1]}")


def check_max_lora_rank(value: int) -> int:
    if value not in MAX_LORA_RANKS:
        raise ValueError(f"max_lora_rank must be one of vLLM's {MAX_LORA_RANKS}, got {value}")
    return value
