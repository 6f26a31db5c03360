"""The poisoning defence (ingest/curate/vote_caps.py) on hand-built Arrow tables, through curation's `resolve`."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ingest.curate.rules import CurateConfig, add_keys, resolve
from ingest.curate.vote_caps import user_keep_fractions
from tests.test_curate_transforms import rows


def _poisoned() -> pa.Table:
    """10 honest users with one vote each on their own answers, one account with 40 upvotes on its own."""
    honest = [(f"h{i}", f"user{i}", f"Q{i}", f"good answer {i}", i % 2 == 0, i) for i in range(10)]
    spam = [(f"s{i}", "mallory", f"Q{i}", f"rude answer {i}", True, 100 + i) for i in range(40)]
    return rows(*honest, *spam)


def test_user_share_cap_thins_the_heavy_account_to_its_share():
    table = _poisoned()
    fractions = user_keep_fractions(table.column("user_id").combine_chunks(),
                                    table.column("desirable").combine_chunks(), 0.05)
    assert set(fractions) == {"mallory"}  # 45 thumbs-up, cap 2.25 of them: honest users (1 each) are untouched
    assert fractions["mallory"] == pytest.approx((1.0, 2.25 / 40))  # (thumbs-down kept, thumbs-up kept)
    capped = CurateConfig(eval_fraction=0.0, eval_examples=0, max_user_share=0.05)
    train, _, counts = resolve(add_keys(table, 1), capped, fractions)
    kept_spam = sum(c.startswith("rude") for c in train.column("completion").to_pylist())
    assert 0 <= kept_spam <= 8 and counts["dropped_user_cap"] == 40 - kept_spam
    assert sum(c.startswith("good") for c in train.column("completion").to_pylist()) == 10
    # Deterministic and bucket-independent: the same votes survive however the rows are bucketed.
    spread = [resolve(part, capped, fractions)[0] for part in _buckets(add_keys(table, 8))]
    assert sorted(c for t in spread for c in t.column("completion").to_pylist()) == \
        sorted(train.column("completion").to_pylist())


def test_the_share_is_of_the_users_class_so_the_rare_class_is_not_cheap_to_steer():
    """4 upvotes among 204 votes (2% of all, under a 5% cap) are 17% of the 24 thumbs-up: KTO's λ weighs the
    classes alike, so those 4 pull like 17% of the desirable side. They are thinned to the class's 5%."""
    honest = [(f"h{i}", f"user{i}", f"Q{i}", f"answer {i}", i < 20, i) for i in range(200)]
    spam = [(f"s{i}", "mallory", f"R{i}", f"rude answer {i}", True, 300 + i) for i in range(4)]
    table = rows(*honest, *spam)
    fractions = user_keep_fractions(table.column("user_id").combine_chunks(),
                                    table.column("desirable").combine_chunks(), 0.05)
    assert fractions == {"mallory": pytest.approx((1.0, max(1.0, 0.05 * 24) / 4))}
    both = rows(*honest, *spam, *[(f"d{i}", "mallory", f"S{i}", f"fine answer {i}", False, 400 + i) for i in range(4)])
    fractions = user_keep_fractions(both.column("user_id").combine_chunks(), both.column("desirable").combine_chunks(),
                                    0.05)
    assert fractions["mallory"][0] == 1.0  # 4 of 184 thumbs-down: within the cap of that class


def _buckets(table: pa.Table):
    from ingest.curate.rules import split_by_bucket
    return [part for _, part in split_by_bucket(table)]


def test_defaults_keep_everything_and_the_example_cap_keeps_the_latest_votes():
    table = _poisoned()
    train, _, counts = resolve(add_keys(table, 1), CurateConfig(eval_fraction=0.0, eval_examples=0))
    assert train.num_rows == 50 and counts["dropped_user_cap"] == counts["dropped_example_cap"] == 0
    # One answer, 5 votes: 3 early downs then 2 late ups; with a cap of 2 only the ups count.
    brigade = rows(*[(f"b{i}", f"u{i}", "Q", "A", i >= 3, i) for i in range(5)])
    train, _, counts = resolve(add_keys(brigade, 1), CurateConfig(eval_fraction=0.0, eval_examples=0, max_example_votes=2))
    assert counts["dropped_example_cap"] == 3
    assert train.column("votes_up").to_pylist() == [2] and train.column("votes_down").to_pylist() == [0]
    assert train.column("desirable").to_pylist() == [True]


def test_bad_cap_settings_say_what_to_change():
    with pytest.raises(ValueError, match="max_user_share must be in"):
        CurateConfig(max_user_share=0.0)
    with pytest.raises(ValueError, match="max_example_votes must be >= 0"):
        CurateConfig(max_example_votes=-1)
