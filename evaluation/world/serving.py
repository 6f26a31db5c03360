"""The world's production model answering users: the base, or the base with the exported adapter merged in."""

from __future__ import annotations

import os

import torch

from evaluation.world.taste import messages
from training.data import render


def load_policy(base: str | os.PathLike, adapter: str | os.PathLike | None = None, device: str | None = None):
    """(model, tokenizer) in eval mode: the base, or the base with a trained adapter merged in; on `device`
    (default: the GPU where there is one, else the CPU; a GPU's draws differ from the CPU's, each reproducible)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()  # merged: plain GPT-2 speed
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def answer(model, tokenizer, prompts: list[str], seed: int, max_new_tokens: int = 32,
           batch_size: int = 200) -> list[str]:
    """Sampled answers to prompts rendered with training's template: temperature 1 over the full vocabulary,
    no top-k/top-p, so users see draws from exactly the policy KTO trained. Left-padded batches, KV cache."""
    return [text for text, _ in sample(model, tokenizer, prompts, seed, max_new_tokens, batch_size)]


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], seed: int, max_new_tokens: int = 32, batch_size: int = 200,
           temperature: float = 1.0, top_p: float = 1.0) -> list[tuple[str, bool]]:
    """(answer, finished) per prompt: drawn at `temperature` from the smallest set of tokens whose probability
    reaches `top_p` (nucleus sampling, as vLLM serves), finished when the model ended it within
    `max_new_tokens` (else the user sees it cut off). The same seed gives the same draws."""
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    eos = tokenizer.eos_token_id
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = [render(messages(p), "", tokenizer)[0] for p in prompts[start:start + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every prompt starts at position 0
        step_ids, cache = enc["input_ids"], None
        done = torch.zeros(len(texts), dtype=torch.bool, device=device)
        tokens = []
        for _ in range(max_new_tokens):
            result = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, cache=cache,
                           use_cache=True, logits_to_keep=1)
            cache = result.cache
            token = torch.where(done, eos, _draw(result.logits[:, -1].float(), temperature, top_p, generator))
            tokens.append(token)
            done |= token == eos
            if done.all():
                break
            step_ids = token[:, None]
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
            positions = positions[:, -1:] + 1
        for row in torch.stack(tokens, dim=1).tolist():
            finished = eos in row
            out.append((tokenizer.decode(row[:row.index(eos)] if finished else row).strip(), finished))
    return out


def _draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row by inverse CDF, one uniform per row (torch.multinomial over 50k classes was most of
    the time); with top_p < 1 over the probability-sorted vocabulary, cut where the nucleus is complete."""
    probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens: keep while it is below top_p
        probs = probs.masked_fill(before >= top_p, 0.0)
    cdf = probs.cumsum_(dim=-1)
    u = torch.rand((len(logits), 1), generator=generator, device=logits.device) * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, u).clamp_(max=cdf.shape[1] - 1)  # (B, 1)
    return (drawn if order is None else order.gather(1, drawn)).squeeze(1)
