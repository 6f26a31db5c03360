"""A snapshot's examples as token ids, and padded tensors for one micro-batch.

How a conversation becomes prompt and completion ids (joint tokenization, the end-of-turn token,
truncation) is `training/sequences.py`; the micro-batch plan and the z0 pairs are `training/plan.py`.
Every example that is truncated or dropped is counted in `Encoded.counts`, and every dropped one is
listed with its reason in `Encoded.dropped`: nothing is lost silently.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional

import numpy as np
import torch

from training.plan import DataError, kl_partners, plan_epoch  # noqa: F401  (re-exported)
from training.sequences import (PLAIN_ROLES, PromptTooLong, Template, Unsplittable, fit_prompt,  # noqa: F401
                                render, split_conversation)

COUNT_KEYS = ("examples_in", "truncated_prompt", "dropped_turns", "truncated_completion", "template_inserted",
              "dropped_empty", "unsplittable", "template_refused", "dropped_prompt_too_long")


@dataclass
class Encoded:
    """Token ids of one split; `prompt_group` is equal exactly when two examples share a prompt."""
    prompt_ids: List[np.ndarray]
    completion_ids: List[np.ndarray]
    desirable: np.ndarray  # (N,) bool
    prompt_group: np.ndarray  # (N,) int64
    counts: dict = field(default_factory=dict)
    rows: np.ndarray = None  # (N,) the row each example came from
    dropped: list = field(default_factory=list)  # (row, reason) of every row that is not an example

    def __len__(self) -> int:
        return len(self.desirable)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(p) + len(c) for p, c in zip(self.prompt_ids, self.completion_ids)], dtype=np.int64)

    def fingerprint(self) -> str:
        """Hash of every token id and label: the data part of the reference cache's key."""
        h = hashlib.sha256()
        for p, c, d in zip(self.prompt_ids, self.completion_ids, self.desirable):
            h.update(np.int64(len(p)).tobytes() + p.tobytes() + np.int64(len(c)).tobytes() + c.tobytes()
                     + bytes([bool(d)]))
        return h.hexdigest()


def encode(rows: list, tokenizer, max_length: int, max_prompt_length: int, split: str = "train",
           check: bool = True) -> Encoded:
    """Tokenize every conversation jointly and truncate; raise DataError when the rows cannot train KTO at all."""
    template = Template(tokenizer)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["examples_in"] = len(rows)
    dropped: list = []
    texts = _render_all(template, rows, counts, dropped)
    prompt_lengths = [len(ids) for ids in template.ids([t[1] for t in texts])]
    for k, (i, prompt_text, _, messages) in enumerate(texts):
        if prompt_lengths[k] <= max_prompt_length:
            continue
        try:
            messages, turns, cut = fit_prompt(template, messages, max_prompt_length)
        except PromptTooLong as err:
            texts[k] = None
            counts["dropped_prompt_too_long"] += 1
            dropped.append((i, f"prompt too long: {err}"))
            continue
        counts["truncated_prompt"] += 1
        counts["dropped_turns"] += turns
        texts[k] = (i, template.prompt(messages), template.full(messages, rows[i]["completion"]), messages)
    texts = [t for t in texts if t is not None]
    full_ids = template.ids([t[2] for t in texts])
    prompt_ids = template.ids([t[1] for t in texts])

    kept_p, kept_c, kept_rows = [], [], []
    for (i, prompt_text, full_text, messages), p, f in zip(texts, prompt_ids, full_ids):
        try:
            split_ids = split_conversation(template, messages, rows[i]["completion"], prompt_text=prompt_text,
                                           full_text=full_text, prompt_ids=p, full_ids=f)
        except Unsplittable as err:
            counts["unsplittable"] += 1
            dropped.append((i, f"unsplittable: {err}"))
            continue
        c = split_ids.completion_ids
        if len(split_ids.prompt_ids) + len(c) > max_length:
            c = c[:max_length - len(split_ids.prompt_ids)]  # the completion keeps its start
            counts["truncated_completion"] += 1
        counts["template_inserted"] += split_ids.template_inserted
        kept_p.append(np.asarray(split_ids.prompt_ids, dtype=np.int64))
        kept_c.append(np.asarray(c, dtype=np.int64))
        kept_rows.append(i)
    # Two examples share a prompt exactly when the model sees the same prompt tokens.
    groups = [int.from_bytes(hashlib.blake2b(p.tobytes(), digest_size=8).digest(), "little", signed=True)
              for p in kept_p]
    desirable = np.array([bool(rows[i]["desirable"]) for i in kept_rows], dtype=bool)
    encoded = Encoded(kept_p, kept_c, desirable, np.array(groups, dtype=np.int64),
                      rows=np.array(kept_rows, dtype=np.int64), dropped=sorted(dropped))
    counts.update(examples=len(encoded), desirable=int(desirable.sum()), undesirable=int((~desirable).sum()),
                  prompts=len(set(groups)))
    encoded.counts = counts
    if check:
        check_trainable(encoded, split)
    return encoded


def _render_all(template: Template, rows: list, counts: dict, dropped: list) -> list:
    """(row, prompt text, whole conversation text, messages) of every row the template can render."""
    from jinja2 import TemplateError

    out = []
    for i, row in enumerate(rows):
        if not row["prompt"] or not str(row["completion"]).strip():
            counts["dropped_empty"] += 1
            dropped.append((i, "empty prompt or completion"))
            continue
        try:
            out.append((i, template.prompt(row["prompt"]), template.full(row["prompt"], row["completion"]),
                        row["prompt"]))
        except TemplateError as err:  # e.g. Mistral's template refuses turns that do not alternate
            counts["template_refused"] += 1
            dropped.append((i, f"the chat template refused the conversation: {err}"))
    return out


def desirable_only(encoded: Encoded) -> Encoded:
    """The thumbs-up examples (SFT's data); the counts say how many undesirable ones were set aside."""
    keep = np.flatnonzero(encoded.desirable)
    if len(keep) == 0:
        raise DataError(f"the split has no desirable (thumbs-up) examples of {len(encoded)}: SFT trains on those only")
    counts = dict(encoded.counts, examples=len(keep), desirable=len(keep), undesirable=0,
                  set_aside_undesirable=int(len(encoded) - len(keep)),
                  prompts=len(set(encoded.prompt_group[keep].tolist())))
    return Encoded([encoded.prompt_ids[i] for i in keep], [encoded.completion_ids[i] for i in keep],
                   encoded.desirable[keep], encoded.prompt_group[keep], counts,
                   rows=None if encoded.rows is None else encoded.rows[keep], dropped=encoded.dropped)


def check_trainable(encoded: Encoded, split: str = "train") -> None:
    """Refuse, before any model is loaded, data that KTO cannot train on; the message says what to change."""
    c = encoded.counts
    lost = c.get("unsplittable", 0) + c.get("template_refused", 0) + c.get("dropped_prompt_too_long", 0)
    if c["examples"] == 0 and lost:
        raise DataError(f"none of the {c['examples_in']} {split} examples could be tokenized for training "
                        f"({_first_reason(encoded)}); run `thumbs inspect` on the snapshot and this base model")
    if c["desirable"] == 0 or c["undesirable"] == 0:
        missing = "desirable (thumbs-up)" if c["desirable"] == 0 else "undesirable (thumbs-down)"
        raise DataError(
            f"the {split} split has {c['desirable']} desirable and {c['undesirable']} undesirable examples: "
            f"KTO needs both classes and there are no {missing} ones. Widen the curation window or collect "
            "more feedback of that kind.")
    if c["prompts"] < 2:
        raise DataError("every example shares one prompt: z0 needs completions of at least 2 different prompts")
    if split == "train":
        top = max(Counter(encoded.prompt_group.tolist()).values())
        if top > len(encoded) - top:
            raise DataError(f"one prompt holds {top} of the {len(encoded)} train examples: z0 pairs each example "
                            "with a completion of another prompt, so no prompt may hold more than half of them. "
                            "Collect feedback on more prompts")


def _first_reason(encoded: Encoded) -> str:
    return encoded.dropped[0][1] if encoded.dropped else "no reason recorded"


# --- tensors --------------------------------------------------------------------------------------------

class Batch(NamedTuple):
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    completion_mask: torch.Tensor  # (B, T) True on completion tokens
    desirable: torch.Tensor  # (B,) bool
    tokens: int  # real (non-pad) tokens

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device),
                     self.desirable.to(device), self.tokens)


def collate(encoded: Encoded, indices: np.ndarray, max_length: int, pad_id: int,
            completions_from: Optional[np.ndarray] = None) -> Batch:
    """Right-padded tensors of prompt i + completion i, or + the completion of `completions_from[i]` (z0 pairs)."""
    completions_from = indices if completions_from is None else completions_from
    rows = []
    for i, j in zip(indices, completions_from):
        p = encoded.prompt_ids[i]
        rows.append((p, encoded.completion_ids[j][:max_length - len(p)]))
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(rows), width), dtype=bool)
    completion = np.zeros((len(rows), width), dtype=bool)
    for r, (p, c) in enumerate(rows):
        input_ids[r, :len(p)], input_ids[r, len(p):len(p) + len(c)] = p, c
        attention[r, :len(p) + len(c)] = True
        completion[r, len(p):len(p) + len(c)] = True
    return Batch(torch.from_numpy(input_ids), torch.from_numpy(attention).long(), torch.from_numpy(completion),
                 torch.from_numpy(encoded.desirable[indices].copy()), int(attention.sum()))


def passes(encoded: Encoded, indices: np.ndarray, max_length: int, tokens_per_pass: int,
           completions_from: Optional[np.ndarray] = None) -> List[np.ndarray]:
    """Positions into `indices` (prompt i + completion i, or of `completions_from[i]`) cut into forward passes:
    longest first, each pass's padded size (its rows x its longest row) within `tokens_per_pass`; a row longer
    than that is a pass alone. Sorted by length, a pass holds little padding, which costs compute as much as
    tokens do; the budget bounds what a pass keeps for backward (activations grow with rows x width)."""
    completions_from = indices if completions_from is None else completions_from
    prompts = np.fromiter((len(encoded.prompt_ids[i]) for i in indices), np.int64, len(indices))
    answers = np.fromiter((len(encoded.completion_ids[j]) for j in completions_from), np.int64, len(indices))
    widths = prompts + np.minimum(answers, max_length - prompts)
    order = np.argsort(-widths, kind="stable")
    out, start = [], 0
    while start < len(order):
        rows = max(1, min(len(order) - start, tokens_per_pass // int(widths[order[start]])))
        out.append(order[start:start + rows])
        start += rows
    return out
