"""Curate throughput and peak memory: the Beam job against two floors, DuckDB and plain pyarrow.

    python benchmarks/curate.py [--events 1000000] [--record]

The lake is generated straight into Parquet with realistic noise: 400k examples (200k prompts with
two answers each) rated by 50k users; 5% of events are exact re-deliveries (same event_id), 10% are
a user voting again on the same answer, and 20% of votes disagree with the example's majority.
Each contender runs in its own child process (this script with --one), so its peak RSS is its own:
sampled every 50 ms over the child and every process it starts, summed.
- DuckDB: the same semantics as one SQL query over the lake's Parquet (`benchmarks/curate_duckdb.py`;
  the split hash is a Python UDF, the rest native), counts only, no writes; at 2 threads and 1.
- pyarrow floor: `ingest.curate.rules.add_keys` + `resolve` on the whole table in one process (no Beam,
  no shuffle, no writes).
- Beam in-process: `ingest.curate.pipeline.curate` on its default runner, FnApiRunner, including the writes,
  the re-read that proves the snapshot and the manifest.
- Beam portable: the same on PortableRunner against a local job service and an external worker pool
  (`ingest.curate.portable`); the services start before the clock, their and the workers' memory counts.
All must agree on every count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import psutil  # noqa: E402

from benchmarks.report import record  # noqa: E402
from ingest.curate.pipeline import curate, partition_files  # noqa: E402
from ingest.curate.rules import CurateConfig, add_keys, resolve  # noqa: E402
from ingest import lake as lake_files  # noqa: E402
from ingest.lake import feedback_dataset  # noqa: E402
from ingest.privacy import INSECURE_DEV_KEY  # noqa: E402
from ingest.curate.portable import local_portable_runner  # noqa: E402
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
    # Committed as ingest commits a source (readers take only files a source's record lists, checked against it):
    # its date partitions and its record, under its claim, pseudonymised under the dev key's fingerprint.
    sha = hashlib.sha256(f"benchmarks/curate.py {n} events, seed {seed}".encode()).hexdigest()
    fingerprint = lake_files.key_fingerprint(INSECURE_DEV_KEY.encode("utf-8"))
    with lake_files.claim(lake, sha, fingerprint):
        writer = lake_files.SourceWriter(lake, sha)
        for start in range(0, n, 65_536):  # one row group per write, as ingest writes its flushes
            writer.write_rows(table.slice(start, 65_536))
        writer.commit({"source": "bench.jsonl", "sha256": sha, "lines": n, "accepted": n,
                       "desirable": int(vote.sum()), "undesirable": int(n - vote.sum())})


CONTENDERS = {
    "duckdb": "DuckDB, one query, 2 threads (no writes)",
    "duckdb1": "DuckDB, one query, 1 thread (no writes)",
    "pyarrow": "pyarrow floor, one process (no writes)",
    "beam": "Beam, FnApiRunner in-process (default)",
    "portable": "Beam, PortableRunner + worker pool",
}


def run_one(method: str, lake: Path, out: Path) -> dict:
    """One contender, timed, in this process: its counts and seconds."""
    config = CurateConfig()
    if method.startswith("duckdb"):
        from benchmarks.curate_duckdb import duckdb_counts

        files = [str(f) for f in partition_files(lake, None, None)]
        t0 = time.perf_counter()
        counts = duckdb_counts(files, config, threads=1 if method == "duckdb1" else 2)
    elif method == "pyarrow":
        t0 = time.perf_counter()
        _, _, counts = resolve(add_keys(feedback_dataset(lake).to_table(), 1), config)
    elif method == "beam":
        t0 = time.perf_counter()
        counts = curate(lake, out, config=config)["counts"]
    else:
        with local_portable_runner() as beam_args:
            t0 = time.perf_counter()
            counts = curate(lake, out, config=config, beam_args=beam_args)["counts"]
            return {"seconds": time.perf_counter() - t0, "counts": counts}
    return {"seconds": time.perf_counter() - t0, "counts": counts}


def measure(method: str, lake: Path, out: Path) -> dict:
    """Run a contender in a child process; its result with the peak RSS of its process tree."""
    proc = subprocess.Popen([sys.executable, __file__, "--one", method, "--lake", str(lake), "--out", str(out)],
                            stdout=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass  # a worker ended between listing and reading: the next sample counts the rest
        time.sleep(0.05)
    stdout = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"{method} failed with exit code {proc.returncode}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss": peak}


def table(n_events: int, results: dict[str, dict]) -> str:
    """Seconds, events/s, x DuckDB (2 threads) and peak RSS per contender."""
    floor = results["duckdb"]["seconds"]
    lines = ["| what | seconds | events/s | x DuckDB | peak RSS GB |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {CONTENDERS[m]} | {r['seconds']:.2f} | {n_events / r['seconds']:,.0f} | {r['seconds'] / floor:.2f}x "
              f"| {r['peak_rss'] / 2**30:.2f} |" for m, r in results.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    parser.add_argument("--note", default="", help="a sentence for BENCHMARKS.md (e.g. what else shared the CPU)")
    parser.add_argument("--one", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.lake, args.out)))
        return
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        lake = Path(tmp) / "lake"
        generate_lake(lake, args.events)
        results = {}
        for method in CONTENDERS:
            shutil.rmtree(Path(tmp) / "snapshots", ignore_errors=True)
            results[method] = measure(method, lake, Path(tmp) / "snapshots")
            print(f"{CONTENDERS[method]}: {results[method]['seconds']:.1f} s, "
                  f"{results[method]['peak_rss'] / 2**30:.2f} GB", file=sys.stderr, flush=True)

    counts = results["beam"]["counts"]
    for method, r in results.items():
        assert r["counts"] == counts, f"{method} disagrees with Beam: {r['counts']} vs {counts}"
    table_md = table(args.events, results)
    noise = (f"{counts['removed_duplicate_event_id']:,} re-delivered, {counts['removed_superseded_vote']:,} "
             f"superseded votes, {counts['examples']:,} examples, {counts['examples_with_conflicting_votes']:,} "
             f"with conflicting votes, {counts['dropped_tie']:,} ties dropped, {counts['train']:,} train / "
             f"{counts['eval']:,} eval")
    ratio = results["beam"]["seconds"] / results["duckdb"]["seconds"]
    load = (f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            f"on {os.cpu_count()} cores")
    summary = (f"Beam in-process / DuckDB (2 threads): **{ratio:.2f}x**; one of 64 buckets holds "
               f"~{args.events // 64:,} events.")
    print(f"{args.events:,} events: {noise}\n{table_md}\n{summary}")
    if args.record:
        record("curate", f"python benchmarks/curate.py --events {args.events}",
               f"{noise}. All five agree on every count; {load}. {args.note}".strip(), f"{table_md}\n\n{summary}")


if __name__ == "__main__":
    main()
