"""A snapshot's examples as token ids, the per-epoch micro-batch plan, and padded tensors for one micro-batch.

Rendering: with the tokenizer's chat template when it has one; otherwise the plain template

    \\n\\nHuman: {user turn}\\n\\nAssistant: {assistant turn}...\\n\\nAssistant:   →   " {completion}<eos>"

(Anthropic HH style; `system` turns render as `System:`). Prompt and completion are tokenized
separately, so the boundary between them is exact. Truncation keeps the end of the prompt and the
start of the completion; every truncated example is counted in `Encoded.counts`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, NamedTuple, Optional

import numpy as np
import pyarrow.dataset as ds
import torch

PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


class DataError(ValueError):
    """The snapshot cannot be trained on as it is."""


def read_split(snapshot: Path, split: str = "train") -> list:
    """Rows {prompt, completion, desirable} of a snapshot split, in file order (deterministic)."""
    folder = Path(snapshot) / split
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    if not files:
        raise DataError(f"no {split} Parquet files under {folder}: is {snapshot} a `thumbs curate` snapshot?")
    table = ds.dataset(files, format="parquet").to_table(columns=["prompt", "completion", "desirable"])
    return table.to_pylist()


def render(messages: list, completion: str, tokenizer) -> tuple:
    """(prompt text, completion text, whether the prompt text already holds the special tokens)."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                             tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):], True
        return prompt, completion + (tokenizer.eos_token or ""), True
    turns = "".join(f"\n\n{PLAIN_ROLES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages)
    return turns + "\n\nAssistant:", " " + completion, False


@dataclass
class Encoded:
    """Token ids of one split; `prompt_group` is equal exactly when two examples share a prompt."""
    prompt_ids: List[np.ndarray]
    completion_ids: List[np.ndarray]
    desirable: np.ndarray  # (N,) bool
    prompt_group: np.ndarray  # (N,) int64
    counts: dict = field(default_factory=dict)

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


def encode(rows: list, tokenizer, max_length: int, max_prompt_length: int, split: str = "train") -> Encoded:
    """Tokenize and truncate; raise DataError when the rows cannot train KTO at all."""
    rendered = [render(r["prompt"], r["completion"], tokenizer) for r in rows]
    templated = bool(rendered) and rendered[0][2]
    prompts = tokenizer([p for p, _, _ in rendered], add_special_tokens=not templated)["input_ids"]
    completions = tokenizer([c for _, c, _ in rendered], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if (not templated and tokenizer.eos_token_id is not None) else []

    counts = {"examples_in": len(rows), "truncated_prompt": 0, "truncated_completion": 0, "dropped_empty": 0}
    prompt_ids, completion_ids, desirable, groups = [], [], [], []
    for row, (prompt_text, _, _), p, c in zip(rows, rendered, prompts, completions):
        c = c + eos
        if not p or not c:
            counts["dropped_empty"] += 1
            continue
        if len(p) > max_prompt_length:
            p, counts["truncated_prompt"] = p[-max_prompt_length:], counts["truncated_prompt"] + 1
        if len(p) + len(c) > max_length:
            c, counts["truncated_completion"] = c[:max_length - len(p)], counts["truncated_completion"] + 1
        prompt_ids.append(np.asarray(p, dtype=np.int64))
        completion_ids.append(np.asarray(c, dtype=np.int64))
        desirable.append(bool(row["desirable"]))
        groups.append(int.from_bytes(hashlib.blake2b(prompt_text.encode(), digest_size=8).digest(), "little",
                                     signed=True))
    encoded = Encoded(prompt_ids, completion_ids, np.array(desirable, dtype=bool), np.array(groups, dtype=np.int64))
    counts.update(examples=len(encoded), desirable=int(encoded.desirable.sum()),
                  undesirable=int((~encoded.desirable).sum()), prompts=len(set(groups)))
    encoded.counts = counts
    check_trainable(encoded, split)
    return encoded


def check_trainable(encoded: Encoded, split: str = "train") -> None:
    c = encoded.counts
    if c["desirable"] == 0 or c["undesirable"] == 0:
        missing = "desirable (thumbs-up)" if c["desirable"] == 0 else "undesirable (thumbs-down)"
        raise DataError(
            f"the {split} split has {c['desirable']} desirable and {c['undesirable']} undesirable examples: "
            f"KTO needs both classes and there are no {missing} ones. Widen the curation window or collect "
            "more feedback of that kind.")
    if c["prompts"] < 2:
        raise DataError("every example shares one prompt: z0 needs completions of at least 2 different prompts")


# --- the plan: which examples form each micro-batch, epoch by epoch ---------------------------------------

def plan_epoch(encoded: Encoded, epoch: int, seed: int, micro_batch_size: int, group_size: int) -> List[np.ndarray]:
    """The epoch's micro-batches (arrays of example indices), shuffled, both classes in each, low padding.

    The two classes are shuffled and interleaved in proportion; the stream is cut into groups of
    `group_size` micro-batches; inside a group each class is sorted by length and micro-batch k takes
    the k-th length slice of both classes; finally the micro-batches' order is shuffled. Every
    micro-batch holds `micro_batch_size` examples (the epoch's last may hold up to 1.5x that), at least
    2, and completions of at least 2 different prompts.
    """
    rng = np.random.default_rng([seed, epoch])
    lengths = encoded.lengths
    d = rng.permutation(np.flatnonzero(encoded.desirable))
    u = rng.permutation(np.flatnonzero(~encoded.desirable))
    position = np.concatenate([(np.arange(len(d)) + 0.5) / len(d), (np.arange(len(u)) + 0.5) / len(u)])
    order = np.concatenate([d, u])[np.argsort(position, kind="stable")]

    batches: List[np.ndarray] = []
    span = micro_batch_size * group_size
    for start in range(0, len(order), span):
        group = order[start:start + span]
        n_batches = max(1, int(round(len(group) / micro_batch_size)))
        batches.extend(_length_slices(group, n_batches, encoded.desirable, lengths))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    _ensure_two_prompts(batches, encoded.prompt_group)
    return batches


def _length_slices(group: np.ndarray, n_batches: int, desirable: np.ndarray, lengths: np.ndarray) -> List[np.ndarray]:
    d = group[desirable[group]]
    u = group[~desirable[group]]
    d = d[np.argsort(lengths[d], kind="stable")]
    u = u[np.argsort(lengths[u], kind="stable")]
    bounds = np.round(np.linspace(0, len(group), n_batches + 1)).astype(int)
    out, di, ui = [], 0, 0
    for k in range(n_batches):
        size = bounds[k + 1] - bounds[k]
        left = len(group) - bounds[k]
        take_d = int(round(size * (len(d) - di) / left)) if left else 0
        take_d = min(max(take_d, size - (len(u) - ui)), size, len(d) - di)
        out.append(np.concatenate([d[di:di + take_d], u[ui:ui + size - take_d]]))
        di, ui = di + take_d, ui + size - take_d
    return out


def _ensure_two_prompts(batches: List[np.ndarray], prompt_group: np.ndarray) -> None:
    """Swap an example in from a neighbour where a micro-batch holds a single prompt (rare: many answers per prompt)."""
    for i, batch in enumerate(batches):
        if len(np.unique(prompt_group[batch])) > 1:
            continue
        for other in list(range(i + 1, len(batches))) + list(range(i)):
            donor = batches[other]
            for j in np.flatnonzero(prompt_group[donor] != prompt_group[batch[0]]):
                batch[0], donor[j] = donor[j], batch[0]
                if len(np.unique(prompt_group[donor])) > 1:
                    break
                batch[0], donor[j] = donor[j], batch[0]  # the donor would be left single-prompt: undo
            else:
                continue
            break


def kl_partners(groups: np.ndarray) -> np.ndarray:
    """For each position i, the next position (cyclically) whose prompt differs: the mismatched completion."""
    n = len(groups)
    partners = np.empty(n, dtype=np.int64)
    for i in range(n):
        for step in range(1, n):
            j = (i + step) % n
            if groups[j] != groups[i]:
                partners[i] = j
                break
        else:
            raise DataError("a micro-batch holds a single prompt; z0 cannot be estimated from it")
    return partners


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
