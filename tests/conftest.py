"""Shared fixtures: the offline environment, the shared real data, a lake per test."""

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

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("THUMBS_SHARED", ROOT.parent / "shared"))
HH_PATH = SHARED / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
PANDALM_PATH = SHARED / "data" / "pandalm" / "testset-v1.json"
TINY_GPT2 = SHARED / "models" / "tiny-random-gpt2"


@pytest.fixture
def shared() -> Path:
    if not SHARED.exists():
        pytest.fail(f"shared data not found at {SHARED}; set THUMBS_SHARED")
    return SHARED


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"
