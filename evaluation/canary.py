"""The live decision on a canary: do users like its answers as much as production's? Pure functions, no I/O.

    decision = decide_canary(Arm(up=412, down=588), Arm(up=37, down=71), days=4, policy=CanaryPolicy())
    decision.outcome   # "promote" | "rollback" | "continue" | "reject"
    decision.sentence  # "users like the canary less: thumbs-up 34.3% vs 41.2% ..."

Each arm is the thumbs of the users assigned to it (deploy/rollout.py), each user's latest vote per answer:
thumbs-up / (thumbs-up + thumbs-down). The nightly flow looks every night, so a fixed-horizon test re-run
nightly would promote on noise far more often than its level says. The difference of the two rates gets an
always-valid confidence sequence instead (a normal mixture over the difference, Johari, Pekelis and Walsh,
"Always valid inference", 2017/2022): at every look, however many, the true difference lies outside it with
probability at most 1 - confidence. So:

  rollback  the whole interval is below 0: users like the canary less;
  promote   its lower end is above -margin: the canary is not worse by more than the margin;
  continue  neither yet, or fewer than `min_votes` votes in an arm;
  reject    `max_days` passed without a decision: the canary goes, production stays.

A canary whose true rate trails production's by `margin` or more is promoted with probability at most
(1 - confidence) / 2 over all the nightly looks (tests/test_canary.py simulates it over many seeds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Optional

import numpy as np
from pydantic import Field

from common.configfile import config


@config
class CanaryPolicy:
    FLAG_PREFIX: ClassVar[str] = "canary-"  # its command-line flags: --canary-share, --canary-confidence, ...

    share: float = Field(0.1, gt=0, lt=1)
    """Share of the users (by a salted hash of their pseudonymous id, deploy/rollout.py) the canary serves."""
    margin: float = Field(0.02, ge=0, lt=1)
    """How much lower the canary's thumbs-up rate may be (2 points) and still replace production."""
    confidence: float = Field(0.95, gt=0, lt=1)
    """Of the always-valid interval on the difference, over every nightly look."""
    mixture_scale: float = Field(0.05, gt=0)
    """τ of the normal mixture: the size of difference the test is tuned to find fastest (5 points)."""
    min_votes: int = Field(200, ge=1)
    """Votes an arm needs before any decision: the interval leans on a normal approximation."""
    max_days: int = Field(14, ge=1)
    """Days without a decision after which the canary is rejected (rolled back, production unchanged)."""


@dataclass(frozen=True)
class Arm:
    up: int
    down: int

    @property
    def votes(self) -> int:
        return self.up + self.down

    @property
    def rate(self) -> Optional[float]:
        return self.up / self.votes if self.votes else None


@dataclass(frozen=True)
class CanaryDecision:
    outcome: str  # promote | rollback | continue | reject
    difference: Optional[float]  # canary's thumbs-up rate minus production's
    low: Optional[float]  # the always-valid interval on the difference
    high: Optional[float]
    production: Arm
    canary: Arm
    days: float
    sentence: str

    def to_dict(self) -> dict:
        return asdict(self)


def radius(variance, confidence: float, mixture_scale: float):
    """Half-width of the normal-mixture confidence sequence for a difference whose estimate has `variance`:
    sqrt(V (V + τ²) / τ² · (ln((V + τ²) / V) + 2 ln(1 / α))), α = 1 - confidence. Works on arrays too."""
    alpha, tau2 = 1.0 - confidence, mixture_scale ** 2
    v = np.asarray(variance, dtype=float)
    return np.sqrt(v * (v + tau2) / tau2 * (np.log((v + tau2) / v) + 2.0 * np.log(1.0 / alpha)))


def variance(up, votes):
    """Of one arm's rate, p(1 - p) / n, with p = (up + 1) / (votes + 2): never 0, even at 0% or 100%."""
    p = (np.asarray(up, dtype=float) + 1.0) / (np.asarray(votes, dtype=float) + 2.0)
    return p * (1.0 - p) / np.asarray(votes, dtype=float)


def verdicts(up_p, n_p, up_c, n_c, policy: CanaryPolicy) -> tuple:
    """The decision rule on each arm's up votes and votes, scalars or arrays (a night per cell):
    (difference, low, high, rollback, promote). Rollback: the interval is below 0; promote: not rollback and its
    low end above -margin; neither before both arms hold `min_votes` votes."""
    n_p, n_c = np.maximum(n_p, 1), np.maximum(n_c, 1)  # an empty arm is not ready; its rate is never read
    diff = np.asarray(up_c) / n_c - np.asarray(up_p) / n_p
    r = radius(variance(up_p, n_p) + variance(up_c, n_c), policy.confidence, policy.mixture_scale)
    ready = np.minimum(n_c, n_p) >= policy.min_votes
    rollback = ready & (diff + r < 0)
    return diff, diff - r, diff + r, rollback, ready & ~rollback & (diff - r > -policy.margin)


def interval(production: Arm, canary: Arm, policy: CanaryPolicy) -> tuple[float, float, float]:
    """(difference, low, high) of canary minus production thumbs-up rates; both arms need votes."""
    diff, low, high, _, _ = verdicts(production.up, production.votes, canary.up, canary.votes, policy)
    return float(diff), float(low), float(high)


def decide_canary(production: Arm, canary: Arm, days: float, policy: CanaryPolicy) -> CanaryDecision:
    """The night's decision on a canary that has run `days` days, from each arm's votes so far."""
    def done(outcome, sentence, diff=None, low=None, high=None):
        return CanaryDecision(outcome, diff, low, high, production, canary, days, sentence)

    fewest = min(production.votes, canary.votes)
    if fewest < policy.min_votes:
        waiting = (f"{canary.votes:,} canary and {production.votes:,} production votes; each arm needs "
                   f"{policy.min_votes:,}")
        if days >= policy.max_days:
            return done("reject", f"no decision after {days:g} days: {waiting}; the canary is withdrawn")
        return done("continue", f"collecting: {waiting}")
    diff, low, high, rollback, promote = (float(v) for v in verdicts(
        production.up, production.votes, canary.up, canary.votes, policy))
    rates = (f"thumbs-up {canary.rate:.1%} (canary, {canary.votes:,} votes) vs {production.rate:.1%} (production, "
             f"{production.votes:,}): difference {100 * diff:+.1f} points, {policy.confidence:.0%} always-valid "
             f"interval [{100 * low:+.1f}, {100 * high:+.1f}]")
    if rollback:
        return done("rollback", f"users like the canary less: {rates}", diff, low, high)
    if promote:
        return done("promote", f"the canary is not worse by more than {100 * policy.margin:g} points: {rates}",
                    diff, low, high)
    if days >= policy.max_days:
        return done("reject", f"no decision after {days:g} days: {rates}; the canary is withdrawn", diff, low, high)
    return done("continue", f"not yet decided: {rates}", diff, low, high)


@dataclass(frozen=True)
class Simulated:
    outcomes: dict  # outcome (promote, rollback, reject) -> share of the runs
    median_days: Optional[float]  # to the decision, of the runs that reached `outcome`
    median_canary_votes: Optional[float]  # votes on the canary by then: what users saw of the worse arm


def simulate(production_rate: float, canary_rate: float, votes_per_day: float, share: float,
             policy: CanaryPolicy, runs: int = 2000, seed: int = 0, outcome: str = "rollback") -> Simulated:
    """`runs` canaries looked at every night: each day the arms get Poisson(votes_per_day x their share of the
    users) votes, each a thumbs-up with its arm's rate, and `decide_canary`'s rule decides, until max_days.
    For sizing a rollout (how many days would a 3-point drop take at my traffic?) and for the tests."""
    rng = np.random.default_rng(seed)
    days, rows = policy.max_days, np.arange(runs)
    new_c = rng.poisson(votes_per_day * share, size=(runs, days))
    new_p = rng.poisson(votes_per_day * (1 - share), size=(runs, days))
    n_c, n_p = new_c.cumsum(1), new_p.cumsum(1)
    up_c, up_p = rng.binomial(new_c, canary_rate).cumsum(1), rng.binomial(new_p, production_rate).cumsum(1)
    _, _, _, rollback, promote = verdicts(up_p, n_p, up_c, n_c, policy)
    decided = rollback | promote
    first = np.where(decided.any(1), decided.argmax(1), days - 1)  # the night of the decision (or the last)
    ends = np.where(decided.any(1), np.where(rollback[rows, first], "rollback", "promote"), "reject")
    shares = {name: float(np.mean(ends == name)) for name in ("promote", "rollback", "reject")}
    hit = ends == outcome
    if not hit.any():
        return Simulated(shares, None, None)
    return Simulated(shares, float(np.median(first[hit] + 1)), float(np.median(n_c[rows[hit], first[hit]])))
