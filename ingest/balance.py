"""KTO's class weights from the class counts: a pure function, so it is the same everywhere it is used.

The KTO paper (Ethayarajh et al., 2024, §4.2) and TRL's docs give the rule: choose λD, λU so that

    λD·nD / (λU·nU)  ∈  [1, 4/3]

i.e. the desirable side carries as much total weight as the undesirable one, or a little more.
The rarer class is up-weighted; the other keeps weight 1. Counts already inside the band keep 1 and 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

BAND = (1.0, 4.0 / 3.0)
WARN_IMBALANCE = 50.0  # beyond 1:50 the rarer class is a handful of examples repeated in every epoch


class InsufficientData(ValueError):
    """Too few examples of a class to train on."""


@dataclass(frozen=True)
class ClassWeights:
    desirable_weight: float
    undesirable_weight: float
    n_desirable: int
    n_undesirable: int

    @property
    def ratio(self) -> float:
        """λD·nD / (λU·nU): inside [1, 4/3] by construction."""
        return self.desirable_weight * self.n_desirable / (self.undesirable_weight * self.n_undesirable)

    @property
    def in_band(self) -> bool:
        return BAND[0] - 1e-9 <= self.ratio <= BAND[1] + 1e-9


def class_weights(n_desirable: int, n_undesirable: int, target: float = 1.0, min_per_class: int = 1) -> ClassWeights:
    """λD and λU for these counts, so that λD·nD / (λU·nU) = `target` when a class must be up-weighted.

    >>> class_weights(100, 1000)   # 1 thumbs-up per 10 thumbs-down: desirable up-weighted 10x
    ClassWeights(desirable_weight=10.0, undesirable_weight=1.0, n_desirable=100, n_undesirable=1000)
    >>> class_weights(1000, 100)   # the other way round: undesirable up-weighted to reach the target
    ClassWeights(desirable_weight=1.0, undesirable_weight=10.0, n_desirable=1000, n_undesirable=100)
    >>> class_weights(120, 100).desirable_weight   # ratio 1.2 is inside the band already
    1.0
    """
    if not BAND[0] <= target <= BAND[1]:
        raise ValueError(f"target ratio must lie in [1, 4/3], got {target}")
    if min_per_class < 1:
        raise ValueError("min_per_class must be at least 1")
    for name, n in (("desirable (thumbs-up)", n_desirable), ("undesirable (thumbs-down)", n_undesirable)):
        if n < min_per_class:
            raise InsufficientData(
                f"only {n} {name} example(s) after curation; KTO needs at least {min_per_class} of each class "
                f"(counts: {n_desirable} desirable, {n_undesirable} undesirable). Widen the window or lower "
                "min_per_class.")
    ratio = n_desirable / n_undesirable
    if max(ratio, 1 / ratio) > WARN_IMBALANCE:
        warnings.warn(f"class imbalance beyond 1:{WARN_IMBALANCE:.0f} ({n_desirable} desirable, {n_undesirable} "
                      "undesirable): the rarer class is heavily up-weighted", stacklevel=2)
    if BAND[0] <= ratio <= BAND[1]:
        return ClassWeights(1.0, 1.0, n_desirable, n_undesirable)
    if ratio < BAND[0]:  # desirable is rarer
        return ClassWeights(target / ratio, 1.0, n_desirable, n_undesirable)
    return ClassWeights(1.0, ratio / target, n_desirable, n_undesirable)
