"""The poisoning defence of curation: caps on one user's share of the votes and on one example's votes.

Without caps, one account that votes a lot steers the train split: every vote it casts on its own
(unique) answers becomes an example with the label it chose. Two caps, both off by default:

    max_user_share     a user's votes beyond this share of all events in the window are thinned: each of
                       their votes is kept with probability limit / n_user, decided by a hash of (user,
                       example), so the choice is deterministic, the same in every hash bucket, and keeps
                       about `limit` of their votes wherever they fall. 1.0 keeps everything.
    max_example_votes  at most this many votes count per example (the latest ones): a brigade piling onto
                       one answer moves its label, but its vote counts stop at the cap. 0 keeps everything.

The user cap needs each user's total over the whole window, which no hash bucket sees: `with_user_caps`
counts them from the lake files (one column) before the Beam job and hands the per-user keep fractions
to every bucket inside the config. The fractions are derived from the files and the share, both already
in the snapshot id, so they are left out of it. Anonymous votes (no user id) count as one user each.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.keys import unit_interval

_CAP_SALT = "\x1cthumbs-user-cap-v1"


# What the caps drop are votes, not examples: counted where the votes are (before examples are formed).
CAP_COUNTS = ("dropped_user_cap", "dropped_example_cap")


def user_keep_fractions(user_ids: pa.Array, max_user_share: float) -> dict[str, float]:
    """{user: share of their votes to keep} for users over the cap; users within it are not listed."""
    if max_user_share >= 1.0:
        return {}
    users = pc.drop_null(user_ids)
    total = len(user_ids)
    if not total or not len(users):
        return {}
    counts = pc.value_counts(users)
    limit = max(1.0, max_user_share * total)
    return {str(u): limit / float(n) for u, n in zip(counts.field("values").to_pylist(),
                                                     counts.field("counts").to_pylist()) if n > limit}


def with_user_caps(config, files: list[Path]):
    """`config` with the keep fractions of the users over `config.max_user_share` in `files` filled in."""
    if config.max_user_share >= 1.0 or not files:
        return config
    users = pa.concat_arrays([pq.read_table(f, columns=["user_id"]).column("user_id").combine_chunks()
                              for f in files])
    return dataclasses.replace(config, user_keep=user_keep_fractions(users, config.max_user_share))


def apply_caps(rows: pa.Table, config, counts: dict) -> pa.Table:
    """One bucket's votes (one per user per example already) with both caps applied; counts what each dropped."""
    n = rows.num_rows
    keep = np.ones(n, dtype=bool)
    if config.user_keep and n:
        fraction = np.array([config.user_keep.get(u, 1.0) for u in rows.column("_user").to_pylist()])
        draw = unit_interval(pc.binary_join_element_wise(rows.column("_user"), rows.column("_example"),
                                                         _CAP_SALT))
        keep &= np.asarray(draw) < fraction
    counts["dropped_user_cap"] = int(n - keep.sum())
    rows = rows.filter(pa.array(keep))
    dropped = 0
    if config.max_example_votes and rows.num_rows:
        rows = rows.take(pc.sort_indices(rows, sort_keys=[("_example", "ascending"), ("timestamp", "descending"),
                                                          ("event_id", "descending")]))
        example = rows.column("_example").to_numpy(zero_copy_only=False)
        starts = np.r_[0, np.flatnonzero(example[1:] != example[:-1]) + 1]
        rank = np.arange(len(example)) - np.repeat(starts, np.diff(np.r_[starts, len(example)]))
        within = rank < config.max_example_votes
        dropped = int((~within).sum())
        rows = rows.filter(pa.array(within))
    counts["dropped_example_cap"] = dropped
    return rows
