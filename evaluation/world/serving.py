"""The world's production model answering users: the base, or the base with the exported adapter merged in."""

from __future__ import annotations

import os

import torch

from evaluation.world.taste import messages
from training.data import render


def load_policy(base: str | os.PathLike, adapter: str | os.PathLike | None = None):
    """(model, tokenizer) in eval mode: the base, or the base with a trained adapter merged in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()  # merged: plain GPT-2 speed
    return model.eval(), tokenizer


@torch.no_grad()
def answer(model, tokenizer, prompts: list[str], seed: int, max_new_tokens: int = 32,
           batch_size: int = 200) -> list[str]:
    """Sampled answers to prompts rendered with training's template: temperature 1 over the full vocabulary,
    no top-k/top-p, so users see draws from exactly the policy KTO trained. Left-padded batches, KV cache."""
    generator = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = [render(messages(p), "", tokenizer)[0] for p in prompts[start:start + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every prompt starts at position 0
        step_ids, cache = enc["input_ids"], None
        done = torch.zeros(len(texts), dtype=torch.bool)
        tokens = []
        for _ in range(max_new_tokens):
            result = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, cache=cache,
                           use_cache=True, logits_to_keep=1)
            cache = result.cache
            # Inverse-CDF draw, one uniform per row: torch.multinomial over 50k classes was most of the time.
            cdf = torch.softmax(result.logits[:, -1].float(), dim=-1).cumsum_(dim=-1)  # (B, V)
            u = torch.rand((len(texts), 1), generator=generator) * cdf[:, -1:]
            drawn = torch.searchsorted(cdf, u).squeeze(1).clamp_(max=cdf.shape[1] - 1)
            token = torch.where(done, eos, drawn)  # (B,)
            tokens.append(token)
            done |= token == eos
            if done.all():
                break
            step_ids = token[:, None]
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
            positions = positions[:, -1:] + 1
        for row in torch.stack(tokens, dim=1).tolist():
            out.append(tokenizer.decode(row[:row.index(eos)] if eos in row else row).strip())
    return out
