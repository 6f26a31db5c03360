"""The pure parts of evaluation: preference metrics, task suites and the promotion decision, by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.metrics import (accuracy_at_zero, bootstrap_interval, paired_bootstrap_difference,
                                preference_metrics, roc_auc)
from evaluation.promotion import DEFAULT_POLICY, PromotionPolicy, decide_promotion
from evaluation.suites import EXAMPLE_SUITE, SuiteError, load_suite, score_suite


def test_auc_counts_pairs_and_halves_ties():
    # desirable {0.9, 0.8} vs undesirable {0.1, 0.8}: pairs won 1 + 1 + 1 + ½ (0.8 vs 0.8) = 3.5 of 4.
    assert roc_auc([0.9, 0.8, 0.1, 0.8], [True, True, False, False]) == 0.875
    assert roc_auc([0, 0, 0, 0], [True, False, True, False]) == 0.5  # an untrained adapter: every reward 0
    assert roc_auc([1, 2], [False, True]) == 1.0 and roc_auc([1, 2], [True, False]) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 2], [True, True])


def test_accuracy_at_zero_treats_zero_as_undesirable():
    # rewards 0.3 (up, right), 0 (up, wrong), -0.1 (down, right), 0.2 (down, wrong) -> 2 of 4
    assert accuracy_at_zero([0.3, 0.0, -0.1, 0.2], [True, True, False, False]) == 0.5


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    desirable = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    scores = rng.normal(size=100) + desirable
    low, high = bootstrap_interval(roc_auc, scores, desirable, resamples=300, seed=3)
    assert low < roc_auc(scores, desirable) < high and high - low < 0.4
    assert (low, high) == bootstrap_interval(roc_auc, scores, desirable, resamples=300, seed=3)
    m = preference_metrics(scores, desirable, resamples=100)
    assert m["n_desirable"] == 40 and m["reward_desirable"] > m["reward_undesirable"]


def test_paired_bootstrap_of_a_difference():
    """Same rows for both in every resample: identical scorers differ by exactly 0; a scorer that agrees with
    another on most rows gets a difference interval far narrower than the two intervals side by side."""
    rng = np.random.default_rng(0)
    desirable = np.r_[np.ones(40, bool), np.zeros(40, bool)]
    production = rng.normal(size=80) + 0.8 * desirable  # AUC ~0.7 on 80 eval examples
    assert paired_bootstrap_difference(roc_auc, production, production, desirable, resamples=200) == (0.0, 0.0)
    assert paired_bootstrap_difference(roc_auc, production + 3.0, production, desirable, resamples=200) == (0.0, 0.0)
    candidate = production + 0.15 * desirable + 0.05 * rng.normal(size=80)  # a little better on the same rows
    low, high = paired_bootstrap_difference(roc_auc, candidate, production, desirable, resamples=500, seed=1)
    estimate = roc_auc(candidate, desirable) - roc_auc(production, desirable)
    assert low < estimate < high and low > 0  # better, and the pairing can tell
    apart = [bootstrap_interval(roc_auc, x, desirable, resamples=500, seed=1) for x in (candidate, production)]
    assert high - low < 0.25 * min(h - lo for lo, h in apart)  # the intervals side by side overlap widely
    assert apart[0][0] < apart[1][1]  # ... so, unpaired, they could not tell
    assert (low, high) == paired_bootstrap_difference(roc_auc, candidate, production, desirable, resamples=500, seed=1)
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap_difference(roc_auc, candidate[:-1], production, desirable)


def test_suites_match_exactly_or_by_pattern(tmp_path):
    suite = load_suite(EXAMPLE_SUITE)
    assert suite.name == "example" and len(suite.cases) == 5
    path = tmp_path / "mini.jsonl"
    path.write_text('{"prompt": "2+2?", "expected": "4"}\n{"id": "hi", "prompt": "Hi", "pattern": "(?i)hello"}\n')
    mini = load_suite(path)
    result = score_suite(mini, [" 4\nbecause", "HELLO there"])
    assert result == {"accuracy": 1.0, "passed": 2, "cases": 2, "failed": []}
    assert score_suite(mini, ["four", "hi"])["failed"] == ["mini-1", "hi"]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x"}', "exactly one of"),
    ('{"prompt": "x", "expected": "a", "pattern": "b"}', "exactly one of"),
    ('{"prompt": "", "expected": "a"}', "prompt"),
    ('{"prompt": "x", "pattern": "("}', "regular expression"),
    ("not json", "not JSON"),
])
def test_a_bad_suite_line_names_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "expected": "ok"}\n' + line + "\n")
    with pytest.raises(SuiteError, match=message) as err:
        load_suite(path)
    assert f"{path}:2" in str(err.value)


def rewards(auc, n=50):
    """n thumbs-up and n thumbs-down implied rewards whose AUC is exactly `auc` (to 1/n²): the thumbs-down at
    0..n-1, each thumbs-up just above c of them, the c's summing to auc·n²."""
    total = round(auc * n * n)
    above = np.full(n, total // n) + (np.arange(n) < total % n)
    return {"desirable": (above - 0.5).tolist(), "undesirable": np.arange(n, dtype=float).tolist()}


def result(auc=None, kl=0.01, greedy=1.0, sampled=1.0, suites=None, version=None, n=400, scores=None):
    scores = scores if scores is not None else rewards(auc, n)
    return {"rewards": scores, "version": version,
            "drift": {"kl_per_token": kl, "length": {"greedy_ratio": greedy, "sampled_ratio": sampled}},
            "suites": {name: {"accuracy": a} for name, a in (suites or {}).items()}}


def test_the_shipped_policy_loads_and_equals_the_dataclass_defaults():
    assert PromotionPolicy.load(DEFAULT_POLICY) == PromotionPolicy()


def test_the_reward_helper_hits_its_auc():
    r = rewards(0.54)
    assert roc_auc(r["desirable"] + r["undesirable"], [True] * 50 + [False] * 50) == 0.54


def test_without_an_incumbent_the_floor_decides_with_its_confidence():
    policy = PromotionPolicy()  # floor 0.55 at 95%
    promoted = decide_promotion(result(0.70), None, policy)  # 400 + 400 eval examples
    assert promoted.promote and promoted.incumbent is None
    floor = promoted.checks[0]
    assert floor.name == "auc floor" and floor.value == 0.7 and 0.55 <= floor.bound < 0.7 and floor.needed is None
    assert floor.reason == f"preference AUC 0.700, 95% lower bound {floor.bound:.3f} ≥ floor 0.55"
    rejected = decide_promotion(result(0.54), None, policy)
    assert not rejected.promote and rejected.reasons == ["preference AUC 0.540 < floor 0.55"]


def test_too_few_eval_examples_is_its_own_reason_and_names_how_many_would_do():
    """AUC 0.62 on 17 + 17 examples is above the floor, but its bootstrap reaches well below it; the count the
    sentence names, made of the same rows repeated, clears it."""
    policy = PromotionPolicy(min_auc=0.55)
    few = rewards(0.62, n=17)
    d = decide_promotion(result(scores=few), None, policy)
    check = d.checks[0]
    assert not d.promote and check.bound < 0.55 and check.needed > 34
    assert d.reasons == [f"preference AUC 0.619, but 34 eval examples cannot show it above the floor 0.55 with 95% "
                         f"confidence (lower bound {check.bound:.3f}); need ~{check.needed:,}"]
    copies = -(-check.needed // 34)
    more = {k: v * copies for k, v in few.items()}  # the same rows, as many as named: the same AUC, less spread
    assert decide_promotion(result(scores=more), None, policy).promote
    lenient = decide_promotion(result(scores=few), None, PromotionPolicy(min_auc=0.55, confidence=0.6))
    assert lenient.checks[0].bound > check.bound  # a lower confidence, a higher bound


def test_the_comparison_with_production_is_paired_on_the_same_rows():
    policy = PromotionPolicy(max_auc_drop=0.02)
    production = result(0.70, version="v0003")
    same = decide_promotion(result(0.70), production, policy)  # the same rewards: a difference of exactly 0
    assert same.promote and same.incumbent == "v0003"
    assert same.checks[1].reason == ("preference AUC 0.700 vs production's 0.700: difference +0.000, "
                                     "95% lower bound +0.000 ≥ −0.020")
    d = decide_promotion(result(0.66), production, policy)
    assert not d.promote and d.reasons == [
        "preference AUC 0.660 vs production's 0.700: trails by 0.040, more than the allowed 0.020"]
    with pytest.raises(ValueError, match="different eval rows"):
        decide_promotion(result(0.7, n=300), production, policy)


def test_a_candidate_within_the_margin_on_too_few_rows_is_not_promoted():
    """Production's rewards plus noise: a point difference inside the margin, a paired bound outside it."""
    rng = np.random.default_rng(0)
    desirable = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    theirs = rng.normal(size=60) + 0.8 * desirable
    ours = theirs + 0.6 * rng.normal(size=60)
    as_entry = lambda x: {"desirable": x[desirable].tolist(), "undesirable": x[~desirable].tolist()}  # noqa: E731
    difference = roc_auc(ours, desirable) - roc_auc(theirs, desirable)
    assert -0.02 < difference < 0.02
    d = decide_promotion(result(scores=as_entry(ours)), result(scores=as_entry(theirs)),
                         PromotionPolicy(min_auc=0.5, max_auc_drop=0.02))
    check = d.checks[1]
    assert not d.promote and check.bound < -0.02 and check.needed > 60
    assert "60 eval examples cannot show the candidate within 0.020 of production with 95% confidence" in d.reasons[0]
    assert d.reasons[0].endswith(f"need ~{check.needed:,}")


def test_an_evaluation_without_rewards_is_an_error():
    with pytest.raises(ValueError, match="re-run `thumbs evaluate`"):
        decide_promotion({"preference": {"auc": 0.7}, "drift": {"kl_per_token": 0.0}}, None, PromotionPolicy())


def test_drift_caps_reject_kl_and_length_blow_up():
    policy = PromotionPolicy(max_kl_per_token=0.5, max_length_ratio=1.5, min_length_ratio=0.5)
    assert not decide_promotion(result(0.8, kl=0.6), None, policy).promote
    d = decide_promotion(result(0.8, sampled=1.9), None, policy)
    assert not d.promote and d.reasons == ["sampled answers 1.90x the base's length outside [0.5, 1.5]"]
    assert not decide_promotion(result(0.8, greedy=0.3), None, policy).promote


def test_suites_may_not_regress_beyond_their_tolerance():
    policy = PromotionPolicy(suite_tolerance=0.0, suite_tolerances={"trivia": 0.1}, min_suite_accuracy={"safety": 0.9})
    incumbent = result(0.7, suites={"safety": 1.0, "trivia": 0.8})
    assert decide_promotion(result(0.7, suites={"safety": 1.0, "trivia": 0.75}), incumbent, policy).promote
    d = decide_promotion(result(0.7, suites={"safety": 0.95, "trivia": 0.8}), incumbent, policy)
    assert not d.promote and "suite 'safety' accuracy 0.95 vs production's 1.00: regressed by 0.05" in d.reasons[0]
    # floors apply with no incumbent too
    assert not decide_promotion(result(0.7, suites={"safety": 0.8}), None, policy).promote


def test_the_decision_is_data(tmp_path):
    d = decide_promotion(result(0.7), None, PromotionPolicy())
    record = json.loads(json.dumps(d.to_dict()))
    assert record["promote"] is True and [c["name"] for c in record["checks"]] == [
        "auc floor", "kl cap", "greedy length", "sampled length"]
    bad = tmp_path / "p.yaml"
    bad.write_text("min_auc: 0.6\nmax_auc_dorp: 0.1\n")
    with pytest.raises(ValueError, match="max_auc_dorp"):
        PromotionPolicy.load(bad)
