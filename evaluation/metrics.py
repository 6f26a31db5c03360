"""Preference metrics over implied rewards, with bootstrap intervals: pure numpy, no model.

The implied reward of a completion is β·(log πθ(y|x) − log πref(y|x)). Used as a classifier of the
held-out thumbs-up (desirable) vs thumbs-down completions it gives:
- ROC AUC: P(reward of a random desirable > reward of a random undesirable), ties counting 1/2
  (the Mann-Whitney U statistic over n_desirable · n_undesirable);
- accuracy at 0: a positive reward predicts desirable, a reward ≤ 0 undesirable.
Intervals come from a stratified bootstrap (each class resampled on its own, so every resample
holds both classes) and are percentile intervals.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, desirable: np.ndarray) -> float:
    """Area under the ROC curve of `scores` separating desirable (True) from undesirable rows."""
    scores, desirable = np.asarray(scores, dtype=np.float64), np.asarray(desirable, dtype=bool)
    n_d, n_u = int(desirable.sum()), int((~desirable).sum())
    if n_d == 0 or n_u == 0:
        raise ValueError(f"AUC needs both classes; got {n_d} desirable and {n_u} undesirable")
    ranks = average_ranks(scores)  # ties count one half
    return float((ranks[desirable].sum() - n_d * (n_d + 1) / 2) / (n_d * n_u))


def accuracy_at_zero(scores: np.ndarray, desirable: np.ndarray) -> float:
    """Share of rows whose reward sign is right: > 0 for desirable, ≤ 0 for undesirable."""
    scores, desirable = np.asarray(scores, dtype=np.float64), np.asarray(desirable, dtype=bool)
    return float(np.mean((scores > 0) == desirable))


def bootstrap_values(metric: Callable[[np.ndarray, np.ndarray], float], scores: np.ndarray,
                     desirable: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """`metric` on each of `resamples` stratified resamples of the rows (seeded)."""
    scores, desirable = np.asarray(scores, dtype=np.float64), np.asarray(desirable, dtype=bool)
    return np.array([metric(scores[idx], desirable[idx]) for idx in _stratified(desirable, resamples, seed)])


def bootstrap_interval(metric: Callable[[np.ndarray, np.ndarray], float], scores: np.ndarray,
                       desirable: np.ndarray, *, resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple:
    """(low, high) percentile interval of `metric` over stratified resamples of the rows."""
    return _percentile_interval(bootstrap_values(metric, scores, desirable, resamples=resamples, seed=seed), level)


def paired_bootstrap_values(metric: Callable[[np.ndarray, np.ndarray], float], scores: np.ndarray,
                            other: np.ndarray, desirable: np.ndarray, *, resamples: int = 1000,
                            seed: int = 0) -> np.ndarray:
    """metric(scores) − metric(other) on each stratified resample, where both score the same rows (a candidate and
    production on one eval split): each resample takes the same rows for both, so what the two share (which
    examples are hard) cancels, and the spread is that of the difference: far narrower than the two intervals side
    by side when the models agree on most rows."""
    scores, other = np.asarray(scores, dtype=np.float64), np.asarray(other, dtype=np.float64)
    desirable = np.asarray(desirable, dtype=bool)
    if scores.shape != other.shape or scores.shape != desirable.shape:
        raise ValueError(f"paired scores must be of the same rows: {scores.shape}, {other.shape}, {desirable.shape}")
    return np.array([metric(scores[idx], desirable[idx]) - metric(other[idx], desirable[idx])
                     for idx in _stratified(desirable, resamples, seed)])


def paired_bootstrap_difference(metric: Callable[[np.ndarray, np.ndarray], float], scores: np.ndarray,
                                other: np.ndarray, desirable: np.ndarray, *, resamples: int = 1000,
                                level: float = 0.95, seed: int = 0) -> tuple:
    """(low, high) percentile interval of metric(scores) − metric(other) on the same rows (paired_bootstrap_values)."""
    return _percentile_interval(paired_bootstrap_values(metric, scores, other, desirable, resamples=resamples,
                                                        seed=seed), level)


def _stratified(desirable: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of each resample: each class drawn with replacement on its own, so every one holds both."""
    rng = np.random.default_rng(seed)
    d, u = np.flatnonzero(desirable), np.flatnonzero(~desirable)
    for _ in range(resamples):
        yield np.concatenate([rng.choice(d, len(d)), rng.choice(u, len(u))])


def _percentile_interval(values, level: float) -> tuple:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def preference_metrics(rewards: np.ndarray, desirable: np.ndarray, *, resamples: int = 1000,
                       seed: int = 0) -> dict:
    """AUC and accuracy at 0 with 95% intervals, and each class's mean reward."""
    rewards, desirable = np.asarray(rewards, dtype=np.float64), np.asarray(desirable, dtype=bool)
    return {
        "auc": roc_auc(rewards, desirable),
        "auc_ci95": bootstrap_interval(roc_auc, rewards, desirable, resamples=resamples, seed=seed),
        "accuracy": accuracy_at_zero(rewards, desirable),
        "accuracy_ci95": bootstrap_interval(accuracy_at_zero, rewards, desirable, resamples=resamples, seed=seed),
        "reward_desirable": float(rewards[desirable].mean()),
        "reward_undesirable": float(rewards[~desirable].mean()),
        "n_desirable": int(desirable.sum()), "n_undesirable": int((~desirable).sum()),
    }
