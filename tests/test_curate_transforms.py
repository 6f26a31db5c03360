"""Curation pieces with hand-made inputs and exact expected outputs: weights, votes, Beam transforms."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

TestPipeline.__test__ = False  # a Beam class, not a pytest one
from apache_beam.testing.util import assert_that, equal_to

from ingest.curate.balance import InsufficientData, class_weights
from ingest.curate.rules import CurateConfig, add_keys, resolve
from ingest.curate.pipeline import KeyByBucket, ResolveVotes, pipeline_options, CurateError
from ingest.schema import FEEDBACK_SCHEMA

T0 = datetime(2026, 11, 20, tzinfo=timezone.utc)


def rows(*specs) -> pa.Table:
    """specs: (event_id, user, prompt, completion, desirable, minutes after T0)."""
    return pa.Table.from_pylist([
        {"event_id": e, "timestamp": T0 + timedelta(minutes=m), "user_id": u, "conversation_id": None,
         "model_version": None, "prompt": [{"role": "user", "content": p}], "completion": c, "desirable": d,
         "metadata": None, "source": "hand", "source_line": i + 1}
        for i, (e, u, p, c, d, m) in enumerate(specs)], schema=FEEDBACK_SCHEMA)


def test_weights_up_weight_the_rarer_class_into_the_band():
    # 1 up per 10 down: λD = 10 makes λD·nD = λU·nU exactly (ratio 1, the band's lower edge).
    w = class_weights(100, 1000)
    assert (w.desirable_weight, w.undesirable_weight, w.ratio, w.in_band) == (10.0, 1.0, 1.0, True)
    # 300 up, 100 down: ratio 3 > 4/3, so λU = 3 / target; with target 4/3 that is 2.25.
    w = class_weights(300, 100, target=4 / 3)
    assert (w.desirable_weight, w.undesirable_weight) == (1.0, 2.25) and w.ratio == pytest.approx(4 / 3)
    assert class_weights(110, 100).desirable_weight == class_weights(110, 100).undesirable_weight == 1.0


def test_weights_refuse_a_missing_class_and_warn_past_1_to_50():
    with pytest.raises(InsufficientData, match="0 desirable"):
        class_weights(0, 500)
    with pytest.raises(InsufficientData, match="at least 5"):
        class_weights(4, 500, min_per_class=5)
    with pytest.warns(UserWarning, match="beyond 1:50"):
        assert class_weights(1, 51).in_band
    with pytest.raises(ValueError, match=r"\[1, 4/3\]"):
        class_weights(1, 2, target=1.5)


VOTES = rows(
    ("e1", "alice", "Q1", "A1", True, 0),
    ("e1", "alice", "Q1", "A1", True, 0),     # same event twice (two overlapping log exports)
    ("e2", "bob", "Q1", "A1", False, 1),
    ("e3", "carol", "Q1", "A1 ", True, 2),    # trailing space: the same example
    ("e4", "alice", "Q2", "A2", True, 0),
    ("e5", "alice", "Q2", "A2", False, 5),    # alice changed her mind: only her latest vote counts
    ("e6", "bob", "Q2", "A2", True, 6),       # 1 up, 1 down: a tie
    ("e7", None, "Q3", "A3", False, 0),       # anonymous votes count separately
    ("e8", None, "Q3", "A3", False, 1),
    ("e9", "dave", "Q4", "  \t", True, 0),    # empty completion
    ("e10", "erin", "Q5", "x" * 50, True, 0),  # over max_completion_chars
)


def labels(table: pa.Table) -> dict:
    return {(r["prompt"][0]["content"], r["completion"].strip()): (r["desirable"], r["votes_up"], r["votes_down"])
            for r in table.to_pylist()}


@pytest.mark.parametrize("policy, expected, dropped", [
    ("majority", {("Q1", "A1"): (True, 2, 1), ("Q3", "A3"): (False, 0, 2)}, {"dropped_tie": 1}),
    ("drop-conflicts", {("Q3", "A3"): (False, 0, 2)}, {"dropped_conflict": 2}),
    ("latest", {("Q1", "A1"): (True, 2, 1), ("Q2", "A2"): (True, 1, 1), ("Q3", "A3"): (False, 0, 2)}, {}),
])
def test_resolve_dedupes_and_applies_the_policy(policy, expected, dropped):
    config = CurateConfig(policy=policy, eval_fraction=0.0, max_completion_chars=40)
    train, eval_, counts = resolve(add_keys(VOTES, 4), config)
    assert labels(train) == expected and eval_.num_rows == 0
    assert counts["events_in"] == 11
    assert counts["removed_duplicate_event_id"] == 1
    assert counts["removed_superseded_vote"] == 1
    assert counts["examples"] == 5 and counts["examples_with_conflicting_votes"] == 2
    assert counts["removed_merged_into_example"] == 9 - 5
    assert counts["dropped_empty"] == 1 and counts["dropped_too_long"] == 1
    assert {k: v for k, v in counts.items() if k in ("dropped_tie", "dropped_conflict")} == dropped


def test_split_keeps_every_prompt_on_one_side():
    many = rows(*[(f"e{i}", f"u{i}", f"prompt {i % 40}", f"answer {i}", i % 3 == 0, i) for i in range(400)])
    train, eval_, _ = resolve(add_keys(many, 8), CurateConfig(eval_fraction=0.25))
    prompts = [{r["prompt"][0]["content"] for r in t.to_pylist()} for t in (train, eval_)]
    assert prompts[0] and prompts[1] and not prompts[0] & prompts[1]
    assert train.num_rows + eval_.num_rows == 400


def test_the_holdout_is_sized_by_examples_nested_and_capped_at_a_quarter():
    """400 examples over 200 prompts: 5% of the prompts would hold out ~20; `eval_examples` raises it to whole
    prompts of the lowest draws, a larger holdout contains a smaller one, and none takes over a quarter."""
    many = rows(*[(f"e{i}", f"u{i}", f"prompt {i % 200}", f"answer {i}", i % 3 == 0, i) for i in range(400)])
    keyed = add_keys(many, 8)

    def held_out(**config):
        _, eval_, counts = resolve(keyed, CurateConfig(eval_fraction=0.05, **config))
        assert counts["eval"] == eval_.num_rows and counts["train"] + counts["eval"] == 400
        return {r["event_id"] for r in eval_.to_pylist()}

    by_fraction, fifty, eighty, capped = (held_out(eval_examples=0), held_out(eval_examples=50),
                                          held_out(eval_examples=80), held_out(eval_examples=10_000))
    assert len(by_fraction) < 50 <= len(fifty) <= 51 and 80 <= len(eighty) <= 81  # prompts hold 2 examples each
    assert by_fraction <= fifty <= eighty <= capped and 100 <= len(capped) <= 101  # a quarter of 400
    assert held_out(eval_examples=10) == by_fraction  # the fraction already holds more


def test_beam_curation_holds_out_what_the_whole_window_resolved_at_once_does(tmp_path):
    """The cut is the window's, not a bucket's: ingested and curated in 8 buckets, the same examples are held out
    as when the window's rows are resolved at once."""
    import json

    from ingest.curate.pipeline import curate
    from ingest.curate.snapshot import EVAL, read_split
    from ingest.intake.job import IngestConfig, ingest

    events = [{"event_id": f"e{i}", "timestamp": "2026-11-20T03:00:00Z", "user_id": f"u{i}",
               "prompt": f"prompt {i % 150}", "completion": f"answer {i}", "label": "up" if i % 3 == 0 else "down"}
              for i in range(300)]
    source = tmp_path / "feedback.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    ingest([source], tmp_path / "lake", IngestConfig(format="events", insecure_dev_key=True), progress=False)
    config = CurateConfig(eval_fraction=0.05, eval_examples=60, n_buckets=8)
    stats = curate(tmp_path / "lake", tmp_path / "snapshots", config=config)
    held_out = {r["completion"] for r in read_split(Path(stats["path"]), EVAL)}
    whole = rows(*[(e["event_id"], e["user_id"], e["prompt"], e["completion"], e["label"] == "up", 0) for e in events])
    _, expected, _ = resolve(add_keys(whole, 8), config)
    assert held_out == set(expected.column("completion").to_pylist()) and 60 <= len(held_out) <= 61
    assert stats["counts"]["eval"] == len(held_out)


def test_key_by_bucket_puts_every_row_of_an_example_in_one_bucket():
    with TestPipeline(options=pipeline_options([])) as p:
        out = (p | beam.Create([VOTES.slice(0, 5), VOTES.slice(5)])
               | KeyByBucket(4)
               | beam.FlatMap(lambda kv: [(kv[1].column("prompt")[i][0]["content"].as_py(), kv[0])
                                          for i in range(kv[1].num_rows)])
               | beam.Distinct())
        # Q1's four rows (one with a trailing space) share a bucket; so do Q2's three and Q3's two.
        assert_that(out | beam.combiners.Count.PerKey(), equal_to([("Q1", 1), ("Q2", 1), ("Q3", 1), ("Q4", 1),
                                                                     ("Q5", 1)]))


def test_resolve_votes_transform_gives_exact_rows_and_counts():
    config = CurateConfig(eval_fraction=0.0, eval_examples=0, max_completion_chars=40)
    with TestPipeline(options=pipeline_options([])) as p:
        keyed = p | beam.Create([VOTES.slice(0, 6), VOTES.slice(6)]) | KeyByBucket(3)
        resolved = keyed | ResolveVotes(config)
        train = resolved["train"] | beam.FlatMap(lambda t: list(labels(t).items()))
        assert_that(train, equal_to([(("Q1", "A1"), (True, 2, 1)), (("Q3", "A3"), (False, 0, 2))]), label="train")
        assert_that(resolved["eval"], equal_to([]), label="eval")
        totals = (resolved["counts"] | beam.FlatMap(lambda c: c.items()) | beam.CombinePerKey(sum)
                  | beam.Filter(lambda kv: kv[0] in ("examples", "dropped_tie", "removed_duplicate_event_id")))
        assert_that(totals, equal_to([("examples", 5), ("dropped_tie", 1), ("removed_duplicate_event_id", 1)]),
                    label="counts")


def test_multi_threading_is_refused():
    with pytest.raises(CurateError, match="multi_threading"):
        pipeline_options(["--direct_running_mode=multi_threading"])


def test_a_prompt_of_blank_messages_is_dropped_as_empty():
    blank = rows(("e1", "u1", " \n ", "an answer", True, 0), ("e2", "u2", "Q", "an answer", True, 0))
    train, _, counts = resolve(add_keys(blank, 2), CurateConfig(eval_fraction=0.0, eval_examples=0))
    assert counts["dropped_empty"] == 1
    assert [r["prompt"][0]["content"] for r in train.to_pylist()] == ["Q"]
