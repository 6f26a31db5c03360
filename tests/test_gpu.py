"""The CUDA path: QLoRA (NF4 base, bf16 compute) training, a crash and resume, the fused head against the naive
log-softmax, evaluation on the GPU against the CPU, and the merged export of a GPU-trained adapter.

Marked `gpu`: skipped without CUDA (tests/conftest.py). `benchmarks/gpu.sh` runs them on a GPU; its `--dry-run`
sets THUMBS_GPU_DRYRUN=1, which runs them on the CPU with a smaller model and float32 tolerances, so they
cannot rot between lent GPUs. Nothing here uses Beam or Prefect (the GPU image has neither): the snapshot
is written as `thumbs curate` lays one out, from real HH-RLHF questions with a learnable taste (a polite
answer thumbed up, a curt one thumbed down; every fifth question held out for evaluation).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import GPT2_TOKENIZER, HH_PATH

pytestmark = pytest.mark.gpu

ON_CPU = os.environ.get("THUMBS_GPU_DRYRUN") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"
# A small Llama with grouped-query attention on the GPU; a smaller one for the CPU dry run.
SHAPE = (dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
         if ON_CPU else
         dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2))
POLITE, CURT = "Sure, happy to help! Here is what I would do.", "No. Figure it out yourself."
QUESTIONS = 40 if ON_CPU else 150
STEPS = 12 if ON_CPU else 24  # the dry run must stay quick on 2 cores


def quick(**fields):
    from training.config import TrainConfig

    base = dict(max_steps=STEPS, micro_batch_size=8, max_length=128, max_prompt_length=96, checkpoint_every=0,
                learning_rate=5e-3, quantize="nf4", device=DEVICE)
    return TrainConfig(**{**base, **fields})


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("llama")
    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=512, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **SHAPE)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def style(tmp_path_factory) -> Path:
    import pyarrow as pa

    from ingest.curate.snapshot import write_split, write_stats

    root = tmp_path_factory.mktemp("style")
    splits = {"train": [], "eval": []}
    with gzip.open(HH_PATH, "rt") as f:
        for i, line in enumerate(f):
            if i == QUESTIONS:
                break
            question = json.loads(line)["chosen"].split("\n\nHuman: ")[1].split("\n\nAssistant:")[0].strip()
            for answer, up in ((POLITE, True), (CURT, False)):
                splits["eval" if i % 5 == 0 else "train"].append(
                    {"prompt": [{"role": "user", "content": question}], "completion": answer, "desirable": up})
    schema = pa.schema([("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                        ("completion", pa.string()), ("desirable", pa.bool_())])
    for split, rows in splits.items():
        write_split(root, split, pa.Table.from_pylist(rows, schema=schema))
    n = len(splits["train"]) // 2
    write_stats(root, {  # the fields `thumbs curate` writes that training and reports read
        "snapshot_id": "gpu-style", "n_desirable": n, "n_undesirable": n, "desirable_weight": 1.0,
        "undesirable_weight": 1.0, "balance_ratio": 1.0, "balance_in_band": True, "warnings": [],
        "counts": {"train_desirable": n, "train_undesirable": n, "eval_desirable": len(splits["eval"]) // 2,
                   "eval_undesirable": len(splits["eval"]) // 2}})
    return root


@pytest.fixture(scope="module")
def trained(llama, style, tmp_path_factory) -> dict:
    from training.trainer import train

    out = tmp_path_factory.mktemp("trained") / "adapter"
    if not ON_CPU:
        torch.cuda.reset_peak_memory_stats()
    summary = train(style, str(llama), out, quick(), log=lambda line: None)
    peak = None if ON_CPU else torch.cuda.max_memory_allocated()
    return {"out": out, "summary": summary, "peak_cuda_bytes": peak}


def metrics(out: Path) -> list:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_qlora_trains_on_an_nf4_base_computing_in_bf16_and_exports_the_adapter(trained, llama):
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    from training.model import load_base

    out = trained["out"]
    meta = json.loads((out / "thumbs_meta.json").read_text())
    assert meta["device"].startswith(DEVICE) and meta["config"]["quantize"] == "nf4"
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["kl"]) and r["kl"] >= 0 for r in rows)
    # Before the first update the policy is the reference; bf16 rounds the cached pass (other batches,
    # other padding) differently, so only nearly 0.
    assert abs(rows[0]["rewards/desirable"]) < (1e-4 if ON_CPU else 0.05)
    assert np.mean([r["loss"] for r in rows[-4:]]) < 0.8 * rows[0]["loss"], [r["loss"] for r in rows]
    lora_b = [v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in lora_b)

    base = load_base(llama, "nf4", torch.device(DEVICE))
    layers = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 7 * SHAPE["num_hidden_layers"]  # q, k, v, o, gate, up, down: all 4-bit
    want = torch.float32 if ON_CPU else torch.bfloat16
    assert all(m.compute_dtype == want and m.weight.dtype == torch.uint8 for m in layers)
    assert all(m.weight.device.type == DEVICE for m in layers)
    if not ON_CPU:
        print(f"peak CUDA memory of the training run: {trained['peak_cuda_bytes'] / 2**20:.0f} MiB")
        assert 0 < trained["peak_cuda_bytes"] < 4 << 30


def test_a_crashed_run_resumes_to_the_adapter_of_an_uninterrupted_one(llama, style, tmp_path):
    from safetensors.torch import load_file

    from training import checkpoint
    from training.trainer import train

    config = quick(max_steps=8, checkpoint_every=2, learning_rate=1e-3)
    train(style, str(llama), tmp_path / "straight", config, log=lambda line: None)

    class Crash(Exception):
        pass

    out = tmp_path / "crashed"

    def crash_once_checkpointed(line: str) -> None:  # a progress line after the first checkpoint: crash
        if checkpoint.latest(out) is not None:
            raise Crash(line)

    with pytest.raises(Crash):
        train(style, str(llama), out, config, log=crash_once_checkpointed)
    assert not (out / "thumbs_meta.json").exists() and checkpoint.latest(out) is not None
    summary = train(style, str(llama), out, config, resume=True, log=lambda line: None)
    assert 0 < summary["resumed_from_step"] < 8
    assert [r["step"] for r in metrics(out)] == list(range(1, 9))

    straight_losses = [r["loss"] for r in metrics(tmp_path / "straight")]
    resumed_losses = [r["loss"] for r in metrics(out)]
    np.testing.assert_allclose(resumed_losses, straight_losses, atol=1e-6 if ON_CPU else 1e-3)
    a = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    # The CPU repeats itself exactly; CUDA's atomic adds (index_add, scatter_add) round in any order.
    worst = max(relative(b[k], a[k]) for k in a if "lora_B" in k)
    assert worst < (1e-5 if ON_CPU else 1e-2), worst


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_the_fused_head_matches_the_naive_log_softmax_and_never_holds_the_batch_logits(softcap):
    from torch import nn

    from training.logprobs import completion_logps

    dtype = torch.float32 if ON_CPU else torch.bfloat16
    # On the GPU, enough completion positions that the batch's logits dwarf one chunk's; float64 on 2 cores is slow.
    B, T, C, V = (4, 48, 64, 8192) if ON_CPU else (4, 256, 256, 50257)
    g = torch.Generator().manual_seed(int(softcap or 0))
    hidden = torch.randn(B, T, C, generator=g).to(DEVICE, dtype)
    head = nn.Linear(C, V, bias=False).to(DEVICE, dtype).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, C, generator=g) / 4)  # logits of a few units: a peaked softmax
    ids = torch.randint(0, V, (B, T), generator=g).to(DEVICE)
    starts, ends = torch.tensor([5, 15, 25, 1]) * T // 48, torch.tensor([48, 40, 48, 20]) * T // 48  # prompt, padding
    pos = torch.arange(T)
    mask = ((pos >= starts[:, None]) & (pos < ends[:, None])).to(DEVICE)
    weights = torch.randn(B, generator=g).to(DEVICE)  # an arbitrary upstream gradient

    def naive(h, w):
        logits = (h @ w.T).float() if h.dtype != torch.float64 else h @ w.T
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(h.device)).squeeze(-1)
        return (logp * mask[:, 1:].to(h.device)).sum(-1)

    def run(fn):
        h = hidden.clone().requires_grad_(True)
        if not ON_CPU:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        before = 0 if ON_CPU else torch.cuda.memory_allocated()
        out = fn(h)
        (out * weights).sum().backward()
        peak = None if ON_CPU else torch.cuda.max_memory_allocated() - before
        return out.detach(), h.grad, peak

    fused, fused_grad, fused_peak = run(lambda h: completion_logps(h, head, ids, mask, chunk_tokens=64, softcap=softcap))
    plain, plain_grad, plain_peak = run(lambda h: naive(h, head.weight))
    h64 = hidden.double().cpu().requires_grad_(True)
    exact = naive(h64, head.weight.double().cpu())
    (exact * weights.double().cpu()).sum().backward()

    # Both against float64: bf16 operands land between 1e-3 and 1e-2; the fused path no worse than naive.
    limit = 1e-5 if ON_CPU else 1e-2
    errors = {"fused": relative(fused, exact), "naive": relative(plain, exact),
              "fused grad": relative(fused_grad, h64.grad), "naive grad": relative(plain_grad, h64.grad)}
    assert errors["fused"] < limit and errors["fused grad"] < limit, errors
    assert errors["fused"] <= 3 * errors["naive"] + 1e-6 and errors["fused grad"] <= 3 * errors["naive grad"] + 1e-6, errors
    if not ON_CPU:
        batch_logits = int(mask[:, 1:].sum()) * V * 4  # the float32 logits of every completion position
        print(f"extra peak CUDA memory: fused {fused_peak / 2**20:.1f} MiB, naive {plain_peak / 2**20:.1f} MiB")
        assert fused_peak < batch_logits / 2 < plain_peak, (fused_peak, plain_peak, batch_logits)


def test_evaluation_on_the_gpu_ranks_held_out_feedback_like_the_cpu(trained, style, tmp_path):
    from evaluation.evaluate import EvalConfig, evaluate

    adapter = trained["out"]
    runs = {}
    for device in (DEVICE, "cpu"):
        config = EvalConfig(generation_prompts=2 if device == DEVICE else 0, max_new_tokens=8, resamples=50,
                            device=device)
        runs[device] = evaluate(adapter, style, config=config, out=tmp_path / device, log=lambda line: None)
    ours, cpu = runs[DEVICE]["candidate"], runs["cpu"]["candidate"]
    assert (tmp_path / DEVICE / "eval.json").exists() and not (adapter / "eval.json").exists()
    assert ours["preference"]["auc"] > 0.9 and ours["preference"]["auc_ci95"][0] > 0.5, ours["preference"]
    assert math.isfinite(ours["drift"]["kl_per_token"]) and ours["drift"]["kl_per_token"] > 0
    assert ours["drift"]["length"]["greedy"] > 0
    rewards = {name: np.array(r["rewards"]["desirable"] + r["rewards"]["undesirable"]) for name, r in
               (("device", ours), ("cpu", cpu))}
    assert len(rewards["device"]) == len(rewards["cpu"]) == runs["cpu"]["eval_examples"]["examples"] >= 16
    # bf16 on the GPU, float32 on the CPU: the same ranking, the rewards a few rounding steps apart.
    corr = float(np.corrcoef(rewards["device"], rewards["cpu"])[0, 1])
    assert corr > 0.97 and abs(ours["preference"]["auc"] - cpu["preference"]["auc"]) <= 0.05, (corr, ours, cpu)


def test_the_merged_export_of_a_gpu_trained_adapter_is_base_plus_adapter(trained, style, llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from deploy.export import export
    from deploy.registry import Registry
    from deploy.promote import promote
    from evaluation.evaluate import EvalConfig, evaluate
    from evaluation.promotion import PromotionPolicy

    adapter = Path(shutil.copytree(trained["out"], tmp_path / "adapter"))
    evaluate(adapter, style, config=EvalConfig(generation_prompts=0, resamples=50, device=DEVICE), log=lambda s: None)
    registry = Registry(tmp_path / "registry")
    record = promote(adapter, registry, PromotionPolicy(), log=lambda s: None)
    dtype = "float32" if ON_CPU else "bfloat16"
    export(registry, record["version"], "merged", tmp_path / "merged", dtype=dtype, log=lambda s: None)
    assert json.loads((tmp_path / "merged" / "serving.json").read_text())["dtype"] == dtype

    torch_dtype = getattr(torch, dtype)
    ids = torch.tensor([[464, 3290, 318, 257, 1332, 11, 290, 339]], device=DEVICE)
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch_dtype).to(DEVICE).eval()(ids).logits
        base_model = AutoModelForCausalLM.from_pretrained(llama, dtype=torch_dtype).to(DEVICE).eval()
        base = base_model(ids).logits
        adapted = PeftModel.from_pretrained(base_model, adapter).eval()(ids).logits
    gap, moved = relative(merged, adapted), relative(merged, base)
    assert gap < (1e-4 if ON_CPU else 2e-2) and moved > 5 * gap, (gap, moved)
