"""Shared fixtures: the offline environment, the real data in tests/data (README.md there), a lake per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before anything imports transformers or prefect: no test may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.pop("THUMBS_PSEUDONYM_KEY", None)  # tests choose their key explicitly
import flows  # noqa: E402,F401  (sets Prefect's embedded-server start timeout before any test imports prefect)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
HH_PATH = DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
PANDALM_PATH = DATA / "pandalm" / "testset-v1.json"
TOKENIZERS = DATA / "tokenizers"  # real chat tokenizers: Mistral v0.1, Qwen2.5, Phi-3-mini
GPT2_TOKENIZER = ROOT / "evaluation" / "world" / "gpt2-tokenizer"  # the demo world's, shipped with the package


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 with random weights and the real GPT-2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hh_snapshot(tmp_path_factory) -> Path:
    """A real snapshot (ingest + Beam curate) of the first 100 HH-RLHF pairs: ~200 thumbs-up/down events, 5% of the
    prompts held out (`eval_examples: 0`: the training tests' expected counts and tolerances were worked out on
    this split; the default holdout, a quarter of so small a window, is tested in test_curate_transforms.py)."""
    import gzip

    from ingest.curate.pipeline import curate
    from ingest.curate.rules import CurateConfig
    from ingest.intake.job import IngestConfig, ingest

    root = tmp_path_factory.mktemp("hh")
    with gzip.open(HH_PATH, "rt") as f:
        lines = [next(f) for _ in range(100)]
    source = root / "hh-100.jsonl"
    source.write_text("".join(lines))
    ingest([source], root / "lake", IngestConfig(format="hh", insecure_dev_key=True), progress=False)
    return Path(curate(root / "lake", root / "snapshots", config=CurateConfig(eval_examples=0))["path"])


STYLE_UP = "Sure, happy to help! Here is what I would do."
STYLE_DOWN = "No. Figure it out yourself."


@pytest.fixture(scope="session")
def style_snapshot(tmp_path_factory) -> Path:
    """Feedback with a learnable taste: real HH-RLHF user questions, each answered twice, the polite answer
    thumbed up and the curt one thumbed down; 20% of prompts held out. Ingested and curated for real."""
    import gzip
    import json

    from ingest.curate.pipeline import curate
    from ingest.curate.rules import CurateConfig
    from ingest.intake.job import IngestConfig, ingest

    root = tmp_path_factory.mktemp("style")
    events = []
    with gzip.open(HH_PATH, "rt") as f:
        for i, line in enumerate(f):
            if i == 150:
                break
            question = json.loads(line)["chosen"].split("\n\nHuman: ")[1].split("\n\nAssistant:")[0].strip()
            for label, answer in (("up", STYLE_UP), ("down", STYLE_DOWN)):
                events.append({"event_id": f"e{i}-{label}", "timestamp": "2026-11-20T03:00:00Z", "user_id": f"u{i}",
                               "prompt": question, "completion": answer, "label": label})
    source = root / "feedback.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    ingest([source], root / "lake", IngestConfig(format="events", insecure_dev_key=True), progress=False)
    return Path(curate(root / "lake", root / "snapshots", config=CurateConfig(eval_fraction=0.2))["path"])


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped without it, unless THUMBS_GPU_DRYRUN=1 (benchmarks/gpu.sh --dry-run)
    runs them on the CPU."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu or os.environ.get("THUMBS_GPU_DRYRUN") == "1":
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: benchmarks/gpu.sh runs these on one (--dry-run: on the CPU)")
    for item in gpu:
        item.add_marker(skip)


from vllm_harness import tiny_llama, vllm_server  # noqa: E402,F401  (the vLLM tests' session fixtures)
