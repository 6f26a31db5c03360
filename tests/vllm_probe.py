"""Run by the vLLM venv's Python, not thumbs': in-process vLLM for the tests, one JSON line on stdout.

    .venv-vllm/bin/python tests/vllm_probe.py generate '{"model": DIR, "prompts": [[1, 22557]], "max_tokens": 12}'
    .venv-vllm/bin/python tests/vllm_probe.py inspect '{"architectures": ["LlamaForCausalLM", ...]}'

generate: greedy tokens and their log-probs from vLLM's offline `LLM` (engine in this process: ~15 s to
start instead of a server's ~40). inspect: what vLLM's own classes say about LoRA per architecture, to
check deploy/vllm_rules.py against. It imports nothing from thumbs (that venv does not have it).
"""

from __future__ import annotations

import json
import os
import sys


def generate(request: dict) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=request["model"], dtype="float32", enforce_eager=True, max_model_len=128,
              distributed_executor_backend="uni", seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], ignore_eos=True, logprobs=0)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in request["prompts"]], params, use_tqdm=False)
    completions = [out.outputs[0] for out in outputs]
    return {"tokens": [list(c.token_ids) for c in completions],
            "logprobs": [[step[t].logprob for step, t in zip(c.logprobs, c.token_ids)] for c in completions]}


def inspect(request: dict) -> dict:
    import importlib
    import inspect as pyinspect
    import typing

    from vllm.config.lora import MaxLoRARanks
    from vllm.model_executor.models.interfaces import supports_lora
    from vllm.model_executor.models.registry import _TEXT_GENERATION_MODELS

    found = {}
    for arch in request["architectures"]:
        module, name = _TEXT_GENERATION_MODELS[arch]
        source = importlib.import_module(f"vllm.model_executor.models.{module}")
        cls = getattr(source, name)
        # The layers (o_proj, down_proj, ...) may be built by classes of other model files (Qwen3 uses
        # Qwen2's MLP, Phi3 is a Llama): read every model file the architecture's own file draws on.
        files = {source.__name__} | {getattr(v, "__module__", "") for v in vars(source).values()}
        text = "".join(pyinspect.getsource(sys.modules[f]) for f in sorted(files)
                       if f.startswith("vllm.model_executor.models") and f in sys.modules)
        found[arch] = {"supports_lora": bool(supports_lora(cls)),
                       "packed": getattr(cls, "packed_modules_mapping", None) or {},
                       "embeddings": sorted(getattr(cls, "embedding_modules", None) or {}),
                       "source_names": sorted(n for n in request.get("names", []) if f'.{n}"' in text
                                              or f'"{n}"' in text)}
    return {"architectures": found, "max_lora_ranks": list(typing.get_args(MaxLoRARanks))}


if __name__ == "__main__":  # vLLM's engine may spawn processes, which re-import this file
    command, request = sys.argv[1], json.loads(sys.argv[2])
    result = {"generate": generate, "inspect": inspect}[command](request)
    print("\n" + json.dumps(result))
