"""Curation logic on Arrow tables: keys, dedupe, vote resolution, filters and the train/eval split.

Pure functions of tables and a config, with no Beam in them: the Beam job (`ingest/curate/pipeline.py`) calls
them on each hash bucket of rows, and the benchmark's floor calls them on the whole table at once.
All rows of one example (prompt, completion) land in one bucket, so per-bucket results are exact.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from common.configfile import config
from ingest.curate.keys import example_key, normalize_text, prompt_key, stable_hash, unit_interval
from ingest.schema import FEEDBACK_SCHEMA
from ingest.curate.vote_caps import apply_caps

POLICIES = ("majority", "drop-conflicts", "latest")
CURATED_SCHEMA = FEEDBACK_SCHEMA.append(pa.field("votes_up", pa.int32(), nullable=False)).append(
    pa.field("votes_down", pa.int32(), nullable=False))
_SPLIT_SALT = "\x1cthumbs-split-v1"
SPLIT_DRAW = "_split"  # each curated example's prompt's draw in [0, 1): the lowest draws are held out
MAX_EVAL_SHARE = 0.25  # `eval_examples` never holds out more than this share of a window's examples


@config
class CurateConfig:
    policy: Literal[POLICIES] = "majority"
    """How one example's votes become its label: `majority` (ties dropped), `drop-conflicts`
    (any disagreement dropped) or `latest` (the most recent vote wins)."""
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    """Share of prompts held out for evaluation, chosen by a hash of the prompt."""
    eval_examples: int = Field(500, ge=0)
    """At least this many examples are held out (whole prompts, those of the lowest hashes, so a larger holdout
    contains a smaller one), never more than a quarter of the window's: a promotion gate needs a few hundred
    eval examples to tell a 0.02 AUC difference, which 5% of a small window is not. 0: `eval_fraction` alone."""
    max_prompt_chars: int = Field(32_000, ge=1)
    """Examples whose prompt (all messages) is longer are dropped (too_long)."""
    max_completion_chars: int = Field(16_000, ge=1)
    """Examples whose completion is longer are dropped (too_long)."""
    min_per_class: int = Field(1, ge=1)
    """Fewer train examples than this of either class stops curation with an error."""
    balance_target: float = Field(4 / 3, ge=1.0, le=4 / 3)
    """Upper edge of the band [1, balance_target] that λD·nD / (λU·nU) is brought into; at most 4/3."""
    n_buckets: int = Field(64, ge=1)
    """Hash buckets the rows are grouped in; bounds what one worker holds at once."""
    max_user_share: float = Field(1.0, gt=0.0, le=1.0)
    """Poisoning defence (ingest/curate/vote_caps.py): a user's thumbs-up (or thumbs-down) beyond this share of the
    window's thumbs-up (or thumbs-down) are thinned to about that share; 1.0 keeps everything."""
    max_example_votes: int = Field(0, ge=0)
    """At most this many votes (the latest) count per example; 0 keeps everything."""
    def to_dict(self) -> dict:
        return asdict(self)


def add_keys(rows: pa.Table, n_buckets: int) -> pa.Table:
    """Append `_prompt` (the prompt's key), `_example`, `_user` (the pseudonym, or the event for
    anonymous votes) and `_bucket`."""
    prompts = prompt_key(rows.column("prompt"))
    key = example_key(prompts, rows.column("completion"))
    user = pc.coalesce(rows.column("user_id"), pc.binary_join_element_wise("event:", rows.column("event_id"), ""))
    bucket = (stable_hash(key) % np.uint64(n_buckets)).astype(np.int32)
    return (rows.append_column("_prompt", prompts).append_column("_example", key).append_column("_user", user)
            .append_column("_bucket", pa.array(bucket)))


def split_by_bucket(rows: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    buckets = rows.column("_bucket").to_numpy()
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    cuts = np.flatnonzero(np.diff(sorted_buckets)) + 1
    for part in np.split(order, cuts):
        if len(part):
            yield int(buckets[part[0]]), rows.take(pa.array(part))


def _first_per_group(rows: pa.Table, keys: list[str], order: list[tuple[str, str]]) -> pa.Table:
    """Sort by `order` (which starts with `keys`), keep the first row of each run of equal keys."""
    rows = rows.take(pc.sort_indices(rows, sort_keys=order))
    n = rows.num_rows
    if n < 2:
        return rows
    first = np.zeros(n, dtype=bool)
    first[0] = True
    for name in keys:
        col = rows.column(name)
        first[1:] |= pc.not_equal(col.slice(1), col.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return rows.filter(pa.array(first))


def resolve(rows: pa.Table, config: CurateConfig, user_keep: dict | None = None) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Keyed rows (all of a window, or all of one bucket with the window's cut) to (train, eval, counts by stage
    and reason): `resolve_examples`, then `split` at the cut these rows' own draws give."""
    curated, counts = resolve_examples(rows, config, user_keep)
    train, eval_, split_counts = split_at(curated, eval_cut(lowest_draws(curated, config), curated.num_rows, config))
    return train, eval_, counts | split_counts


def resolve_examples(rows: pa.Table, config: CurateConfig, user_keep: dict | None = None) -> tuple[pa.Table, dict[str, int]]:
    """Keyed rows of one bucket to its curated examples (with their split draw, `SPLIT_DRAW`) and counts by stage and
    reason. `user_keep`: the keep fractions of the users over `config.max_user_share` (vote_caps.user_caps of the
    whole window; None keeps every vote)."""
    counts = {"events_in": rows.num_rows}
    rows = _first_per_group(rows, ["event_id"], [("event_id", "ascending"), ("timestamp", "ascending"),
                                                 ("source", "ascending"), ("source_line", "ascending")])
    counts["removed_duplicate_event_id"] = counts["events_in"] - rows.num_rows
    n = rows.num_rows
    # One vote per user per example: their latest.
    rows = _first_per_group(rows, ["_example", "_user"], [("_example", "ascending"), ("_user", "ascending"),
                                                          ("timestamp", "descending"), ("event_id", "descending")])
    counts["removed_superseded_vote"] = n - rows.num_rows
    rows = apply_caps(rows, config, counts, user_keep or {})
    counts["votes"] = rows.num_rows

    up = rows.group_by("_example", use_threads=False).aggregate([("desirable", "sum"), ("desirable", "count")])
    up = up.sort_by("_example")
    # The example's row (its stored texts, ids, time) is its latest vote.
    examples = _first_per_group(rows, ["_example"], [("_example", "ascending"), ("timestamp", "descending"),
                                                     ("event_id", "descending")])
    n_up = up.column("desirable_sum").to_numpy().astype(np.int32)
    n_down = up.column("desirable_count").to_numpy().astype(np.int32) - n_up
    counts["examples"] = examples.num_rows
    counts["removed_merged_into_example"] = counts["votes"] - examples.num_rows
    conflicting = (n_up > 0) & (n_down > 0)
    counts["examples_with_conflicting_votes"] = int(conflicting.sum())

    latest = examples.column("desirable").to_numpy(zero_copy_only=False)
    if config.policy == "majority":
        keep, label = n_up != n_down, n_up > n_down
        counts["dropped_tie"] = int((~keep).sum())
        counts["relabelled_by_majority"] = int((keep & (label != latest)).sum())
    elif config.policy == "drop-conflicts":
        keep, label = ~conflicting, n_up > 0
        counts["dropped_conflict"] = int(conflicting.sum())
    else:
        keep, label = np.ones(len(latest), dtype=bool), latest
    empty, too_long = _filters(examples, config)
    counts["dropped_empty"] = int((keep & empty).sum())
    counts["dropped_too_long"] = int((keep & ~empty & too_long).sum())
    keep &= ~empty & ~too_long

    curated = examples.set_column(examples.schema.get_field_index("desirable"), "desirable", pa.array(label))
    curated = curated.append_column("votes_up", pa.array(n_up)).append_column("votes_down", pa.array(n_down))
    curated = curated.filter(pa.array(keep))
    draw = unit_interval(pc.binary_join_element_wise(curated.column("_prompt"), _SPLIT_SALT, ""))
    return curated.append_column(SPLIT_DRAW, pa.array(draw, type=pa.float64())), counts


def lowest_draws(curated: pa.Table, config: CurateConfig) -> np.ndarray:
    """The `eval_examples` lowest split draws of these curated examples, sorted: what `eval_cut` needs of a bucket."""
    draws = np.sort(curated.column(SPLIT_DRAW).to_numpy()) if curated.num_rows else np.zeros(0)
    return draws[:config.eval_examples]


def merge_lowest(parts, config: CurateConfig) -> tuple[int, np.ndarray]:
    """(examples, lowest draws) of several buckets' to the window's: counts add, the lowest `eval_examples` stay."""
    examples, draws = 0, []
    for n, lowest in parts:
        examples += n
        draws.append(lowest)
    return examples, (np.sort(np.concatenate(draws))[:config.eval_examples] if draws else np.zeros(0))


def eval_cut(lowest: np.ndarray, examples: int, config: CurateConfig) -> float:
    """The split's threshold: examples whose draw is below it are held out. `eval_fraction`, raised so that at least
    `eval_examples` (at most `MAX_EVAL_SHARE` of `examples`) fall below it; `lowest`: the window's lowest draws."""
    k = min(config.eval_examples, int(examples * MAX_EVAL_SHARE), len(lowest))
    if k == 0:
        return config.eval_fraction
    return max(config.eval_fraction, float(np.nextafter(lowest[k - 1], 1.0)))  # the k-th lowest's prompt included


def split_at(curated: pa.Table, cut: float) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Curated examples to (train, eval, their counts): eval holds the examples whose split draw is below `cut`."""
    is_eval = pc.less(curated.column(SPLIT_DRAW), cut)
    train, eval_ = curated.filter(pc.invert(is_eval)), curated.filter(is_eval)
    counts = {}
    for name, part in (("train", train), ("eval", eval_)):
        n_good = int(pc.sum(part.column("desirable")).as_py() or 0)
        counts[name] = part.num_rows
        counts[f"{name}_desirable"], counts[f"{name}_undesirable"] = n_good, part.num_rows - n_good
    return _final(train), _final(eval_), counts


def _filters(examples: pa.Table, config: CurateConfig) -> tuple[np.ndarray, np.ndarray]:
    prompt = examples.column("prompt").combine_chunks() if examples.num_rows else None
    if prompt is None:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    completion = examples.column("completion")
    empty_completion = pc.equal(pc.utf8_length(normalize_text(completion)), 0)
    content = pc.list_flatten(prompt).field("content")
    parents = pc.list_parent_indices(prompt).to_numpy()

    def per_prompt(chars: pa.Array) -> np.ndarray:
        return np.bincount(parents, weights=chars.to_numpy(), minlength=len(prompt))

    prompt_chars = per_prompt(pc.utf8_length(content))
    empty_prompt = per_prompt(pc.utf8_length(normalize_text(content))) == 0  # every message blank
    empty = empty_completion.to_numpy(zero_copy_only=False) | empty_prompt
    too_long = (prompt_chars > config.max_prompt_chars) | \
        (pc.utf8_length(completion).to_numpy(zero_copy_only=False) > config.max_completion_chars)
    return empty, too_long


def _final(table: pa.Table) -> pa.Table:
    return table.select(CURATED_SCHEMA.names).cast(CURATED_SCHEMA)


def sum_counts(parts) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for name, n in part.items():
            total[name] = total.get(name, 0) + n
    return dict(sorted(total.items()))
