"""Curate throughput: the Beam job against the same dedupe, votes and counts in plain pyarrow.

    python benchmarks/curate.py [--events 1000000] [--record]

The lake is generated straight into Parquet with realistic noise: 400k examples (200k prompts with
two answers each) rated by 50k users; 5% of events are exact re-deliveries (same event_id), 10% are
a user voting again on the same answer, and 20% of votes disagree with the example's majority.
The floor runs `ingest.curation.add_keys` + `resolve` on the whole table in one process (no Beam,
no shuffle, no writes). The Beam job is `ingest.curate.curate` with its default local runner
(FnApiRunner, in-process) and with `--direct_running_mode=multi_processing --direct_num_workers=2`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import record, timing_table  # noqa: E402
from ingest.curate import curate  # noqa: E402
from ingest.curation import CurateConfig, add_keys, resolve  # noqa: E402
from ingest.lake import feedback_dataset  # noqa: E402
from ingest.schema import FEEDBACK_SCHEMA, MESSAGE_TYPE  # noqa: E402


def generate_lake(lake: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_examples, n_users = max(n * 2 // 5, 2), 50_000
    unique = int(n * 0.85)
    example = rng.integers(0, n_examples, unique)
    user = rng.integers(0, n_users, unique)
    truth = (np.arange(n_examples) % 5 == 0)  # 1 thumbs-up per 4 thumbs-down, as in production
    vote = truth[example] ^ (rng.random(unique) < 0.2)
    # 10% of users vote again on the same answer, later; 5% of all events are re-delivered verbatim.
    again = rng.random(unique) < 0.10
    example = np.concatenate([example, example[again]])
    user = np.concatenate([user, user[again]])
    vote = np.concatenate([vote, ~vote[again]])
    ids = np.arange(len(example))
    redelivered = rng.integers(0, len(example), n - len(example))
    example, user, vote, ids = (np.concatenate([a, a[redelivered]]) for a in (example, user, vote, ids))
    seconds = (ids * 7) % (3 * 86_400)
    t0 = datetime(2026, 11, 18, tzinfo=timezone.utc).timestamp()
    prompt_text = pa.array([f"prompt {e // 2}: how do I do thing {e // 2 % 997} in python?" for e in example])
    prompts = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), pa.StructArray.from_arrays(
        [pa.array(["user"] * n), prompt_text], fields=list(MESSAGE_TYPE)))
    table = pa.Table.from_arrays([
        pa.array([f"e-{i}" for i in ids]),
        pa.array((t0 + seconds) * 1e6, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array([f"{u:032x}" for u in user]), pa.nulls(n, pa.string()), pa.array(["prod-v3"] * n),
        prompts, pa.array([f"answer {e % 2} to prompt {e // 2}: use a loop and a dict." for e in example]),
        pa.array(vote), pa.nulls(n, pa.string()), pa.array(["bench.jsonl"] * n), pa.array(ids + 1),
    ], schema=FEEDBACK_SCHEMA)
    days = (seconds // 86_400).astype(int)
    for d in np.unique(days):
        part = lake / "feedback" / f"date=2026-11-{18 + d}"
        part.mkdir(parents=True)
        pq.write_table(table.filter(pa.array(days == d)), part / "part-bench.parquet", compression="zstd",
                       row_group_size=65_536)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    args = parser.parse_args()
    config = CurateConfig()
    with tempfile.TemporaryDirectory() as tmp:
        lake = Path(tmp) / "lake"
        generate_lake(lake, args.events)

        t0 = time.perf_counter()
        _, _, floor_counts = resolve(add_keys(feedback_dataset(lake).to_table(), 1), config)
        floor_s = time.perf_counter() - t0

        results = [("pyarrow floor (one process, no writes)", floor_s, floor_counts)]
        for name, beam_args in (("Beam, FnApiRunner in-process (default)", []),
                                ("Beam, FnApiRunner multi_processing x2",
                                 ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])):
            out = Path(tmp) / "snapshots"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            stats = curate(lake, out, config=config, beam_args=beam_args)
            results.append((name, time.perf_counter() - t0, stats["counts"]))

    counts = results[0][2]
    for name, _, c in results[1:]:
        assert c == counts, f"{name} disagrees with the floor: {c} vs {counts}"
    table_md = timing_table(args.events, [(name, s) for name, s, _ in results])
    noise = (f"{counts['removed_duplicate_event_id']:,} re-delivered, {counts['removed_superseded_vote']:,} "
             f"superseded votes, {counts['examples']:,} examples, {counts['examples_with_conflicting_votes']:,} "
             f"with conflicting votes, {counts['dropped_tie']:,} ties dropped")
    print(f"{args.events:,} events: {noise}\n{table_md}")
    if args.record:
        record("curate", f"python benchmarks/curate.py --events {args.events}",
               f"{noise}. All three agree on every count.", table_md)

if __name__ == "__main__":
    main()
