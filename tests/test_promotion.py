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


def result(auc, kl=0.01, greedy=1.0, sampled=1.0, suites=None, version=None):
    return {"preference": {"auc": auc}, "version": version,
            "drift": {"kl_per_token": kl, "length": {"greedy_ratio": greedy, "sampled_ratio": sampled}},
            "suites": {name: {"accuracy": a} for name, a in (suites or {}).items()}}


def test_the_shipped_policy_loads_and_equals_the_dataclass_defaults():
    assert PromotionPolicy.load(DEFAULT_POLICY) == PromotionPolicy()


def test_without_an_incumbent_the_floors_alone_decide():
    policy = PromotionPolicy()
    assert decide_promotion(result(0.70), None, policy).promote
    rejected = decide_promotion(result(0.54), None, policy)
    assert not rejected.promote and rejected.reasons == ["preference AUC 0.540 < floor 0.55"]
    assert decide_promotion(result(0.70), None, policy).incumbent is None


def test_the_candidate_may_trail_the_incumbent_by_the_margin_only():
    policy = PromotionPolicy(max_auc_drop=0.02)
    assert decide_promotion(result(0.69), result(0.70, version="v0003"), policy).promote  # trails by 0.01
    d = decide_promotion(result(0.66), result(0.70, version="v0003"), policy)
    assert not d.promote and d.incumbent == "v0003"
    assert d.reasons == ["preference AUC 0.660 vs production's 0.700: trails by 0.040, more than the allowed 0.020"]


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
