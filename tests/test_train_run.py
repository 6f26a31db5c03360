"""End-to-end KTO training on CPU: a tiny random GPT-2 (real tokenizer) and a real HH-RLHF snapshot.

Each run is a handful of steps through the 4-bit (NF4) QLoRA path that is the default everywhere.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from ingest.curate.snapshot import TRAIN, read_stats, split_files, write_stats
from tests.conftest import ROOT
from training.config import TrainConfig
from training.model import weights_fingerprint
from training.refcache import cache_dir
from training.trainer import Diverged, fit, setup, train
from training import distributed

pytestmark = pytest.mark.slow

EXPORTED = {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "metrics.jsonl", "thumbs_meta.json"}


def quick(**fields) -> TrainConfig:
    base = dict(max_steps=4, micro_batch_size=4, max_length=256, max_prompt_length=128, checkpoint_every=0,
                learning_rate=1e-3)
    return TrainConfig(**{**base, **fields})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def thumbs(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "training.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture
def snapshot(hh_snapshot, tmp_path) -> Path:
    """A private copy, so each test starts without a reference cache."""
    return Path(shutil.copytree(hh_snapshot, tmp_path / "snapshot"))


def test_training_moves_the_adapter_not_the_base_and_exports_exactly_the_listed_files(snapshot, tiny_model, tmp_path):
    out = tmp_path / "adapter"
    run = setup(snapshot, str(tiny_model), out, quick(), distributed.Processes(), resume=False, say=lambda s: None)
    base_before = {k: v.clone() for k, v in run.model.state_dict().items() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in run.model.state_dict().items() if "lora_" in k}
    summary = fit(run, say=lambda s: None)

    after = run.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items())  # the 4-bit base never moves
    moved = [k for k, v in lora_before.items() if not torch.equal(after[k], v)]
    assert len(moved) == len(lora_before)  # every LoRA matrix trained
    assert {p.name for p in out.iterdir()} == EXPORTED

    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and summary["steps"] == 4
    assert all(math.isfinite(r["kl"]) and r["kl"] >= 0 for r in rows)
    assert rows[0]["rewards/desirable"] == pytest.approx(0, abs=1e-4)  # step 0: policy == reference
    meta = json.loads((out / "thumbs_meta.json").read_text())
    stats = read_stats(snapshot)
    assert meta["snapshot_id"] == stats["snapshot_id"]
    assert meta["base_model_sha256"] == weights_fingerprint(tiny_model)
    assert meta["config"]["desirable_weight"] == stats["desirable_weight"]
    assert meta["config"]["max_steps"] == 4 and meta["libraries"]["torch"] == torch.__version__.split("+")[0] \
        or meta["libraries"]["torch"] == torch.__version__
    exported = load_file(str(out / "adapter_model.safetensors"))
    assert exported and all(v.abs().sum() > 0 for k, v in exported.items() if "lora_B" in k)


def test_the_adapter_loads_onto_the_base_with_peft_and_changes_its_outputs(snapshot, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    train(snapshot, str(tiny_model), out, quick(quantize="none"), log=lambda s: None)
    ids = torch.tensor([[464, 3290, 318, 257]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, out)
    assert not torch.allclose(tuned(ids).logits, before)


def test_reference_log_probs_are_cached_per_snapshot_and_base(snapshot, tiny_model, tmp_path):
    train(snapshot, str(tiny_model), tmp_path / "a", quick(max_steps=1), log=lambda s: None)
    train(snapshot, str(tiny_model), tmp_path / "b", quick(max_steps=1), log=lambda s: None)
    first, second = (json.loads((tmp_path / n / "thumbs_meta.json").read_text()) for n in "ab")
    assert (first["reference_cache"]["hit"], second["reference_cache"]["hit"]) == (False, True)
    assert len(list(cache_dir(snapshot).glob("*.npy"))) == 1
    assert not (snapshot / "refcache").exists()  # beside the snapshot, never in it: curate's files stay as written
    train(snapshot, str(tiny_model), tmp_path / "c", quick(max_steps=1, quantize="none"), log=lambda s: None)
    third = json.loads((tmp_path / "c" / "thumbs_meta.json").read_text())
    assert third["reference_cache"]["hit"] is False  # another quantisation is another reference
    # Only config.json changes (the weights do not): another model, another reference.
    edited = Path(shutil.copytree(tiny_model, tmp_path / "edited-base"))
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps(dict(config, layer_norm_epsilon=0.5)))
    train(snapshot, str(edited), tmp_path / "d", quick(max_steps=1), log=lambda s: None)
    fourth = json.loads((tmp_path / "d" / "thumbs_meta.json").read_text())
    assert fourth["reference_cache"]["hit"] is False and fourth["base_model_sha256"] == first["base_model_sha256"]
    # Only the truncation limits change: another reference too.
    train(snapshot, str(tiny_model), tmp_path / "e", quick(max_steps=1, max_prompt_length=100), log=lambda s: None)
    assert json.loads((tmp_path / "e" / "thumbs_meta.json").read_text())["reference_cache"]["hit"] is False


def test_killed_run_resumes_to_the_same_adapter_as_an_uninterrupted_one(snapshot, tiny_model, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 16\ncheckpoint_every: 2\nmicro_batch_size: 4\nmax_length: 256\n"
                      "max_prompt_length: 128\nlearning_rate: 1.0e-3\nlora_dropout: 0.1\n")  # randomness to restore
    args = ["--snapshot", str(snapshot), "--base-model", str(tiny_model), "--config", str(config)]
    straight = thumbs(*args, "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    out = tmp_path / "killed"
    victim = thumbs(*args, "--out", str(out))
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "step-0000004").exists():
        assert victim.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (out / "thumbs_meta.json").exists()
    assert (out / "checkpoints" / "step-0000004").exists()

    refused = thumbs(*args, "--out", str(out))
    assert refused.wait(timeout=600) == 2 and "--resume" in refused.stderr.read()
    resumed = thumbs(*args, "--out", str(out), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()

    assert [r["step"] for r in metrics(out)] == list(range(1, 17))
    assert {p.name for p in out.iterdir()} == EXPORTED  # checkpoints are gone once the adapter is out
    a = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5)


def test_resume_restores_rng_optimizer_and_scheduler_each_of_which_matters(snapshot, tiny_model, tmp_path,
                                                                           monkeypatch):
    from training import checkpoint

    monkeypatch.setattr(checkpoint, "remove_all", lambda out: None)  # keep the straight run's checkpoints
    config = quick(max_steps=6, checkpoint_every=3, keep_checkpoints=1, lora_dropout=0.1, warmup_ratio=0.5)
    train(snapshot, str(tiny_model), tmp_path / "straight", config, log=lambda s: None)
    straight = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    saved = tmp_path / "straight" / "checkpoints" / "step-0000003"

    def resumed(name: str, spoil) -> float:
        """Resume from the straight run's step-3 checkpoint, saved again after `spoil` changed one state."""
        out = tmp_path / name
        run = setup(snapshot, str(tiny_model), out, config, distributed.Processes(), resume=True, say=lambda s: None)
        state = checkpoint.load(saved, run.model, run.optimizer, run.scheduler)
        spoil(run)
        checkpoint.save(out, state["step"], run.model, run.optimizer, run.scheduler, run.identity, keep=1)
        train(snapshot, str(tiny_model), out, config, resume=True, log=lambda s: None)
        got = load_file(str(out / "adapter_model.safetensors"))
        return max(float((got[k] - straight[k]).abs().max()) for k in straight)

    assert resumed("intact", lambda run: None) <= 1e-6
    assert resumed("rng", lambda run: torch.manual_seed(12345)) > 1e-5  # LoRA dropout draws other masks
    assert resumed("optimizer", lambda run: run.optimizer.state.clear()) > 1e-5  # Adam's moments lost
    assert resumed("scheduler", lambda run: run.scheduler.load_state_dict(
        dict(run.scheduler.state_dict(), last_epoch=0, _step_count=1))) > 1e-5


def test_z0_stays_finite_and_non_negative_and_rises_when_the_policy_is_pushed_away(snapshot, tiny_model, tmp_path):
    out = tmp_path / "pushed"
    # A large learning rate with thumbs-up weighted 4x raises the likelihood of all real text bluntly:
    # the mismatched completions get likelier too, which is what z0 is there to measure.
    lines = []
    train(snapshot, str(tiny_model), out, quick(max_steps=6, learning_rate=1e-2, desirable_weight=4.0),
          log=lines.append)
    # λD set by hand, λU from the snapshot: the pair is checked against the band, by name.
    assert any(line.startswith("warning: λD=4, λU=1") and "outside [1, 4/3]" in line for line in lines)
    kl = [r["kl"] for r in metrics(out)]
    assert all(math.isfinite(k) and k >= 0 for k in kl)
    assert kl[0] == 0.0  # before the first update policy == reference
    assert max(kl[1:]) > 0.5


def test_zero_z0_variant_skips_the_estimate(snapshot, tiny_model, tmp_path):
    out = tmp_path / "z0"
    train(snapshot, str(tiny_model), out, quick(max_steps=3, learning_rate=1e-2, z0="zero"), log=lambda s: None)
    assert [r["kl"] for r in metrics(out)] == [0.0, 0.0, 0.0]


def test_undesirable_only_data_fails_with_a_clear_message(snapshot, tiny_model, tmp_path):
    stats = read_stats(snapshot)
    for part in split_files(snapshot, TRAIN):
        table = pq.read_table(part)
        pq.write_table(table.filter(pc.invert(table["desirable"])), part)
    write_stats(snapshot, stats)  # sealed again, as a snapshot built by hand is: the data is what is wrong here
    proc = thumbs("--snapshot", str(snapshot), "--base-model", str(tiny_model), "--out", str(tmp_path / "x"),
                  "--max-steps", "2")
    assert proc.wait(timeout=600) == 2
    err = proc.stderr.read()
    assert "0 desirable" in err and "KTO needs both classes" in err and "nan" not in err.lower()
    assert not (tmp_path / "x" / "thumbs_meta.json").exists()


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(snapshot, tiny_model, tmp_path):
    out = tmp_path / "boom"
    with pytest.raises(Diverged, match=r"step \d+: loss .* gradient norm (nan|inf)") as caught:
        train(snapshot, str(tiny_model), out, quick(learning_rate=1e6, checkpoint_every=1), log=lambda s: None)
    step = int(str(caught.value).split(":")[0].split()[1])
    assert step >= 2 and f"step-{step - 1:07d}" in str(caught.value)  # the last good one, named in the message
    assert (out / "checkpoints" / f"step-{step - 1:07d}").exists()
    assert not (out / "thumbs_meta.json").exists()


def test_two_cpu_processes_on_gloo_train_one_adapter(snapshot, tiny_model, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "training.cli", "--snapshot", str(snapshot), "--base-model", str(tiny_model), "--out", str(out),
         "--max-steps", "3", "--micro-batch-size", "4"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert {p.name for p in out.iterdir()} == EXPORTED
    meta = json.loads((out / "thumbs_meta.json").read_text())
    assert meta["processes"] == 2
    rows = metrics(out)
    assert [r["examples"] for r in rows] == [8, 8, 8]  # 4 per process, summed over both
    assert all(math.isfinite(r["kl"]) and r["kl"] >= 0 for r in rows)


@pytest.mark.parametrize("objective", ["kto", "sft"])
def test_passes_within_a_token_budget_train_the_same_adapter_as_whole_micro_batches(snapshot, tiny_model, tmp_path,
                                                                                     objective):
    """tokens_per_pass cuts each micro-batch into length-sorted passes whose gradients add up to the step's: one
    example a pass (budget 1) and the whole micro-batch at once (a budget no batch reaches) give the same losses,
    z0 and adapter, to float32 rounding."""
    runs = {}
    for budget in (1, 1 << 20):
        out = tmp_path / f"budget-{budget}"
        train(snapshot, tiny_model, out, quick(quantize="none", tokens_per_pass=budget, objective=objective),
              log=lambda s: None)  # a Path names the base as well as a str
        runs[budget] = (metrics(out), load_file(out / "adapter_model.safetensors"))
    (alone, alone_weights), (whole, whole_weights) = runs[1], runs[1 << 20]
    for a, w in zip(alone, whole):
        assert a["tokens"] == w["tokens"] and a["examples"] == w["examples"]
        for key in ("loss", "kl", "reward_desirable", "logps_desirable"):
            if w.get(key) is not None:
                assert a[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), key
    assert whole_weights.keys() == alone_weights.keys()
    moved = 0.0
    for name, tensor in whole_weights.items():
        torch.testing.assert_close(alone_weights[name], tensor, rtol=1e-4, atol=1e-6)
        moved = max(moved, tensor.abs().max().item())
    assert moved > 0  # lora_B starts at zero: the steps did move it
