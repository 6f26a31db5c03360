"""The lab's arms: named variants of the default night, each changing one thing, compared on the same seeds.

A variant changes the day's feedback (`events`: poisoning, imbalance, label noise), the curation config
(`curate`: the vote caps), the training config (`train`: λ, z0, micro-batch composition) or the objective
(`sft`: the SFT baselines). Every arm
includes `default`, run once per seed and shared by all arms.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variant:
    name: str
    noise: float = 0.10
    """Share of clicks flipped (the demo's world: 10% misclicks)."""
    adversaries: int = 0
    """Accounts voting adversarially (upvoting rude or long answers, downvoting the liked ones)."""
    adversary_rate: float = 10.0
    """Their votes per day as a multiple of an honest user's."""
    ratio: float | None = None
    """Thumbs-down per thumbs-up kept each day (the majority side discarded at random); None keeps all."""
    curate: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    sft: str | None = None
    """'only': SFT on the thumbs-up instead of KTO; 'then-kto': SFT, its adapter merged into the base, then
    KTO from that merged model (so the reference, adapter off, is the SFT model, as in the paper)."""


N_USERS = 300  # honest users per day: 1% of them is 3 accounts
DEFENCE = {"max_user_share": 0.01}  # a user keeps at most ~1% of each class's votes (at least 1; an honest one casts ~0.3%)
UNIT = {"desirable_weight": 1.0, "undesirable_weight": 1.0}

VARIANTS = {v.name: v for v in [
    Variant("default"),
    # (6) poisoning
    Variant("poison-1%", adversaries=3),
    Variant("poison-1%+caps", adversaries=3, curate=DEFENCE),
    Variant("poison-1user", adversaries=1),
    Variant("poison-1user+caps", adversaries=1, curate=DEFENCE),
    Variant("default+caps", curate=DEFENCE),
    # (1) imbalance
    Variant("1:1 λ-counts", ratio=1.0), Variant("1:1 λ=1", ratio=1.0, train=UNIT),
    Variant("1:4 λ-counts", ratio=4.0), Variant("1:4 λ=1", ratio=4.0, train=UNIT),
    Variant("1:10 λ-counts", ratio=10.0), Variant("1:10 λ=1", ratio=10.0, train=UNIT),
    # (2) reference point
    Variant("z0=0", train={"z0": "zero"}),
    # (3) micro-batch composition
    Variant("random micro-batches", train={"length_group_size": 1}),
    Variant("grouped+sampled z0", train={"kl_pairs": "sample"}),
    # (4) baselines
    Variant("SFT only", sft="only"), Variant("SFT then KTO", sft="then-kto"),
    # (5) label noise
    Variant("noise 20%", noise=0.20), Variant("noise 30%", noise=0.30),
]}

ARMS = {  # in the order of value the session set
    "poisoning": ["default", "default+caps", "poison-1%", "poison-1%+caps", "poison-1user", "poison-1user+caps"],
    "imbalance": ["default", "1:1 λ-counts", "1:1 λ=1", "1:4 λ-counts", "1:4 λ=1", "1:10 λ-counts", "1:10 λ=1"],
    "z0": ["default", "z0=0"],
    "microbatch": ["default", "random micro-batches", "grouped+sampled z0"],
    "baselines": ["default", "SFT only", "SFT then KTO"],
    "noise": ["default", "noise 20%", "noise 30%"],
}

# Head-to-head comparisons inside an arm, paired by seed (first minus second), beside each arm's Δ vs default.
PAIRS = {
    "poisoning": [("poison-1%+caps", "poison-1%"), ("poison-1user+caps", "poison-1user"),
                  ("poison-1%+caps", "default+caps")],
    "imbalance": [("1:4 λ-counts", "1:4 λ=1"), ("1:10 λ-counts", "1:10 λ=1"), ("1:10 λ-counts", "1:1 λ-counts")],
    "microbatch": [("grouped+sampled z0", "random micro-batches")],
    "baselines": [("SFT then KTO", "SFT only")],
}


def variants_for(arms: list[str]) -> list[Variant]:
    """The distinct variants the arms need, `default` first."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    names = list(dict.fromkeys(n for a in arms for n in ARMS[a]))
    return [VARIANTS[n] for n in names]
