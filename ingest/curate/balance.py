"""KTO's class weights from the class counts: a pure function, so it is the same everywhere it is used.

The weights are chosen so that the desirable side carries as much total weight as the undesirable one, or
a little more:

    λD·nD / (λU·nU)  ∈  [1, 4/3]

Sources: the KTO paper (Ethayarajh et al., 2024, §4.2 and its imbalance experiment) recommends the band
[1, 3/2]; TRL's KTOTrainer warns when the ratio leaves [1, 4/3]. thumbs keeps the narrower [1, 4/3], inside
both. Counts inside the band keep λD = λU = 1; otherwise the rarer side's weight is raised just enough to
reach the band's nearest edge (1 when desirable is rarer, 4/3 when undesirable is), the other staying 1.
So the weights are continuous in the counts: 133:100 keeps 1 and 1 (ratio 1.33), 134:100 gets λU = 1.005
(ratio 4/3), never a jump.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

BAND = (1.0, 4.0 / 3.0)
PAPER_BAND = (1.0, 1.5)
WARN_IMBALANCE = 50.0  # beyond 1:50 the rarer class is a handful of examples repeated in every epoch


class InsufficientData(ValueError):
    """Too few examples of a class to train on."""


@dataclass(frozen=True)
class ClassWeights:
    """λD and λU by name (never an anonymous pair: swapped, it would invert the balance), with their counts."""
    desirable_weight: float
    undesirable_weight: float
    n_desirable: int
    n_undesirable: int

    @property
    def ratio(self) -> float:
        """λD·nD / (λU·nU)."""
        return self.desirable_weight * self.n_desirable / (self.undesirable_weight * self.n_undesirable)

    @property
    def in_band(self) -> bool:
        return BAND[0] - 1e-9 <= self.ratio <= BAND[1] + 1e-9


def class_weights(n_desirable: int, n_undesirable: int, target: float = BAND[1],
                  min_per_class: int = 1) -> ClassWeights:
    """λD and λU for these counts: the ratio λD·nD / (λU·nU) brought into [1, target] at its nearest edge.

    `target` is the band's upper edge, itself inside [1, 4/3]: 4/3 (the default) is the band thumbs uses;
    1 asks for exact balance whenever undesirable is the more common side.

    >>> class_weights(100, 1000)   # 1 thumbs-up per 10 thumbs-down: desirable up-weighted 10x (ratio 1)
    ClassWeights(desirable_weight=10.0, undesirable_weight=1.0, n_desirable=100, n_undesirable=1000)
    >>> class_weights(1000, 100)   # the other way round: undesirable up-weighted to the upper edge, 4/3
    ClassWeights(desirable_weight=1.0, undesirable_weight=7.5, n_desirable=1000, n_undesirable=100)
    >>> class_weights(120, 100).desirable_weight   # ratio 1.2 is inside the band already
    1.0
    """
    if not BAND[0] <= target <= BAND[1]:
        raise ValueError(f"target ratio (the band's upper edge) must lie in [1, 4/3], got {target}")
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
    if ratio < BAND[0]:  # desirable is rarer: raise λD to the lower edge
        return ClassWeights(BAND[0] / ratio, 1.0, n_desirable, n_undesirable)
    if ratio > target:  # undesirable is rarer: raise λU to the upper edge
        return ClassWeights(1.0, ratio / target, n_desirable, n_undesirable)
    return ClassWeights(1.0, 1.0, n_desirable, n_undesirable)


def band_warning(weights: ClassWeights) -> Optional[str]:
    """Why weights set by hand (one or both) are outside the band, or None when they are inside it."""
    if weights.in_band:
        return None
    side = "thumbs-up" if weights.ratio > BAND[1] else "thumbs-down"
    return (f"λD={weights.desirable_weight:.4g}, λU={weights.undesirable_weight:.4g} on {weights.n_desirable} "
            f"desirable / {weights.n_undesirable} undesirable examples give λD·nD/(λU·nU) = {weights.ratio:.3g}, "
            f"outside [1, 4/3] (TRL warns outside it; the KTO paper recommends "
            f"[{PAPER_BAND[0]:g}, {PAPER_BAND[1]:g}]): "
            f"the {side} side dominates the loss. Leave the weights unset to take the snapshot's, or set both")
