"""A snapshot's examples as token ids, and padded tensors for one micro-batch.

How a conversation becomes prompt and completion ids (joint tokenization, the end-of-turn token,
truncation) is `training/sequences.py`; the micro-batch plan and the z0 pairs are `training/plan.py`.
Every example that is truncated or dropped is counted in `Encoded.counts`, and every dropped one is
listed with its reason in `Encoded.dropped`: nothing is lost silently.

Memory: rows are rendered and tokenized `ENCODE_ROWS` at a time (the rows may be a stream:
`ingest.curate.snapshot.iter_split`), and the ids of all examples are kept in two flat int32 arrays with
offsets (`Ragged`), 4 bytes a token: no Python object per token or per example survives encoding.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, NamedTuple, Optional

import numpy as np
import torch

from training.plan import DataError, kl_partners, plan_epoch  # noqa: F401  (re-exported)
from training.sequences import (PLAIN_ROLES, PromptTooLong, Template, Unsplittable, fit_prompt,  # noqa: F401
                                render, split_conversation)

ENCODE_ROWS = 2048  # rows rendered and tokenized together: their texts and id lists are the transient memory
COUNT_KEYS = ("examples_in", "truncated_prompt", "dropped_turns", "truncated_completion", "template_inserted",
              "dropped_empty", "unsplittable", "template_refused", "dropped_prompt_too_long")


class Ragged:
    """Sequences of token ids in one flat int32 array: the i-th is `values[offsets[i]:offsets[i + 1]]` (a view).
    Indexed, iterated and measured like a list of arrays."""

    __slots__ = ("values", "offsets", "_lengths")

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values, self.offsets, self._lengths = values, offsets, None

    @classmethod
    def of(cls, sequences: Iterable) -> "Ragged":
        arrays = [np.asarray(s, dtype=np.int32) for s in sequences]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        return cls(np.concatenate(arrays) if arrays else np.zeros(0, np.int32), offsets)

    @classmethod
    def joined(cls, parts: List["Ragged"]) -> "Ragged":
        starts = np.cumsum([0] + [len(p.values) for p in parts[:-1]])
        offsets = np.concatenate([np.zeros(1, np.int64)] + [p.offsets[1:] + at for p, at in zip(parts, starts)])
        return cls(np.concatenate([p.values for p in parts]) if parts else np.zeros(0, np.int32), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:  # read per micro-batch (`passes`): computed once
            self._lengths = np.diff(self.offsets)
        return self._lengths

    def take(self, indices: np.ndarray) -> "Ragged":
        return Ragged.of(self[i] for i in indices)


@dataclass
class Encoded:
    """Token ids of one split; `prompt_group` is equal exactly when two examples share a prompt."""
    prompt_ids: Ragged
    completion_ids: Ragged
    desirable: np.ndarray  # (N,) bool
    prompt_group: np.ndarray  # (N,) int64
    counts: dict = field(default_factory=dict)
    rows: np.ndarray = None  # (N,) the row each example came from
    dropped: list = field(default_factory=list)  # (row, reason) of every row that is not an example

    def __post_init__(self):  # lists of id arrays (tests build small ones by hand) are stored flat too
        if not isinstance(self.prompt_ids, Ragged):
            self.prompt_ids = Ragged.of(self.prompt_ids)
        if not isinstance(self.completion_ids, Ragged):
            self.completion_ids = Ragged.of(self.completion_ids)

    def __len__(self) -> int:
        return len(self.desirable)

    @property
    def lengths(self) -> np.ndarray:
        return self.prompt_ids.lengths + self.completion_ids.lengths

    def fingerprint(self) -> str:
        """Hash of every token id (as int64) and label: the data part of the reference cache's key."""
        h = hashlib.sha256()
        for p, c, d in zip(self.prompt_ids, self.completion_ids, self.desirable):
            h.update(np.int64(len(p)).tobytes() + p.astype(np.int64).tobytes() + np.int64(len(c)).tobytes()
                     + c.astype(np.int64).tobytes() + bytes([bool(d)]))
        return h.hexdigest()


def encode(rows: Iterable[dict], tokenizer, max_length: int, max_prompt_length: int, split: str = "train",
           check: bool = True) -> Encoded:
    """Tokenize every conversation jointly and truncate; raise DataError when the rows cannot train KTO at all.
    `rows` ({prompt, completion, desirable}) may be a list or a stream; they are read `ENCODE_ROWS` at a time."""
    template = Template(tokenizer)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    dropped: list = []
    prompts, completions, kept_rows, desirable = [], [], [], []
    stream, first = iter(rows), 0
    while True:
        chunk = list(itertools.islice(stream, ENCODE_ROWS))
        if not chunk:
            break
        p, c, kept = _encode_chunk(template, chunk, first, max_length, max_prompt_length, counts, dropped)
        prompts.append(p)
        completions.append(c)
        kept_rows.extend(kept)
        desirable.extend(bool(chunk[i - first]["desirable"]) for i in kept)
        first += len(chunk)
    counts["examples_in"] = first
    prompt_ids, completion_ids = Ragged.joined(prompts), Ragged.joined(completions)
    # Two examples share a prompt exactly when the model sees the same prompt tokens.
    groups = np.fromiter((int.from_bytes(hashlib.blake2b(p.astype(np.int64).tobytes(), digest_size=8).digest(),
                                         "little", signed=True) for p in prompt_ids), np.int64, len(prompt_ids))
    desirable = np.array(desirable, dtype=bool)
    encoded = Encoded(prompt_ids, completion_ids, desirable, groups, rows=np.array(kept_rows, dtype=np.int64),
                      dropped=sorted(dropped))
    counts.update(examples=len(encoded), desirable=int(desirable.sum()), undesirable=int((~desirable).sum()),
                  prompts=len(set(groups.tolist())))
    encoded.counts = counts
    if check:
        check_trainable(encoded, split)
    return encoded


def _encode_chunk(template: Template, rows: list, first: int, max_length: int, max_prompt_length: int, counts: dict,
                  dropped: list) -> tuple[Ragged, Ragged, list]:
    """Rows `first`.. of the split: their prompt and completion ids and the row numbers kept."""
    texts = _render_all(template, rows, counts, dropped, first)
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
        texts[k] = (i, template.prompt(messages), template.full(messages, rows[i - first]["completion"]), messages)
    texts = [t for t in texts if t is not None]
    full_ids = template.ids([t[2] for t in texts])
    prompt_ids = template.ids([t[1] for t in texts])

    kept_p, kept_c, kept_rows = [], [], []
    for (i, prompt_text, full_text, messages), p, f in zip(texts, prompt_ids, full_ids):
        try:
            split_ids = split_conversation(template, messages, rows[i - first]["completion"], prompt_text=prompt_text,
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
        kept_p.append(split_ids.prompt_ids)
        kept_c.append(c)
        kept_rows.append(i)
    return Ragged.of(kept_p), Ragged.of(kept_c), kept_rows


def _render_all(template: Template, rows: list, counts: dict, dropped: list, first: int = 0) -> list:
    """(row, prompt text, whole conversation text, messages) of every row the template can render; rows are
    numbered from `first`."""
    from jinja2 import TemplateError

    out = []
    for i, row in enumerate(rows, first):
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
    return Encoded(encoded.prompt_ids.take(keep), encoded.completion_ids.take(keep),
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
    prompts = encoded.prompt_ids.lengths[indices]
    answers = encoded.completion_ids.lengths[completions_from]
    widths = prompts + np.minimum(answers, max_length - prompts)
    order = np.argsort(-widths, kind="stable")
    out, start = [], 0
    while start < len(order):
        rows = max(1, min(len(order) - start, tokens_per_pass // int(widths[order[start]])))
        out.append(order[start:start + rows])
        start += rows
    return out
