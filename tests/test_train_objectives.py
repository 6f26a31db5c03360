"""The trainer's other objectives and z0 estimates, end to end on CPU: SFT on the thumbs-up examples only
(the baseline a team without KTO runs, and the first stage of KTO after SFT), and z0 from pairs sampled
across the split instead of the micro-batch (the lab's third micro-batch variant, LAB.md)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from ingest.curate.snapshot import read_split
from training.config import TrainConfig
from training.data import collate, encode
from training.model import Scorer, load_tokenizer
from training.refcache import cache_dir
from training.trainer import train

pytestmark = pytest.mark.slow


def quick(**fields) -> TrainConfig:
    base = dict(max_steps=8, micro_batch_size=4, max_length=128, max_prompt_length=96, checkpoint_every=0,
                learning_rate=1e-2, quantize="none", device="cpu")
    return TrainConfig(**{**base, **fields})


def completion_logps(model_dir: Path, adapter: Path, snapshot: Path) -> dict:
    """Mean summed log-prob of the polite and the curt answer over the split's prompts, base vs adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_dir)
    encoded = encode(read_split(snapshot), tokenizer, 128, 96)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter)).eval()
    scorer = Scorer(model, 256)
    batch = collate(encoded, torch.arange(len(encoded)).numpy(), 128, tokenizer.pad_token_id)
    with torch.no_grad():
        tuned = scorer(batch)
        with scorer.reference_mode():
            base = scorer(batch)
    up = batch.desirable
    return {"base_up": base[up].mean().item(), "base_down": base[~up].mean().item(),
            "tuned_up": tuned[up].mean().item(), "tuned_down": tuned[~up].mean().item()}


def test_sft_trains_on_the_thumbs_up_only_and_makes_them_likelier(style_snapshot, tiny_model, tmp_path):
    snapshot = Path(shutil.copytree(style_snapshot, tmp_path / "snapshot"))
    out = tmp_path / "sft"
    train(snapshot, str(tiny_model), out, quick(objective="sft"), log=lambda line: None)

    meta = json.loads((out / "thumbs_meta.json").read_text())
    rows = read_split(snapshot)
    assert meta["config"]["objective"] == "sft"
    assert meta["data"]["undesirable"] == 0
    assert meta["data"]["desirable"] == sum(r["desirable"] for r in rows)
    assert meta["data"]["set_aside_undesirable"] == sum(not r["desirable"] for r in rows)
    assert not cache_dir(snapshot).exists()  # no reference policy, so no reference log-probs computed
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(s["kl"] == 0 and s["margin"] is None and s["rewards/desirable"] is None for s in steps)
    # the loss is a mean token NLL: log(vocab) ≈ 10.8 for a random model, and it falls as the answer is learned
    assert 5 < steps[0]["loss"] < 12 and steps[-1]["loss"] < steps[0]["loss"] - 0.2

    p = completion_logps(tiny_model, out, snapshot)
    # the thumbed-up answer, seen in training, is likelier (~+4.7 nats measured); the curt one, never seen, is
    # left about where it was (~+0.3)
    assert p["tuned_up"] - p["base_up"] > 2 + max(0.0, p["tuned_down"] - p["base_down"])


def test_kto_with_z0_from_sampled_pairs_trains_and_records_it(style_snapshot, tiny_model, tmp_path):
    out = tmp_path / "kto"
    lines = []
    train(style_snapshot, str(tiny_model), out, quick(kl_pairs="sample", beta=0.5), log=lines.append)
    meta = json.loads((out / "thumbs_meta.json").read_text())
    assert meta["config"]["kl_pairs"] == "sample"
    assert any("z0=kl (sample pairs)" in line for line in lines)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(s["kl"]) and s["kl"] >= 0 for s in steps)
    assert any(s["kl"] > 0 for s in steps[1:])  # the adapter moved, so the mismatched pairs' log-ratio did too
    assert steps[-1]["margin"] > steps[0]["margin"]
