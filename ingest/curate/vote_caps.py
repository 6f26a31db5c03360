"""The poisoning defence of curation: caps on one user's share of the votes and on one example's votes.

Without caps, one account that votes a lot steers the train split: every vote it casts on its own
(unique) answers becomes an example with the label it chose. Two caps, both off by default:

    max_user_share     a user's votes of one class (thumbs-up or thumbs-down) beyond this share of the
                       window's votes of that class are thinned: each is kept with probability limit / n,
                       decided by a hash of (user, example), so the choice is deterministic, the same in
                       every hash bucket, and keeps about `limit` (at least 1) of their votes of that class
                       wherever they fall. 1.0 keeps everything.
    max_example_votes  at most this many votes count per example (the latest ones): a brigade piling onto
                       one answer moves its label, but its vote counts stop at the cap. 0 keeps everything.

Why a share of the class, not of all votes: KTO's λ are set from the class counts so that each class
weighs about the same in the loss, so a vote pulls in proportion to its share of its own class. Where
1 vote in 5 is a thumbs-up, an account casting 1% of all votes, all of them up, holds 5% of the
desirable class's weight; the lab measured a cap on the share of all votes leaving 1% of adversarial
users worse than no cap shown (LAB.md). Capped per class, that account holds at most `max_user_share`
of either class.

The user cap needs each user's totals over the whole window, which no hash bucket sees: `user_caps`
counts them from the lake files (two columns) before the Beam job, which hands the per-user keep fractions
to every bucket beside the config. The fractions are derived from the files and the share, both already
in the snapshot id, so they are left out of it. Anonymous votes (no user id) count as one user each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.curate.keys import unit_interval

_CAP_SALT = "\x1cthumbs-user-cap-v1"


# What the caps drop are votes, not examples: counted where the votes are (before examples are formed).
CAP_COUNTS = ("dropped_user_cap", "dropped_example_cap")


def user_keep_fractions(user_ids: pa.Array, desirable: pa.Array, max_user_share: float) -> dict[str, tuple]:
    """{user: (share of their thumbs-down to keep, share of their thumbs-up to keep)} for users over the cap
    in either class; users within it in both are not listed."""
    if max_user_share >= 1.0 or not len(user_ids):
        return {}
    table = pa.table({"user": user_ids, "up": desirable})
    out: dict[str, list] = {}
    for index, label in ((0, False), (1, True)):
        votes = table.filter(pc.equal(table.column("up"), label))
        limit = max(1.0, max_user_share * votes.num_rows)
        users = pc.drop_null(votes.column("user"))
        if not len(users):
            continue
        counts = pc.value_counts(users)
        for user, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
            if n > limit:
                out.setdefault(str(user), [1.0, 1.0])[index] = limit / float(n)
    return {user: tuple(keep) for user, keep in out.items()}


def user_caps(config, files: list[Path]) -> dict[str, tuple]:
    """The keep fractions of the users over `config.max_user_share` in `files` (derived data: not in the config,
    so not in the snapshot id, which hashes the files themselves)."""
    if config.max_user_share >= 1.0 or not files:
        return {}
    tables = [pq.read_table(f, columns=["user_id", "desirable"]) for f in files]
    users = pa.concat_arrays([t.column("user_id").combine_chunks() for t in tables])
    labels = pa.concat_arrays([t.column("desirable").combine_chunks() for t in tables])
    return user_keep_fractions(users, labels, config.max_user_share)


def apply_caps(rows: pa.Table, config, counts: dict, user_keep: dict) -> pa.Table:
    """One bucket's votes (one per user per example already) with both caps applied; counts what each dropped."""
    n = rows.num_rows
    keep = np.ones(n, dtype=bool)
    if user_keep and n:
        fraction = np.array([user_keep.get(u, (1.0, 1.0))[up] for u, up in
                             zip(rows.column("_user").to_pylist(), rows.column("desirable").to_pylist())])
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
