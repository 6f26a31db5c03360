"""The micro-batch plan and the z0 pairs, for every train-set size: never one example, never one prompt."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from training.config import TrainConfig
from training.data import DataError, Encoded, check_trainable
from training.plan import Plan, batch_sizes, kl_partners, plan_epoch


def synthetic(n: int, shape: str, seed: int) -> Encoded:
    """n examples: 'pairs' (each prompt answered twice, as HH-RLHF gives), 'many' (1-5 answers per prompt) or
    'dominant' (one prompt holding exactly half, the hardest case the data check lets through)."""
    rng = np.random.default_rng([n, seed])
    if shape == "pairs":
        groups = np.arange(n) // 2
    elif shape == "many":
        groups = np.repeat(np.arange(n), rng.integers(1, 6, n))[:n]
    else:
        groups = np.concatenate([np.zeros(n // 2, dtype=int), np.arange(1, n - n // 2 + 1)])
    groups = rng.permutation(groups)
    desirable = rng.random(n) < 0.5
    if n >= 2:
        desirable[:2] = [True, False]  # both classes
    lengths = rng.integers(3, 40, n)
    encoded = Encoded([np.zeros(1 + k % 7, dtype=np.int64) for k in range(n)],
                      [np.zeros(max(1, L - 1 - k % 7), dtype=np.int64) for k, L in enumerate(lengths)],
                      desirable, groups.astype(np.int64))
    encoded.counts = {"examples_in": n, "examples": n, "desirable": int(desirable.sum()),
                      "undesirable": int((~desirable).sum()), "prompts": len(set(groups.tolist()))}
    return encoded


def assert_plan_is_sound(encoded: Encoded, batches: list, partners: bool = True) -> None:
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(encoded)))  # each example exactly once
    for batch in batches:
        counts = Counter(encoded.prompt_group[batch].tolist())
        assert len(batch) >= 2 and len(counts) >= 2
        assert max(counts.values()) <= len(batch) // 2  # so that a same-prompt-free derangement exists
        if not partners:
            continue
        pair = kl_partners(encoded.prompt_group[batch])
        assert sorted(pair.tolist()) == list(range(len(batch)))  # a permutation ...
        assert (pair != np.arange(len(batch))).all()  # ... without fixed points ...
        assert (encoded.prompt_group[batch][pair] != encoded.prompt_group[batch]).all()  # ... nor shared prompts


@pytest.mark.slow
@pytest.mark.parametrize("micro_batch_size, group_size", [(2, 1), (3, 4), (8, 32)])
def test_every_train_size_from_1_to_600_plans_micro_batches_of_two_prompts_or_is_refused_up_front(
        micro_batch_size, group_size):
    for n in range(1, 601):
        for shape in ("pairs", "many", "dominant"):
            encoded = synthetic(n, shape, seed=micro_batch_size)
            top = max(Counter(encoded.prompt_group.tolist()).values())
            trainable = n >= 2 and encoded.counts["prompts"] >= 2 and 2 * top <= n
            if not trainable:
                with pytest.raises(DataError):
                    check_trainable(encoded)
                continue
            check_trainable(encoded)
            batches = plan_epoch(encoded, epoch=n % 3, seed=7, micro_batch_size=micro_batch_size,
                                 group_size=group_size)
            # The z0 pairs of every micro-batch are built for one N in ten (the bound above guarantees them).
            assert_plan_is_sound(encoded, batches, partners=n % 10 == 0)
            if shape == "pairs":  # no merges needed: the sizes are exactly the planned ones
                assert sorted(len(b) for b in batches) == sorted(batch_sizes(n, micro_batch_size))


def test_one_example_is_a_clear_data_error_before_any_model_loads():
    with pytest.raises(DataError, match="KTO needs both classes"):
        check_trainable(synthetic(1, "pairs", 0))


def test_sizes_never_hold_one_example_and_exceed_the_size_asked_for_only_at_two():
    for size in (2, 3, 4, 8, 16):
        for n in range(2, 300):
            sizes = batch_sizes(n, size)
            assert sum(sizes) == n and min(sizes) >= 2
            assert max(sizes) <= (size if size > 2 or n % 2 == 0 else 3)


def test_the_default_plan_survives_the_epoch_end_that_used_to_crash():
    # N ≡ 1 mod (micro_batch_size × length_group_size): the last micro-batch used to hold one example.
    config = TrainConfig(micro_batch_size=8, length_group_size=32)
    encoded = synthetic(8 * 32 * 2 + 1, "pairs", 0)
    plan = Plan(encoded, config, world=1)
    for epoch in range(3):
        batches = plan._epoch_batches(epoch)
        assert len(batches) == plan.batches_per_epoch
        assert_plan_is_sound(encoded, batches)


def test_z0_partners_are_a_derangement_across_prompts():
    groups = np.array([7, 7, 7, 8, 9, 9])  # the old rule gave [3, 3, 3, 4, 0, 0]: not a permutation
    partners = kl_partners(groups)
    assert sorted(partners.tolist()) == list(range(6)) and (groups[partners] != groups).all()
    with pytest.raises(DataError, match="more than half"):
        kl_partners(np.array([7, 7, 7, 8]))


def test_a_prompt_holding_more_than_half_of_the_train_set_is_refused_with_what_to_do():
    encoded = synthetic(10, "dominant", 0)
    encoded.prompt_group[np.flatnonzero(encoded.prompt_group != 0)[0]] = 0  # 6 of 10 now
    encoded.counts["prompts"] -= 1
    with pytest.raises(DataError, match="one prompt holds 6 of the 10 train examples.*more prompts"):
        check_trainable(encoded)
    check_trainable(encoded, split="eval")  # evaluation pairs nothing: only training needs it


def pair_lengths(encoded: Encoded, pairs: tuple) -> float:
    """Mean tokens of z0's mismatched pairs: prompt of one example + completion of its partner."""
    examples, partners = pairs
    return float(np.mean([len(encoded.prompt_ids[i]) + len(encoded.completion_ids[j]) for i, j in zip(examples, partners)]))


@pytest.mark.parametrize("shape", ["pairs", "many", "dominant"])
def test_z0_pairs_from_a_sample_of_the_epoch_do_not_follow_the_length_grouped_batch(shape):
    # Length grouping makes each micro-batch short or long; pairs drawn from the micro-batch inherit its
    # length (so z0 does too), pairs drawn at random from the split must not.
    encoded = synthetic(640, shape, 1)
    grouped = TrainConfig(micro_batch_size=8, length_group_size=32)
    batch_plan, sample_plan = Plan(encoded, grouped, world=1), Plan(encoded, TrainConfig(**{**grouped.to_dict(),
                                                                                               "kl_pairs": "sample"}), 1)
    own, sampled, lengths = [], [], []
    for step in range(batch_plan.steps_per_epoch):
        micro = batch_plan.micro_batches(step, 0)
        (b,), (s,) = batch_plan.z0_pairs(step, 0, micro), sample_plan.z0_pairs(step, 0, micro)
        assert (b[0] == micro[0]).all()  # the micro-batch's own examples ...
        assert not np.array_equal(np.sort(s[0]), np.sort(micro[0]))  # ... or others, drawn from the split
        for examples, partners in (b, s):
            assert len(examples) == len(micro[0])
            assert (encoded.prompt_group[examples] != encoded.prompt_group[partners]).all()
        lengths.append(float(encoded.lengths[micro[0]].mean()))
        own.append(pair_lengths(encoded, b))
        sampled.append(pair_lengths(encoded, s))
    assert np.corrcoef(lengths, own)[0, 1] > 0.8
    assert abs(np.corrcoef(lengths, sampled)[0, 1]) < 0.3
    again = Plan(encoded, sample_plan.config, world=1)  # deterministic from the seed, so a resume sees the same
    assert all(np.array_equal(x[0][0], y[0][0]) for x, y in
               ((sample_plan.z0_pairs(k, 0, [np.arange(8)]), again.z0_pairs(k, 0, [np.arange(8)])) for k in range(5)))


def test_the_config_refuses_an_unknown_pairing_or_objective():
    with pytest.raises(ValueError, match="kl_pairs must be one of 'batch' or 'sample'"):
        TrainConfig(kl_pairs="epoch")
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="dpo")
