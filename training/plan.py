"""The per-epoch micro-batch plan, the z0 pairs inside each micro-batch, and `Plan`: which micro-batches each
process trains on at each optimizer step.

Guarantees, for every train-set size N ≥ 2 that `check_trainable` accepts (both classes, no prompt holding
more than half of the examples):

- every example is in exactly one micro-batch per epoch;
- every micro-batch holds at least 2 examples and no prompt holds more than half of it, so that
- `kl_partners` can pair each example's prompt with another example's completion by a derangement
  (a permutation without fixed points) that never pairs a prompt with a completion of the same prompt.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, List

import numpy as np


class DataError(ValueError):
    """The snapshot cannot be trained on as it is (re-exported by training.data)."""


class PlanError(DataError):
    """The examples cannot be planned as asked (`check_trainable` refuses such data before a run starts)."""


def batch_sizes(n: int, micro_batch_size: int) -> List[int]:
    """Micro-batch sizes for n examples: full ones, then the tail; never a micro-batch of 1, never over the size
    asked for except where micro_batch_size is 2 and n is odd (one micro-batch of 3)."""
    if n < 2:
        raise PlanError(f"{n} example(s): a micro-batch needs at least 2")
    q, r = divmod(n, micro_batch_size)
    if q == 0:
        return [n]
    if r == 0:
        return [micro_batch_size] * q
    if r >= 2:
        return [micro_batch_size] * q + [r]
    if micro_batch_size >= 3:  # a tail of 1: the last full micro-batch lends it one example
        return [micro_batch_size] * (q - 1) + [micro_batch_size - 1, 2]
    return [micro_batch_size] * (q - 1) + [3]


def plan_epoch(encoded, epoch: int, seed: int, micro_batch_size: int, group_size: int) -> List[np.ndarray]:
    """The epoch's micro-batches (arrays of example indices), shuffled, both classes in each, low padding.

    The two classes are shuffled and interleaved in proportion; the stream is cut into groups of
    `group_size` micro-batches; inside a group each class is sorted by length and micro-batch k takes
    the k-th length slice of both classes; the micro-batches' order is shuffled; finally examples are
    swapped between micro-batches (or, where no swap can do it, two micro-batches merged) until no
    prompt holds more than half of any micro-batch.
    """
    rng = np.random.default_rng([seed, epoch])
    lengths = encoded.lengths
    d = rng.permutation(np.flatnonzero(encoded.desirable))
    u = rng.permutation(np.flatnonzero(~encoded.desirable))
    position = np.concatenate([(np.arange(len(d)) + 0.5) / max(1, len(d)), (np.arange(len(u)) + 0.5) / max(1, len(u))])
    order = np.concatenate([d, u])[np.argsort(position, kind="stable")]

    sizes = batch_sizes(len(order), micro_batch_size)
    batches: List[np.ndarray] = []
    start = 0
    for g in range(0, len(sizes), group_size):
        group_sizes = sizes[g:g + group_size]
        group = order[start:start + sum(group_sizes)]
        start += len(group)
        batches.extend(_length_slices(group, group_sizes, encoded.desirable, lengths))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    return spread_prompts(batches, encoded.prompt_group)


def _length_slices(group: np.ndarray, sizes: List[int], desirable: np.ndarray, lengths: np.ndarray) -> List[np.ndarray]:
    d = group[desirable[group]]
    u = group[~desirable[group]]
    d = d[np.argsort(lengths[d], kind="stable")]
    u = u[np.argsort(lengths[u], kind="stable")]
    out, di, ui, left = [], 0, 0, len(group)
    for size in sizes:
        take_d = int(round(size * (len(d) - di) / left))
        take_d = min(max(take_d, size - (len(u) - ui)), size, len(d) - di)
        out.append(np.concatenate([d[di:di + take_d], u[ui:ui + size - take_d]]))
        di, ui, left = di + take_d, ui + size - take_d, left - size
    return out


def spread_prompts(batches: List[np.ndarray], groups: np.ndarray) -> List[np.ndarray]:
    """Swap examples between micro-batches until no prompt holds more than half of any; merge where none can.

    Each swap lowers one micro-batch's excess by one and leaves the donor within bounds, so the loop ends;
    a merge only happens where no donor exists, and all micro-batches merged into one is within bounds
    whenever no prompt holds more than half of all examples.
    """
    batches = [b.copy() for b in batches]
    counts = [Counter(groups[b].tolist()) for b in batches]
    i = 0
    while i < len(batches):
        prompt, top = counts[i].most_common(1)[0]
        if top <= len(batches[i]) // 2:
            i += 1
        elif not _swap_one(batches, counts, i, prompt, groups):
            if len(batches) == 1:
                raise PlanError("one prompt holds more than half of the examples; z0's pairs need other prompts")
            # Merge with the micro-batch holding the fewest of this prompt (then the smallest): the most room.
            j = min((k for k in range(len(batches)) if k != i), key=lambda k: (counts[k][prompt], len(batches[k])))
            lo, hi = min(i, j), max(i, j)
            batches[lo], counts[lo] = np.concatenate([batches[lo], batches[hi]]), counts[lo] + counts[hi]
            del batches[hi], counts[hi]
            i = lo  # the ones before it did not change
    return batches


def _swap_one(batches: List[np.ndarray], counts: List[Counter], i: int, prompt: int, groups: np.ndarray) -> bool:
    """Move one example of `prompt` out of batch i in exchange for one that keeps both batches within bounds."""
    batch, mine = batches[i], counts[i]
    out = int(np.flatnonzero(groups[batch] == prompt)[0])
    n = len(batches)
    for step in range(1, n):
        d = (i + step) % n
        donor, theirs = batches[d], counts[d]
        if theirs[prompt] + 1 > len(donor) // 2:
            continue  # the donor cannot take another of this prompt
        for j, other in enumerate(groups[donor].tolist()):
            if other != prompt and mine[other] + 1 <= len(batch) // 2:
                batch[out], donor[j] = donor[j], batch[out]
                mine[prompt] -= 1
                mine[other] += 1
                theirs[other] -= 1
                theirs[prompt] += 1
                return True
    return False


def kl_partners(groups: np.ndarray) -> np.ndarray:
    """A derangement of positions 0..n-1 in which no position is paired with one of the same prompt.

    Positions sorted by prompt (so each prompt's positions are contiguous) are shifted by the largest
    prompt's count g: a contiguous run of at most g positions cannot reach itself by a shift of g when
    g ≤ n - g, i.e. when no prompt holds more than half of the micro-batch.
    """
    n = len(groups)
    counts = Counter(np.asarray(groups).tolist())
    g = max(counts.values()) if counts else 0
    if n < 2 or g > n - g:
        raise PlanError(f"a micro-batch of {n} example(s) in which one prompt holds {g}: z0 pairs each example with "
                        "a completion of another prompt, so no prompt may hold more than half of a micro-batch")
    order = np.argsort(np.asarray(groups), kind="stable")
    partners = np.empty(n, dtype=np.int64)
    partners[order] = order[(np.arange(n) + g) % n]
    return partners


# --- the data stream: which micro-batches each process trains on at each step ----------------------------

@dataclass
class Plan:
    """Which micro-batches each process trains on at each optimizer step, and z0's pairs in each."""
    encoded: Any  # training.data.Encoded (which imports this module): its lengths and prompt groups are read
    config: Any  # training.config.TrainConfig
    world: int
    _epoch: int = -1
    _batches: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.per_step = self.world * self.config.gradient_accumulation_steps
        # Sizes depend on N only; an epoch whose plan had to merge two micro-batches has fewer, and is padded.
        planned = len(batch_sizes(len(self.encoded), self.config.micro_batch_size))
        self.batches_per_epoch = math.ceil(planned / self.per_step) * self.per_step
        self._epoch_batches(0)  # plan epoch 0 now: a plan that cannot be made fails before the model loads
        self.steps_per_epoch = self.batches_per_epoch // self.per_step
        c = self.config
        self.total_steps = c.max_steps or max(1, math.ceil(c.epochs * self.steps_per_epoch))

    def _epoch_batches(self, epoch: int) -> list:
        if epoch != self._epoch:
            c = self.config
            batches = plan_epoch(self.encoded, epoch, c.seed, c.micro_batch_size, c.length_group_size)
            # Like DistributedSampler: repeat the first micro-batches so every process gets the same count.
            short = max(0, self.batches_per_epoch - len(batches))
            self._epoch, self._batches = epoch, batches + (batches * (1 + short // len(batches)))[:short]
        return self._batches

    def micro_batches(self, step: int, rank: int) -> List[np.ndarray]:
        """This process's micro-batches for optimizer step `step` (0-based), deterministic from the seed."""
        out = []
        for a in range(self.config.gradient_accumulation_steps):
            g = step * self.per_step + a * self.world + rank
            out.append(self._epoch_batches(g // self.batches_per_epoch)[g % self.batches_per_epoch])
        return out

    def z0_pairs(self, step: int, rank: int, micro: List[np.ndarray]) -> list:
        """(examples, partners) per micro-batch: whose prompt meets whose completion in z0's estimate.

        'batch': the micro-batch's own examples, deranged so no prompt meets its own completion.
        'sample': as many examples drawn at random from the split, deterministic from (seed, step, rank); a
        draw in which one prompt holds more than half is redrawn (after 8 tries the micro-batch is used)."""
        groups = self.encoded.prompt_group
        out = []
        for a, idx in enumerate(micro):
            examples = idx
            if self.config.kl_pairs == "sample":
                rng = np.random.default_rng([self.config.seed, step, rank, a])
                for _ in range(8):
                    draw = rng.choice(len(self.encoded), size=len(idx), replace=False)
                    top = max(Counter(groups[draw].tolist()).values())
                    if top <= len(draw) - top:
                        examples = draw
                        break
            out.append((examples, examples[kl_partners(groups[examples])]))
        return out
