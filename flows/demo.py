"""`make demo`: the pipeline on its embedded defaults, offline, on this machine.

For now the pipeline is its first two stages: the shared HH-RLHF preference pairs (real human data)
are ingested into a local lake (.demo/lake), then curated on Apache Beam into a train/eval snapshot
with KTO's class weights (.demo/snapshots). Run it twice: the second run skips the source and reuses
the snapshot, since nothing changed. Later stages extend this script.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ingest.curate import curate
from ingest.job import IngestConfig, ingest

SHARED = Path(os.environ.get("THUMBS_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
HH_SOURCE = SHARED / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
DEMO_DIR = Path(os.environ.get("THUMBS_DEMO_DIR", ".demo"))


def main() -> int:
    if not HH_SOURCE.exists():
        print(f"error: demo data not found at {HH_SOURCE}; set THUMBS_SHARED to the shared/ folder", file=sys.stderr)
        return 2
    lake = DEMO_DIR / "lake"
    print(f"thumbs demo: ingesting {HH_SOURCE.name} (HH-RLHF pairs, one thumbs-up and one thumbs-down each)")
    config = IngestConfig(format="hh", insecure_dev_key=True)
    summary = ingest([HH_SOURCE], lake, config)
    print(summary.render())
    print(f"lake: {lake.resolve()}  (feedback/date=*/ Parquet, quarantine/, _sources/)")
    if summary.failed:
        return 1
    print("\nthumbs demo: curating the lake on Apache Beam (dedupe, votes, train/eval split, class weights)")
    stats = curate(lake, DEMO_DIR / "snapshots")
    c = stats["counts"]
    print(f"snapshot {stats['snapshot_id']} ({'reused, nothing changed' if stats['reused'] else 'new'}): "
          f"{c['events_in']:,} events -> {c['examples']:,} examples -> {c['train']:,} train / {c['eval']:,} eval")
    print(f"  train: {stats['n_desirable']:,} desirable / {stats['n_undesirable']:,} undesirable; "
          f"λD={stats['desirable_weight']:.4f} λU={stats['undesirable_weight']:.4f} "
          f"(λD·nD/λU·nU = {stats['balance_ratio']:.3f}, inside [1, 4/3])")
    print(f"  {stats['path']}/{{train,eval}}/*.parquet, stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
