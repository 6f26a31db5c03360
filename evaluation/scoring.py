"""Held-out scores of one or more adapters on one base: implied rewards, KL from the reference, lengths.

All adapters are loaded onto a single copy of the base (quantised as they were trained), and the
reference is that base with adapters switched off, as in training. Per eval example and adapter:

    reward = β · (log πθ(y|x) − log πref(y|x))                              (summed over completion tokens)
    KL     = Σ_t Σ_v πθ(v | x, y_<t) · (log πθ(v | ·) − log πref(v | ·))     (exact, over the vocabulary)

Only completion positions go through the output head, a chunk at a time, so the full-vocabulary
logits of a whole batch never exist at once.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
from torch import nn

from evaluation.generate import generate
from training.data import Encoded, collate
from training.logprobs import head_logits
from training.model import check_head, disable_dropout, head_spec, load_base

CHUNK_TOKENS = 256


def load_adapters(model_dir: Path, adapters: Dict[str, Path], quantize: str, device: torch.device) -> nn.Module:
    """The base with each adapter loaded under its name; nothing trainable, every dropout off."""
    from peft import PeftModel

    base = load_base(model_dir, quantize, device)
    names = list(adapters)
    model = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0], is_trainable=False)
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name, is_trainable=False)
    # Train mode with every dropout off, not eval mode (peft sets eval): in eval mode bitsandbytes repacks 4-bit
    # CPU weights for inference, which fails on small layers and rounds differently from training.
    model.train()
    disable_dropout(model)  # LoRA's dropout too: scoring is deterministic
    return model


def score_examples(model: nn.Module, encoded: Encoded, names: List[str], *, batch_size: int, max_length: int,
                   pad_id: int, log: Callable[[str], None]) -> Dict[str, dict]:
    """Per adapter: (N,) policy and reference log-probs, (N,) summed token KL and (N,) completion lengths."""
    hf = model.get_base_model()
    backbone, head = getattr(hf, hf.base_model_prefix), hf.get_output_embeddings()
    softcap, scale = head_spec(hf)  # the model's own head processing, exactly as training scores
    autocast = next(hf.parameters()).device.type == "cuda"
    with model.disable_adapter():
        check_head(hf, backbone, head, softcap, scale, autocast)
    device = next(hf.parameters()).device
    n = len(encoded)
    out = {name: {"policy_logps": np.zeros(n), "reference_logps": np.zeros(n), "kl": np.zeros(n)} for name in names}
    order = np.argsort(encoded.lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    start = last = time.monotonic()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        for k, idx in enumerate(batches, 1):
            batch = collate(encoded, idx, max_length, pad_id).to(device)
            targets_mask = batch.completion_mask[:, 1:]  # token t is predicted at position t-1
            rows = torch.nonzero(targets_mask, as_tuple=True)[0]  # (N_tok,)
            targets = batch.input_ids[:, 1:][targets_mask]  # (N_tok,)

            def states() -> torch.Tensor:  # (N_tok, C) at the completion positions
                hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  use_cache=False).last_hidden_state
                return hidden[:, :-1][targets_mask]

            with model.disable_adapter():
                reference_states = states()
            for name in names:
                model.set_adapter(name)
                policy_states = states()
                logps_p, logps_r, kl = _per_token(model, head, policy_states, reference_states, targets, softcap,
                                                  scale)
                for key, values in (("policy_logps", logps_p), ("reference_logps", logps_r), ("kl", kl)):
                    sums = torch.zeros(len(idx), dtype=torch.float64, device=device).index_add(0, rows, values)
                    out[name][key][idx] = sums.cpu().numpy()
            now = time.monotonic()
            if now - last > 5 or k == len(batches):
                last = now
                log(f"  eval scoring: {k}/{len(batches)} batches, ETA {(len(batches) - k) * (now - start) / k:,.0f}s")
    tokens = np.array([len(c) for c in encoded.completion_ids], dtype=np.int64)
    for name in names:
        out[name]["tokens"] = tokens
    return out


def _per_token(model, head, policy_states, reference_states, targets, softcap, scale) -> tuple:
    """Target log-probs under policy and reference, and the exact KL, per completion token (float64)."""
    logps_p, logps_r, kl = [], [], []
    for s in range(0, len(targets), CHUNK_TOKENS):
        t = targets[s:s + CHUNK_TOKENS]
        with model.disable_adapter():  # the head too, in case the adapter targets it
            lr = _log_softmax(head(reference_states[s:s + CHUNK_TOKENS]), softcap, scale)  # (n, V)
        lp = _log_softmax(head(policy_states[s:s + CHUNK_TOKENS]), softcap, scale)
        logps_p.append(lp.gather(1, t[:, None])[:, 0])
        logps_r.append(lr.gather(1, t[:, None])[:, 0])
        kl.append((lp.exp() * (lp - lr)).sum(-1))
    cat = lambda parts: torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64,  # noqa: E731
                                                                            device=targets.device)
    return cat(logps_p), cat(logps_r), cat(kl)


def _log_softmax(raw: torch.Tensor, softcap, scale) -> torch.Tensor:
    return torch.log_softmax(head_logits(raw, softcap, scale), dim=-1)


def generation_lengths(model, tokenizer, prompts: List[list], names: List[str], *, max_new_tokens: int,
                       seed: int, batch_size: int) -> dict:
    """Mean answer length, greedy and sampled, of the reference and each adapter; three example answers each."""
    result = {}
    for name in ["reference"] + names:
        context = model.disable_adapter() if name == "reference" else contextlib.nullcontext()
        if name != "reference":
            model.set_adapter(name)
        with context:
            greedy = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed,
                              batch_size=batch_size)
            sampled = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, sample=True, seed=seed,
                               batch_size=batch_size)
        result[name] = {"greedy": float(np.mean([g.tokens for g in greedy])),
                        "sampled": float(np.mean([g.tokens for g in sampled])),
                        "examples": [g.text for g in sampled[:3]]}
    return result


def suite_answers(model, tokenizer, prompts: List[list], name: str, *, max_new_tokens: int,
                  batch_size: int) -> List[str]:
    """Greedy answers of `name` ('reference' = adapters off) to a suite's prompts."""
    context = model.disable_adapter() if name == "reference" else contextlib.nullcontext()
    if name != "reference":
        model.set_adapter(name)
    with context:
        return [g.text for g in generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size)]
