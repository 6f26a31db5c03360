"""The promotion decision: a pure function of two evaluations and a policy; the registry does the write.

    decision = decide_promotion(eval_json["candidate"], eval_json["incumbent"], PromotionPolicy.load(path))

Each check yields a `Check` (name, passed, value, limit, a sentence); the candidate is promoted when
every check passes. The checks and their sentences are the decision's reasons, saved with it.
`evaluation/promotion.yaml` holds the commented defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Dict, List, Optional, Union

from pydantic import Field

from common.configfile import config, load_config

DEFAULT_POLICY = Path(__file__).with_name("promotion.yaml")
Share = Annotated[float, Field(ge=0, le=1)]  # an accuracy, or a fall in one


@config
class PromotionPolicy:
    min_auc: float = Field(0.55, ge=0, le=1)
    """Floor on the candidate's held-out preference AUC."""
    max_auc_drop: float = Field(0.02, ge=0, le=1)
    """How far the candidate's AUC may trail the incumbent's."""
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


def decide_promotion(candidate: dict, incumbent: Optional[dict], policy: PromotionPolicy) -> Decision:
    """Promote `candidate` over `incumbent` (None: no production yet)? Both are `eval.json` entries."""
    checks = [_floor("auc floor", candidate["preference"]["auc"], policy.min_auc, "preference AUC")]
    if incumbent is not None:
        ours, theirs = candidate["preference"]["auc"], incumbent["preference"]["auc"]
        drop = theirs - ours
        checks.append(Check("auc vs incumbent", drop <= policy.max_auc_drop, round(drop, 6), policy.max_auc_drop,
                            f"preference AUC {ours:.3f} vs production's {theirs:.3f}: "
                            + (f"trails by {drop:.3f}, more than the allowed {policy.max_auc_drop:.3f}"
                               if drop > policy.max_auc_drop else "within the allowed drop")))
    kl = candidate["drift"]["kl_per_token"]
    checks.append(Check("kl cap", kl <= policy.max_kl_per_token, kl, policy.max_kl_per_token,
                        f"KL from the base {kl:.4f} nats/token {'≤' if kl <= policy.max_kl_per_token else '>'} cap "
                        f"{policy.max_kl_per_token}"))
    checks += _length_checks(candidate["drift"].get("length"), policy)
    checks += _suite_checks(candidate.get("suites", {}), (incumbent or {}).get("suites", {}), incumbent is not None,
                            policy)
    return Decision(all(c.passed for c in checks), checks, (incumbent or {}).get("version"))


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
