"""Parity with TRL: our KTO loss equals TRL's and the paper's formula, by hand in float64, on a real batch.

No stub model. A real `trl.KTOTrainer` (TRL is a test-only dependency) is built on a tiny float64 GPT-2
with LoRA on every linear layer, its lora_B set to seeded non-zero values so that the policy differs
from the reference (adapter off). One batch from its own dataloader (real HH-RLHF text, tokenized and
collated by TRL, KL rows made by TRL's rotation of the completions) is scored by
`KTOTrainer._compute_loss`, where TRL 1.16 inlines its loss (it has no kto_loss function). A forward
hook records the per-token log-probs TRL's loss is computed from, and then, on the same tensors:

  1. TRL's loss, our `estimate_kl` + `kto_loss(...).losses.mean()` and eq. 7 of Ethayarajh et al.
     written out below in Python floats agree to 1e-6: the loss math is the same;
  2. our `Scorer` (policy, then `reference_mode()`) on the same peft model and batch gives the same
     summed log-probs as the naive full-logits log_softmax in float64 (to 1e-9: a float64 model stays
     in float64), and so does TRL's to a relative 1e-6, so TRL's `completion_mask` (completion tokens
     at their own positions) means what ours means;
  3. end to end, our loss from our own log-probs equals TRL's loss. TRL's fused head takes each
     token's log-softmax in float32, so its sums of ~ -100 to -160 are off by ~1e-5 (~1e-7 relative),
     and this comparison alone allows 1e-5 on the loss (measured here: 8e-7 at most).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math

import pytest
import torch

from conftest import HH_PATH
from training.data import Batch
from training.loss import estimate_kl, kto_loss
from training.model import Scorer

pytest.importorskip("trl")
TOL = 1e-6


@pytest.fixture
def one_thread():
    """Two threads make this VM's tiny float64 matmuls ~100x slower; one keeps the file at a few seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hh_rows(pairs: int) -> list:
    """(end of the last human turn, start of the answer) of the first HH-RLHF pairs: chosen, then rejected."""
    rows = []
    with gzip.open(HH_PATH, "rt", encoding="utf-8") as f:
        for _, line in zip(range(pairs), f):
            pair = json.loads(line)
            for key, label in (("chosen", True), ("rejected", False)):
                text = pair[key]
                cut = text.rfind("\n\nAssistant:") + len("\n\nAssistant:")
                rows.append({"prompt": text[max(text.rfind("\n\nHuman:", 0, cut), cut - 100):cut],
                             "completion": text[cut:cut + 24], "label": label})
    return rows


def naive_logps(model, ids, attention_mask, completion_mask) -> list:
    """Σ log p(y_t | y_<t) over completion tokens from the full float64 logits; token t is predicted at t-1."""
    logps = model(input_ids=ids, attention_mask=attention_mask).logits.log_softmax(-1)[:, :-1]
    return (logps.gather(-1, ids[:, 1:, None]).squeeze(-1) * completion_mask[:, 1:]).sum(-1).tolist()


def hand_loss(pol, ref, pol_kl, ref_kl, labels, beta, w_d, w_u) -> float:
    """Eq. 7 in plain floats: z0 = max(0, mean KL-pair log-ratio); the mean over examples of λ_y − v(x, y)."""
    z0 = max(0.0, sum(p - r for p, r in zip(pol_kl, ref_kl)) / len(pol_kl))
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    losses = [w_d * (1 - sigmoid(beta * ((p - r) - z0))) if y else w_u * (1 - sigmoid(beta * (z0 - (p - r))))
              for p, r, y in zip(pol, ref, labels)]
    return sum(losses) / len(losses)


@pytest.mark.slow
@pytest.mark.parametrize("desirable_only, beta, w_d, w_u", [(False, 0.1, 1.0, 1.0), (True, 0.25, 1.3, 0.7)],
                         ids=["mixed-defaults", "desirable-only-weighted"])
def test_our_kto_loss_equals_trl_and_the_hand_formula_on_a_real_batch(tiny_model, tmp_path, one_thread,
                                                                       desirable_only, beta, w_d, w_u):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    rows = [r for r in hh_rows(8) if r["label"]] if desirable_only else hh_rows(4)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64)
    args = KTOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, beta=beta,
                     desirable_weight=w_d, undesirable_weight=w_u, precompute_ref_log_probs=False,
                     per_device_train_batch_size=8)
    trainer = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(tiny_model),
                         peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    peft_model = trainer.model
    assert {p.dtype for p in peft_model.parameters()} == {torch.float64}  # TRL kept base and LoRA in float64
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["label"].bool()
    assert len(labels) == 8 and (labels.all() if desirable_only else labels.any() and not labels.all())

    seen = []  # (input_ids, summed log-probs) of each fused forward, as TRL's loss reduces them
    hook = peft_model.register_forward_hook(
        lambda _module, _args, kwargs, out: seen.append((kwargs["input_ids"], out.log_probs.sum(-1).detach())),
        with_kwargs=True)
    try:
        trl_loss = trainer._compute_loss(peft_model, batch, return_outputs=False).item()
    finally:
        hook.remove()
    # _compute_loss scores, in order: policy KL rows, policy, reference KL rows, reference.
    keys = [("policy", "KL_"), ("policy", ""), ("reference", "KL_"), ("reference", "")]
    assert [torch.equal(ids, batch[f"{p}input_ids"]) for (_, p), (ids, _) in zip(keys, seen)] == [True] * 4
    trl = {key: logps for key, (_, logps) in zip(keys, seen)}

    # 1. The same tensors through TRL's loss, ours and the formula by hand.
    kl = estimate_kl(trl["policy", "KL_"], trl["reference", "KL_"])
    ours_on_trl = kto_loss(trl["policy", ""], trl["reference", ""], labels, kl, beta, w_d, w_u).losses.mean().item()
    hand = hand_loss(*(trl[key].tolist() for key in [keys[1], keys[3], keys[0], keys[2]]), labels.tolist(),
                     beta, w_d, w_u)
    assert ours_on_trl == pytest.approx(trl_loss, abs=TOL)
    assert ours_on_trl == pytest.approx(hand, abs=TOL)
    assert trl_loss == pytest.approx(hand, abs=TOL)
    assert trainer._metrics["train"]["kl"][-1] == pytest.approx(kl.item(), abs=TOL)  # TRL's z0 is ours

    # 2. Our log-probs from the same batch: equal to TRL's and to the naive float64 computation.
    scorer, ours = Scorer(peft_model, chunk_tokens=64), {}
    with torch.no_grad():
        for mode, p in keys:
            ids, attention, completion = (batch[f"{p}{k}"] for k in ("input_ids", "attention_mask", "completion_mask"))
            with scorer.reference_mode() if mode == "reference" else contextlib.nullcontext():
                ours[mode, p] = scorer(Batch(ids, attention, completion.bool(), labels, 0))
                naive = naive_logps(peft_model, ids, attention, completion)
            assert ours[mode, p].tolist() == pytest.approx(naive, abs=1e-9), (mode, p)
            assert trl[mode, p].tolist() == pytest.approx(naive, rel=TOL), (mode, p)

    # 3. End to end: our log-probs, our z0, our loss against TRL's loss.
    our_kl = estimate_kl(ours["policy", "KL_"], ours["reference", "KL_"])
    our_loss = kto_loss(ours["policy", ""], ours["reference", ""], labels, our_kl, beta, w_d, w_u).losses.mean()
    assert our_loss.item() == pytest.approx(trl_loss, abs=10 * TOL)

    # Not a trivial agreement: z0 > 0 and the adapter moves the log-probs, so the loss is off its r = z0 value λ/2.
    rewards = (trl["policy", ""] - trl["reference", ""]).abs()
    assert kl > 0.05 and rewards.max() > 0.1 and abs(hand - w_d / 2) > 1e-3
