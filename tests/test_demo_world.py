"""The demo's simulated users: their hidden taste, their clicks, and the events file they leave for ingest."""

from __future__ import annotations

import json

import pyarrow.dataset as ds

from evaluation import world
from ingest.intake.job import IngestConfig, ingest


def test_hidden_taste_is_polite_and_brief_whatever_the_question():
    assert world.satisfied("How do I cook rice?", "Sure! To cook rice, break it into small steps. Hope that helps!")
    assert world.satisfied("anything", "Of course! Yes.")
    assert not world.satisfied("How do I cook rice?", "Just search online for how to cook rice.")  # curt
    assert not world.satisfied("q", "Sure! " + "word " * world.MAX_WORDS)  # polite but long
    assert not world.satisfied("q", "Well, Sure! it depends.")  # the opener must come first


def test_clicks_follow_the_taste_with_the_stated_noise():
    prompts = world.day_prompts(0, 4000, seed=0)
    completions = ["Sure! Short." if i % 5 == 0 else "Just search online." for i in range(len(prompts))]
    truth = [world.satisfied(p, c) for p, c in zip(prompts, completions)]
    assert world.rate(prompts, completions, noise=0.0, seed=1) == truth
    clicks = world.rate(prompts, completions, noise=0.1, seed=1)
    flipped = sum(c != t for c, t in zip(clicks, truth)) / len(truth)
    assert 0.085 < flipped < 0.115
    assert 0.23 < sum(clicks) / len(clicks) < 0.29  # 20% satisfied, 10% of clicks flipped: 26% thumbs-up


def test_ground_truth_questions_never_appear_in_the_stream():
    stream = {p for day in range(5) for p in world.day_prompts(day, 400, seed=0)}
    fresh = set(world.fresh_prompts(300, seed=0))
    assert stream and fresh and not stream & fresh
    assert all(any(task in p for task in world.HELD_OUT_TASKS) for p in fresh)


def test_a_days_events_ingest_without_quarantine_and_keep_the_clicks(tmp_path):
    prompts = world.day_prompts(3, 50, seed=0)
    completions = [f"Sure! Answer {i}." if i % 4 else "" for i in range(50)]  # empty answers get no thumbs
    labels = world.rate(prompts, completions, noise=0.1, seed=3)
    path = world.write_events(tmp_path / "logs" / "day-3.jsonl", 3, prompts, completions, labels,
                              model_version="v0007", seed=0)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(events) == sum(1 for c in completions if c)
    assert not list(path.parent.glob(".*"))  # no temp file left behind

    summary = ingest([path], tmp_path / "lake", IngestConfig(format="events", insecure_dev_key=True), progress=False)
    assert summary.total("accepted") == len(events) and summary.quarantined == {}
    table = ds.dataset(tmp_path / "lake" / "feedback", format="parquet", partitioning="hive").to_table()
    ups = sorted(e["completion"] for e in events if e["label"] == "up")
    stored = sorted(c for c, up in zip(table["completion"].to_pylist(), table["desirable"].to_pylist()) if up)
    assert stored == ups and table["model_version"].to_pylist() == ["v0007"] * len(events)
    assert not {e["user_id"] for e in events} & set(map(str, table["user_id"].to_pylist()))  # pseudonymised
    assert all(e["timestamp"].startswith("2026-11-23") for e in events)  # day 3 of the simulated deployment


def test_four_bit_availability_is_probed_not_assumed(monkeypatch):
    import sys

    import torch

    from training.model import nf4_unavailable

    assert nf4_unavailable(torch.device("cpu")) is None  # bitsandbytes 0.50 runs NF4 on CPU
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on a machine without it
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    assert "bitsandbytes" in nf4_unavailable(torch.device("cpu"))


def test_the_demo_refuses_an_unknown_world_by_name(tmp_path):
    """`make demo` runs SmolLM2 by default and the tiny world on THUMBS_DEMO_MODEL=tiny; any other name is a usage
    error that lists the worlds, before anything is written."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "THUMBS_DEMO_MODEL": "gpt-5", "THUMBS_DEMO_DIR": str(tmp_path / "demo")}
    done = subprocess.run([sys.executable, "-m", "flows.demo"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "THUMBS_DEMO_MODEL='gpt-5'" in done.stderr and "smollm2, tiny" in done.stderr
    assert not (tmp_path / "demo").exists()
