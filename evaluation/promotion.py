"""The promotion decision: a pure function of two evaluations and a policy; the registry does the write.

    decision = decide_promotion(eval_json["candidate"], eval_json["incumbent"], PromotionPolicy.load(path))

Each check yields a `Check` (name, passed, value, limit, a sentence); the candidate is promoted when
every check passes. The checks and their sentences are the decision's reasons, saved with it.
`evaluation/promotion.yaml` holds the commented defaults.

The preference checks decide on evidence, not on point estimates: the AUC floor passes when the candidate's
AUC is above it with the policy's confidence (a one-sided bound from a stratified bootstrap of the eval rows'
implied rewards), and the comparison with production when the paired bootstrap of the difference (the same
eval rows for both in every resample) bounds the candidate's shortfall within `max_auc_drop`. When the point
estimate passes and the bound does not, the reason says so and how many eval examples would do.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Dict, List, Literal, Optional, Tuple, Union

import numpy as np
from pydantic import Field

from common.configfile import config, load_config
from evaluation.canary import CanaryPolicy
from evaluation.metrics import bootstrap_values, paired_bootstrap_values, roc_auc

DEFAULT_POLICY = Path(__file__).with_name("promotion.yaml")
Share = Annotated[float, Field(ge=0, le=1)]  # an accuracy, or a fall in one


@config
class PromotionPolicy:
    min_auc: float = Field(0.55, ge=0, le=1)
    """Floor on the candidate's held-out preference AUC, to be cleared with `confidence`."""
    max_auc_drop: float = Field(0.02, ge=0, le=1)
    """How far the candidate's AUC may trail the incumbent's, shown with `confidence` on the same eval rows."""
    confidence: float = Field(0.95, ge=0.5, lt=1)
    """One-sided confidence of the AUC checks: the bootstrap bound they compare is the (1 − confidence) quantile."""
    max_kl_per_token: float = Field(0.5, gt=0)
    """Cap on the mean exact KL from the reference per completion token (nats)."""
    max_length_ratio: float = Field(1.5, ge=1)
    """Cap on mean generated length over the reference's, greedy and sampled."""
    min_length_ratio: float = Field(0.5, gt=0, le=1)
    """Floor on the same ratio."""
    suite_tolerance: float = Field(0.0, ge=0, le=1)
    """How far a task suite's accuracy may fall below the incumbent's."""
    suite_tolerances: Dict[str, Share] = field(default_factory=dict)
    """Per-suite overrides of `suite_tolerance`."""
    min_suite_accuracy: Dict[str, Share] = field(default_factory=dict)
    """Per-suite floors, checked with or without an incumbent."""
    rollout: Literal["direct", "canary"] = "direct"
    """`direct`: a candidate that passes becomes production. `canary`: it first serves `canary.share` of the users,
    and their thumbs decide, night by night (deploy/canary.py); with no production yet it goes straight there."""
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    """The live test's settings (with `rollout: canary`)."""

    @classmethod
    def load(cls, path: Optional[Union[str, Path]] = None, **overrides) -> "PromotionPolicy":
        """The policy from a YAML file (default: evaluation/promotion.yaml; or a thumbs.yaml's `promotion:`),
        then the non-None `overrides`; unknown keys are an error."""
        return load_config(cls, path or DEFAULT_POLICY, "promotion policy", section="promotion", **overrides)


@dataclass
class Check:
    name: str
    passed: bool
    value: Optional[float]
    limit: Optional[float]
    reason: str
    bound: Optional[float] = None  # the one-sided confidence bound the check compared with its limit
    needed: Optional[int] = None  # eval examples that would likely settle it, when too few did


@dataclass
class Decision:
    promote: bool
    checks: List[Check]
    incumbent: Optional[str] = None  # the production version compared against, if any

    @property
    def reasons(self) -> List[str]:
        """The failed checks' sentences when rejected; all sentences when promoted."""
        failed = [c.reason for c in self.checks if not c.passed]
        return failed if failed else [c.reason for c in self.checks]

    def to_dict(self) -> dict:
        return {"promote": self.promote, "incumbent": self.incumbent, "reasons": self.reasons,
                "checks": [dataclasses.asdict(c) for c in self.checks]}


RESAMPLES = 2000  # bootstrap resamples behind each bound: its quantile moves by ~0.002 AUC between seeds


def decide_promotion(candidate: dict, incumbent: Optional[dict], policy: PromotionPolicy) -> Decision:
    """Promote `candidate` over `incumbent` (None: no production yet)? Both are `eval.json` entries of one
    evaluation (their `rewards` score the same eval rows, in the same order)."""
    ours = _rewards(candidate, "candidate")
    checks = [_auc_floor(ours, policy)]
    if incumbent is not None:
        checks.append(_auc_vs_incumbent(ours, _rewards(incumbent, "production"), policy))
    kl = candidate["drift"]["kl_per_token"]
    checks.append(Check("kl cap", kl <= policy.max_kl_per_token, kl, policy.max_kl_per_token,
                        f"KL from the base {kl:.4f} nats/token {'≤' if kl <= policy.max_kl_per_token else '>'} cap "
                        f"{policy.max_kl_per_token}"))
    checks += _length_checks(candidate["drift"].get("length"), policy)
    checks += _suite_checks(candidate.get("suites", {}), (incumbent or {}).get("suites", {}), incumbent is not None,
                            policy)
    return Decision(all(c.passed for c in checks), checks, (incumbent or {}).get("version"))


def _rewards(entry: dict, who: str) -> Tuple[np.ndarray, np.ndarray]:
    """(implied rewards, desirable) of an eval.json entry's eval rows."""
    rewards = entry.get("rewards") or {}
    if "desirable" not in rewards or "undesirable" not in rewards:
        raise ValueError(f"the {who}'s evaluation has no per-example rewards: re-run `thumbs evaluate`")
    up, down = rewards["desirable"], rewards["undesirable"]
    if not up or not down:
        raise ValueError(f"the {who}'s evaluation has {len(up)} thumbs-up and {len(down)} thumbs-down eval "
                         "examples: the preference checks need both")
    return (np.asarray(up + down, dtype=np.float64),
            np.r_[np.ones(len(up), dtype=bool), np.zeros(len(down), dtype=bool)])


def _lower_bound(values: np.ndarray, confidence: float) -> float:
    return float(np.quantile(values, 1 - confidence))


def _needed(n: int, estimate: float, bound: float, limit: float) -> int:
    """Eval examples for the bound to reach the limit, the spread shrinking as 1/√n: n·((est − bound)/(est − limit))²,
    rounded up to two significant figures."""
    need = n * ((estimate - bound) / (estimate - limit)) ** 2
    scale = 10 ** max(0, int(math.floor(math.log10(need))) - 1)
    return int(math.ceil(need / scale) * scale)


def _auc_floor(ours, policy: PromotionPolicy) -> Check:
    rewards, desirable = ours
    auc, n, level = roc_auc(rewards, desirable), len(rewards), f"{policy.confidence:.0%}"
    bound = _lower_bound(bootstrap_values(roc_auc, rewards, desirable, resamples=RESAMPLES), policy.confidence)
    ok = bound >= policy.min_auc
    if auc < policy.min_auc:
        reason = f"preference AUC {auc:.3f} < floor {policy.min_auc}"
    elif not ok:
        needed = _needed(n, auc, bound, policy.min_auc)
        reason = (f"preference AUC {auc:.3f}, but {n:,} eval examples cannot show it above the floor {policy.min_auc} "
                  f"with {level} confidence (lower bound {bound:.3f}); need ~{needed:,}")
        return Check("auc floor", False, auc, policy.min_auc, reason, round(bound, 6), needed)
    else:
        reason = f"preference AUC {auc:.3f}, {level} lower bound {bound:.3f} ≥ floor {policy.min_auc}"
    return Check("auc floor", ok, auc, policy.min_auc, reason, round(bound, 6))


def _auc_vs_incumbent(ours, theirs, policy: PromotionPolicy) -> Check:
    rewards, desirable = ours
    if theirs[0].shape != rewards.shape or (theirs[1] != desirable).any():
        raise ValueError(f"the candidate and production were scored on different eval rows ({len(rewards):,} vs "
                         f"{len(theirs[0]):,}): evaluate both in one `thumbs evaluate --registry`")
    ours_auc, theirs_auc = roc_auc(rewards, desirable), roc_auc(theirs[0], desirable)
    difference, margin, n = ours_auc - theirs_auc, policy.max_auc_drop, len(rewards)
    bound = _lower_bound(paired_bootstrap_values(roc_auc, rewards, theirs[0], desirable, resamples=RESAMPLES),
                         policy.confidence)
    ok, needed = bound >= -margin, None
    head = f"preference AUC {ours_auc:.3f} vs production's {theirs_auc:.3f}"
    if -difference > margin:
        reason = f"{head}: trails by {-difference:.3f}, more than the allowed {margin:.3f}"
    elif not ok:
        needed = _needed(n, difference, bound, -margin)
        reason = (f"{head}: {n:,} eval examples cannot show the candidate within {margin:.3f} of production with "
                  f"{policy.confidence:.0%} confidence (lower bound of the difference {bound:+.3f}); need ~{needed:,}")
    else:
        reason = f"{head}: difference {difference:+.3f}, {policy.confidence:.0%} lower bound {bound:+.3f} ≥ −{margin:.3f}"
    return Check("auc vs incumbent", ok, round(difference, 6), -margin, reason, round(bound, 6), needed)


def _floor(name: str, value: float, limit: float, what: str) -> Check:
    ok = value >= limit
    return Check(name, ok, value, limit, f"{what} {value:.3f} {'≥' if ok else '<'} floor {limit}")


def _length_checks(length: Optional[dict], policy: PromotionPolicy) -> List[Check]:
    if not length:
        return []  # generation was skipped (generation_prompts = 0)
    checks = []
    for kind in ("greedy", "sampled"):
        ratio = length.get(f"{kind}_ratio")
        if ratio is None:
            continue
        ok = policy.min_length_ratio <= ratio <= policy.max_length_ratio
        checks.append(Check(f"{kind} length", ok, ratio, policy.max_length_ratio if ratio > 1 else policy.min_length_ratio,
                            f"{kind} answers {ratio:.2f}x the base's length "
                            + ("within" if ok else "outside") + f" [{policy.min_length_ratio}, {policy.max_length_ratio}]"))
    return checks


def _suite_checks(ours: dict, theirs: dict, compare: bool, policy: PromotionPolicy) -> List[Check]:
    checks = []
    for suite, score in sorted(ours.items()):
        accuracy = score["accuracy"]
        floor = policy.min_suite_accuracy.get(suite)
        if floor is not None:
            checks.append(_floor(f"suite {suite} floor", accuracy, floor, f"suite {suite!r} accuracy"))
        if compare and suite in theirs:
            tolerance = policy.suite_tolerances.get(suite, policy.suite_tolerance)
            drop = theirs[suite]["accuracy"] - accuracy
            checks.append(Check(f"suite {suite} vs incumbent", drop <= tolerance + 1e-12, round(drop, 6), tolerance,
                                f"suite {suite!r} accuracy {accuracy:.2f} vs production's {theirs[suite]['accuracy']:.2f}"
                                + (f": regressed by {drop:.2f}, more than the tolerance {tolerance}"
                                   if drop > tolerance + 1e-12 else "")))
    return checks
