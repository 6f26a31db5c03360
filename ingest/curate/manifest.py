"""A snapshot that proves itself: its manifest, and the checks that its files say what its stats say.

    from ingest.curate.manifest import verify_snapshot
    problems = verify_snapshot("snapshots/3f2a9c0d1e4b5a6f")   # [] when the snapshot is whole

`curate` runs the same checks on its work folder before the rename that publishes a snapshot, so a
runner that loses or adds data (a dropped file, an empty shard, a leftover temp folder, a lost count)
stops the run instead of publishing. What the files determine is re-read from them, not taken from
the runner: rows per split and class, the class counts and weights in stats.json, and the count
arithmetic (events in = events out + everything removed or dropped). `manifest.json` lists every
data file with its size, sha256, rows and thumbs-ups and stats.json carries the sha256 of the manifest
and of itself (`ingest/curate/snapshot.py` writes and checks that proof on every read), so `thumbs curate
--verify-only` can later tell a published snapshot from one a disk or a hand has changed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ingest.curate import snapshot as layout
from ingest.curate.balance import InsufficientData, class_weights
from ingest.curate.vote_caps import CAP_COUNTS


def check_stats(stats: dict, entries: list[dict], events_in: int | None = None) -> list[str]:
    """Differences between what the files hold and what stats.json (and the input's row count) claim."""
    counts = stats.get("counts") if isinstance(stats.get("counts"), dict) else {}  # a hand may have edited it
    problems = []

    def expect(what: str, claimed, actual) -> None:
        if claimed != actual:
            problems.append(f"{what}: stats say {claimed}, the files say {actual}")

    for name, split in (("train", layout.TRAIN), ("eval", layout.EVAL)):  # curation's count names, the folders
        files = [e for e in entries if e["path"].startswith(f"{split}/")]
        rows, good = sum(e["rows"] for e in files), sum(e["desirable"] for e in files)
        expect(f"{name} rows", counts.get(name), rows)
        expect(f"{name} desirable rows", counts.get(f"{name}_desirable"), good)
        expect(f"{name} undesirable rows", counts.get(f"{name}_undesirable"), rows - good)
    train = [e for e in entries if e["path"].startswith(f"{layout.TRAIN}/")]
    train_good, train_rows = sum(e["desirable"] for e in train), sum(e["rows"] for e in train)
    expect("n_desirable", stats.get("n_desirable"), train_good)
    expect("n_undesirable", stats.get("n_undesirable"), train_rows - train_good)
    problems += _check_weights(stats, train_good, train_rows - train_good)
    problems += _check_arithmetic(counts, events_in)
    return problems


def _check_weights(stats: dict, n_good: int, n_bad: int) -> list[str]:
    config = stats.get("config") if isinstance(stats.get("config"), dict) else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weights = class_weights(n_good, n_bad, target=config.get("balance_target", 1.0),
                                    min_per_class=config.get("min_per_class", 1))
    except InsufficientData as err:
        return [f"class counts in the files cannot be trained on: {err}"]
    except (TypeError, ValueError) as err:  # an edited config in stats.json
        return [f"config in stats.json cannot give the class weights: {err}"]
    problems = []
    for name, value in (("desirable_weight", weights.desirable_weight),
                        ("undesirable_weight", weights.undesirable_weight), ("balance_ratio", weights.ratio),
                        ("balance_in_band", weights.in_band)):
        if stats.get(name) != value:
            problems.append(f"{name}: stats say {stats.get(name)}, the files' class counts give {value}")
    return problems


def _check_arithmetic(counts: dict, events_in: int | None) -> list[str]:
    """Every stage's count adds up: a runner that lost a bucket's counts (or rows) breaks one of these."""
    c = counts
    capped = sum(c.get(k, 0) for k in CAP_COUNTS)  # votes the poisoning caps dropped (ingest/curate/vote_caps.py)
    dropped = sum(v for k, v in c.items() if k.startswith("dropped_")) - capped
    rules = [
        ("events_in", events_in, c.get("events_in")),
        ("votes = events_in - duplicates - superseded - capped",
         c.get("events_in", 0) - c.get("removed_duplicate_event_id", 0) - c.get("removed_superseded_vote", 0)
         - capped,
         c.get("votes")),
        ("examples = votes - merged", c.get("votes", 0) - c.get("removed_merged_into_example", 0), c.get("examples")),
        ("examples = train + eval + dropped", c.get("train", 0) + c.get("eval", 0) + dropped, c.get("examples")),
    ]
    return [f"counts do not add up ({rule}): expected {want}, got {got}"
            for rule, want, got in rules if want is not None and want != got]


def verify_snapshot(path: str | Path) -> list[str]:
    """Every way a published snapshot differs from its proof, its manifest and its stats; [] when it is whole.

    The proof (stats.json's own sha256 and manifest.json's, `ingest/curate/snapshot.py`) first; then what the files
    hold against what stats.json claims. The same function checks a snapshot downloaded from a store
    (`ingest/remote.py`), so a remote copy is held to the same proof."""
    folder = Path(path)
    if not layout.stats_path(folder).exists():
        return [f"{folder} has no {layout.STATS}: not a `thumbs curate` snapshot (or not a finished one)"]
    stats, problems = layout.audit(folder)
    try:
        manifest = json.loads(layout.manifest_path(folder).read_text())
    except (OSError, ValueError):
        manifest = None
    if stats is None or layout.PROOF not in stats or not isinstance(manifest, dict):
        return problems  # nothing more can be checked against it: rebuild (the problems say so)
    if manifest.get("snapshot_id") != stats.get("snapshot_id") or folder.name != stats.get("snapshot_id"):
        problems.append(f"snapshot id: folder {folder.name}, stats {stats.get('snapshot_id')}, "
                        f"manifest {manifest.get('snapshot_id')}")
    entries, _ = layout.describe_files(folder)
    listed = {e["path"]: e for e in manifest.get("files", [])}
    for entry in entries:
        for field in ("rows", "desirable"):
            if entry["path"] in listed and listed[entry["path"]].get(field) != entry[field]:
                problems.append(f"{entry['path']}: {field} is {entry[field]}, the manifest says "
                                f"{listed[entry['path']].get(field)}")
    return problems + check_stats(stats, entries, manifest.get("events_in"))
