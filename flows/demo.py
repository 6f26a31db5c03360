"""`make demo`: the pipeline on its embedded defaults, offline, on this machine.

For now the pipeline is its first stage: the shared HH-RLHF preference pairs (real human data) are
ingested into a local lake (.demo/lake) and the summary printed. Run it twice: the second run skips
the source, since it is already in the lake. Later stages extend this script.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
