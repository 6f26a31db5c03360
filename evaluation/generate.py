"""Answers from the base model or base + adapter, rendered exactly as training rendered its prompts.

Prompts go through `training.data.render` (the tokenizer's chat template, else the plain HH
template), are left-padded and decoded in batches; an answer ends at EOS, at the template's
end-of-turn token (the one training ends every completion with: Phi-3's `<|end|>`, Qwen's
`<|im_end|>`), at the plain template's next "\\n\\nHuman:" turn, or at `max_new_tokens`. `tokens`
counts the answer's tokens up to that end, which is what the length-drift metric compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from training.data import render
from training.sequences import end_of_turn_id

STOP_TEXT = "\n\nHuman:"  # the plain template's next user turn: the answer is over


@dataclass
class Generation:
    text: str
    tokens: int


@torch.no_grad()
def generate(model, tokenizer, prompts: List[list], *, max_new_tokens: int = 64, sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 16) -> List[Generation]:
    """One answer per prompt (a list of {role, content} messages), greedy or sampled with a fixed seed."""
    texts, templated = [], False
    for messages in prompts:
        text, _, templated = render(messages, "", tokenizer)
        texts.append(text)
    stops = stop_ids(tokenizer)
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # sampling draws from torch's global generator; restore it afterwards
    out: List[Generation] = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=not templated).to(device)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                                 temperature=temperature if sample else None, top_p=top_p if sample else None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
            for row in ids[:, enc["input_ids"].shape[1]:].tolist():
                out.append(_cut(row, tokenizer, stops))
    finally:
        tokenizer.padding_side = side
        torch.random.set_rng_state(generator_state)
    return out


def stop_ids(tokenizer) -> List[int]:
    """EOS and the template's end-of-turn token: where the served model's answer ends."""
    ids = [tokenizer.eos_token_id, end_of_turn_id(tokenizer)]
    return sorted({i for i in ids if i is not None})


def _cut(row: list, tokenizer, stops: List[int]) -> Generation:
    ends = [row.index(i) for i in stops if i in row]
    if ends:
        row = row[:min(ends)]
    text = tokenizer.decode(row, skip_special_tokens=True)
    if STOP_TEXT in text:
        text = text[:text.index(STOP_TEXT)]
        row = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Generation(text.strip(), len(row))
