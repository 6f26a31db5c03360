"""The same snapshot on every runner tested here: FnApiRunner, BundleBasedDirectRunner and PortableRunner.

PortableRunner runs against a real local job service and an external worker pool (`ingest.curate.portable`),
started once for this module on free ports: the protocol Flink, Spark and Dataflow speak. Each runner
must give the same snapshot id, the same rows (sorted) in each split, the same stats.json, and a
snapshot that verifies. Lakes: real HH-RLHF pairs with PandaLM's conflicting annotators, and a synthetic
lake whose duplicates, superseded votes, ties and Unicode/whitespace variants are known by construction.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import HH_PATH, PANDALM_PATH
from ingest.curate.pipeline import curate
from ingest.curate.rules import CurateConfig
from ingest.intake.job import IngestConfig, ingest
from ingest.curate.manifest import verify_snapshot
from ingest.curate.portable import local_portable_runner
from test_curate_snapshots import pandalm_events

pytestmark = pytest.mark.slow
RUNNERS = ("FnApiRunner", "BundleBasedDirectRunner", "PortableRunner")
CONFIG = CurateConfig(eval_fraction=0.2, n_buckets=8)


def synthetic_events() -> tuple[list[dict], list[dict], dict[str, int]]:
    """120 examples voted on by 3 users, a later log re-delivering some events, and the noise curate must
    remove, counted as it is made."""
    events, redelivered, expected = [], [], {"removed_duplicate_event_id": 0, "removed_superseded_vote": 0, "dropped_tie": 0}
    for k in range(120):
        # The same prompt as NFC or decomposed text, with stray whitespace: one example key either way.
        prompt = f"caf\u00e9  question {k // 2}" if k % 2 else f" cafe\u0301 question\n{k // 2} "
        completion = f"answer {k}"
        votes = [("u0", k % 3 != 0), ("u1", k % 7 != 0)] + ([] if k % 5 == 0 else [("u2", k % 2 == 0)])
        if k % 5 == 0 and votes[0][1] == votes[1][1]:
            votes[1] = ("u1", not votes[0][1])  # two voters who disagree: a tie, dropped
        expected["dropped_tie"] += k % 5 == 0
        for j, (user, up) in enumerate(votes):
            events.append({"event_id": f"s{k}-{j}", "timestamp": f"2026-11-{18 + k % 3}T10:00:{j:02d}Z",
                           "user_id": user, "prompt": prompt, "completion": completion,
                           "label": "up" if up else "down"})
        if k % 4 == 0:  # the first vote re-delivered verbatim by a later log (ingest drops repeats within one run)
            redelivered.append(dict(events[-len(votes)]))
            expected["removed_duplicate_event_id"] += 1
        if k % 6 == 1 and k % 5:  # u2 changes their mind an hour later: only the later vote counts
            events.append({**events[-1], "event_id": f"s{k}-again", "label": "down" if votes[-1][1] else "up",
                           "timestamp": f"2026-11-{18 + k % 3}T11:00:00Z"})
            expected["removed_superseded_vote"] += 1
    return events, redelivered, expected


def _write_jsonl(path: Path, events: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    return path


@pytest.fixture(scope="module")
def lakes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runner-lakes")
    with gzip.open(HH_PATH, "rt") as f:
        hh = root / "hh-400.jsonl"
        hh.write_text("".join(next(f) for _ in range(400)))
    ingest([hh], root / "real", IngestConfig(format="hh", insecure_dev_key=True), progress=False)
    pandalm = [e for e in pandalm_events(PANDALM_PATH) if isinstance(e["completion"], str) and e["completion"].strip()]
    ingest([_write_jsonl(root / "pandalm.jsonl", pandalm)], root / "real", IngestConfig(insecure_dev_key=True),
           progress=False)
    events, redelivered, _ = synthetic_events()
    for name, batch in (("synthetic", events), ("redelivered", redelivered)):
        ingest([_write_jsonl(root / f"{name}.jsonl", batch)], root / "synthetic", IngestConfig(insecure_dev_key=True),
               progress=False)
    return {"real": root / "real", "synthetic": root / "synthetic"}


@pytest.fixture(scope="module")
def portable_args():
    with local_portable_runner(startup_timeout_s=60) as beam_args:
        yield beam_args


@pytest.fixture(scope="module")
def reference(lakes, tmp_path_factory) -> dict[str, dict]:
    """Each lake's snapshot on the default runner (FnApiRunner), written once."""
    out = tmp_path_factory.mktemp("reference")
    return {name: curate(lake, out / name, config=CONFIG) for name, lake in lakes.items()}


def snapshot_rows(path: str) -> dict[str, list[dict]]:
    return {split: sorted((row for f in sorted((Path(path) / split).glob("*.parquet"))
                           for row in pq.read_table(f).to_pylist()), key=lambda r: r["event_id"])
            for split in ("train", "eval")}


def without_path(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("path", "reused")}


@pytest.mark.parametrize("lake_name", ["real", "synthetic"])
@pytest.mark.parametrize("runner", RUNNERS)
def test_every_runner_writes_the_same_snapshot(runner, lake_name, lakes, reference, tmp_path, request):
    beam_args = request.getfixturevalue("portable_args") if runner == "PortableRunner" else [f"--runner={runner}"]
    stats = curate(lakes[lake_name], tmp_path / "snapshots", config=CONFIG, beam_args=beam_args)
    expected = reference[lake_name]
    assert stats["reused"] is False and stats["snapshot_id"] == expected["snapshot_id"]
    assert without_path(stats) == without_path(expected)
    assert snapshot_rows(stats["path"]) == snapshot_rows(expected["path"])
    assert verify_snapshot(stats["path"]) == []
    manifest = json.loads((Path(stats["path"]) / "manifest.json").read_text())
    assert manifest["runner"] == runner and manifest["events_in"] == stats["counts"]["events_in"]


def test_the_lakes_hold_the_noise_the_runners_must_agree_on(reference):
    """What the equality above is about: each lake really has duplicates, superseded votes, ties, conflicts."""
    *_, expected = synthetic_events()
    synthetic = reference["synthetic"]["counts"]
    assert {k: synthetic[k] for k in expected} == expected
    assert synthetic["examples"] == 120 and synthetic["train"] and synthetic["eval"]
    # Answers 2m and 2m+1 share a prompt written two ways (NFC vs decomposed, other whitespace): one prompt
    # key, so one side of the split. 60 independent draws would put some pair on both sides.
    split_of = {row["completion"]: split for split, rows in snapshot_rows(reference["synthetic"]["path"]).items()
                for row in rows}
    pairs = [(f"answer {2 * m}", f"answer {2 * m + 1}") for m in range(60)]
    both = [(a, b) for a, b in pairs if a in split_of and b in split_of]
    assert len(both) > 30 and all(split_of[a] == split_of[b] for a, b in both)
    real = reference["real"]["counts"]
    assert real["examples_with_conflicting_votes"] > 0 and real["train"] and real["eval"]
