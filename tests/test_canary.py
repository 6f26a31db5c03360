"""The canary's live decision (evaluation/canary.py) and its arms (deploy/rollout.py): hand-worked numbers, the
outcomes, and a simulation over many seeds of nightly looks: the false-promotion rate stays under the level."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from deploy.rollout import CANARY, PRODUCTION, assign, position
from evaluation.canary import Arm, CanaryPolicy, decide_canary, interval, simulate


def test_the_interval_by_hand():
    """400 of 1,000 up in production, 380 of 1,000 on the canary; τ = 0.05, 95%."""
    production, canary, policy = Arm(400, 600), Arm(380, 620), CanaryPolicy()
    p_p, p_c = 401 / 1002, 381 / 1002  # each arm's rate for its variance: (up + 1) / (votes + 2)
    v = p_p * (1 - p_p) / 1000 + p_c * (1 - p_c) / 1000  # 0.00047522...
    tau2 = 0.05 ** 2
    r = math.sqrt(v * (v + tau2) / tau2 * (math.log((v + tau2) / v) + 2 * math.log(1 / 0.05)))
    diff, low, high = interval(production, canary, policy)
    assert diff == pytest.approx(-0.02, abs=1e-15)
    assert (low, high) == (pytest.approx(-0.02 - r, abs=1e-12), pytest.approx(-0.02 + r, abs=1e-12))
    assert r == pytest.approx(0.0665, abs=5e-4)  # about ±6.7 points: far too wide to decide on
    decision = decide_canary(production, canary, days=3, policy=policy)
    assert decision.outcome == "continue"
    assert "38.0% (canary, 1,000 votes) vs 40.0% (production, 1,000)" in decision.sentence
    assert f"[{100 * (-0.02 - r):+.1f}, {100 * (-0.02 + r):+.1f}]" in decision.sentence


@pytest.mark.parametrize("production, canary, days, outcome", [
    (Arm(4000, 6000), Arm(3000, 7000), 5, "rollback"),  # 10 points worse
    (Arm(40000, 60000), Arm(4000, 6000), 5, "promote"),  # equal, half-width 1.7 points < the 2-point margin
    (Arm(40000, 60000), Arm(4100, 5900), 5, "promote"),  # better
    (Arm(400, 600), Arm(380, 620), 3, "continue"),
    (Arm(400, 600), Arm(380, 620), 14, "reject"),  # max_days without a decision
    (Arm(400, 600), Arm(50, 100), 3, "continue"),  # 150 canary votes < min_votes
    (Arm(400, 600), Arm(50, 100), 14, "reject"),
])
def test_outcomes(production, canary, days, outcome):
    decision = decide_canary(production, canary, days, CanaryPolicy())
    assert decision.outcome == outcome, decision.sentence
    if decision.low is not None:
        assert decision.low < decision.difference < decision.high


def test_a_confidently_worse_canary_is_rolled_back_even_within_the_margin():
    """Promotion asks for 'not worse by more than the margin'; a canary users like less for sure is not shipped."""
    decision = decide_canary(Arm(400_000, 600_000), Arm(39_000, 61_000), 5, CanaryPolicy(margin=0.02))
    assert -0.02 < decision.low < decision.high < 0 and decision.outcome == "rollback"


@pytest.mark.parametrize("margin, canary_rate", [(0.0, 0.40), (0.02, 0.38), (0.05, 0.35)],
                         ids=["equal-arms-no-margin", "2-points-worse-at-a-2-point-margin", "5-at-5"])
def test_nightly_looks_keep_the_false_promotion_rate_under_the_level(margin, canary_rate):
    """The least favourable truth for each margin (the canary worse by exactly the margin): 14 nightly looks over
    4,000 simulated canaries promote at most (1 - confidence) of them. A fixed 95% interval re-read each night
    would not: its misses add up over the looks (checked below on the same draws)."""
    policy = CanaryPolicy(margin=margin, min_votes=100)
    result = simulate(0.40, canary_rate, votes_per_day=2000, share=0.2, policy=policy, runs=4000, seed=1,
                      outcome="promote")
    assert result.outcomes["promote"] <= 1 - policy.confidence


def test_a_fixed_interval_read_every_night_would_promote_on_noise():
    """Why the sequence: the same equal arms, a plain 95% normal interval looked at nightly for 14 nights."""
    rng = np.random.default_rng(1)
    new = rng.poisson(400, size=(4000, 14))  # each day's canary votes; production has 4x as many
    n, up_c, up_p = new.cumsum(1), rng.binomial(new, 0.4).cumsum(1), rng.binomial(4 * new, 0.4).cumsum(1)
    diff = up_c / n - up_p / (4 * n)
    half = 1.96 * np.sqrt(0.24 / n + 0.24 / (4 * n))
    naive = np.mean(((diff - half) > 0).any(1))  # promoted on some night though the arms are equal
    always_valid = simulate(0.40, 0.40, 2000, 0.2, CanaryPolicy(margin=0.0, min_votes=100), runs=4000, seed=1,
                            outcome="promote").outcomes["promote"]
    assert naive > 0.05 > always_valid


def test_a_worse_canary_is_rolled_back_within_days():
    """5 points worse, 1,000 votes a day, a fifth of the users on the canary: rolled back nearly always, in a week
    or so; never promoted."""
    result = simulate(0.40, 0.35, votes_per_day=1000, share=0.2, policy=CanaryPolicy(), runs=4000, seed=2)
    assert result.outcomes["rollback"] >= 0.9 and result.outcomes["promote"] == 0
    assert result.median_days <= 10 and result.median_canary_votes < 2000


def test_assignment_is_per_user_salted_and_shares_as_asked():
    users = [f"user-{i}" for i in range(100_000)]
    arms = [assign(u, "canary-7", 0.1) for u in users]
    assert arms == [assign(u, "canary-7", 0.1) for u in users]  # deterministic: one arm for the whole test
    share = arms.count(CANARY) / len(users)
    assert abs(share - 0.1) < 4 * math.sqrt(0.1 * 0.9 / len(users))
    other = [assign(u, "canary-8", 0.1) for u in users]
    both = sum(a == b == CANARY for a, b in zip(arms, other)) / len(users)
    assert abs(both - 0.01) < 0.003  # a new salt draws new arms, independent of the old ones
    assert {assign(u, "s", 0.0) for u in users[:1000]} == {PRODUCTION}
    assert {assign(u, "s", 1.0) for u in users[:1000]} == {CANARY}
    assert assign(None, "s", 1.0) == assign("", "s", 1.0) == PRODUCTION  # no user id: production
    digest = hashlib.sha256("canary-7\x1fuser-0".encode()).digest()
    assert position("user-0", "canary-7") == int.from_bytes(digest[:8], "big") / 2 ** 64
    with pytest.raises(ValueError, match="within"):
        assign("u", "s", 1.5)


def test_the_window_counts_each_users_latest_vote_on_the_arm_they_are_assigned_to():
    from datetime import datetime, timedelta, timezone

    import pyarrow as pa

    from deploy.canary import window_votes
    from ingest.schema import FEEDBACK_SCHEMA

    salt, share, start = "canary-1", 0.5, datetime(2026, 12, 1, tzinfo=timezone.utc)
    users = [f"u{i}" for i in range(40)]
    on = {arm: [u for u in users if assign(u, salt, share) == arm] for arm in (CANARY, PRODUCTION)}
    model = {CANARY: "thumbs-v4", PRODUCTION: "thumbs-v3"}
    rows, expected = [], {CANARY: [0, 0], PRODUCTION: [0, 0]}

    def vote(user, arm_model, up, hours, prompt="How do I boil an egg?", answer="Simmer it for 9 minutes."):
        rows.append({"event_id": f"e{len(rows)}", "timestamp": start + timedelta(hours=hours), "user_id": user,
                     "model_version": arm_model, "prompt": [{"role": "user", "content": prompt}],
                     "completion": answer, "desirable": up})

    for arm in (CANARY, PRODUCTION):
        for k, user in enumerate(on[arm][:8]):
            up = k % 3 != 0
            vote(user, model[arm], up, hours=k)
            expected[arm][0 if up else 1] += 1
    changed = on[CANARY][0]  # voted down at hour 0 (k = 0), then up on the same answer: one up vote
    vote(changed, model[CANARY], True, hours=30)
    expected[CANARY] = [expected[CANARY][0] + 1, expected[CANARY][1] - 1]
    vote(on[CANARY][1], model[CANARY], False, hours=-5)  # before the canary started: not in the window
    vote(on[PRODUCTION][0], model[CANARY], False, hours=2)  # a production user answered by the canary
    vote(None, model[PRODUCTION], True, hours=3)  # no user id: production served it, no randomised vote
    vote(on[CANARY][2], "thumbs-v2", True, hours=4)  # another model
    vote(on[CANARY][3], model[CANARY], True, hours=5, answer="Another answer.")  # another answer: counts
    expected[CANARY][0] += 1

    table = pa.Table.from_pylist(rows, schema=pa.schema([FEEDBACK_SCHEMA.field(n) for n in rows[0]]))
    window = window_votes(table, model[PRODUCTION], model[CANARY], salt, share, since=start)
    assert (window.canary.up, window.canary.down) == tuple(expected[CANARY])
    assert (window.production.up, window.production.down) == tuple(expected[PRODUCTION])
    assert window.left_out == {"no user id": 1, "another model": 1, "user not assigned to the arm that answered": 1,
                               "earlier vote on the same answer": 1}
