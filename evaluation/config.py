"""EvalConfig: how `thumbs evaluate` (and the nightly's evaluate stage) scores a candidate. Its own module, free
of torch, so the command line and the flow's configuration load it in a blink."""

from __future__ import annotations

from dataclasses import field
from typing import List, Literal

from pydantic import Field

from common.configfile import config


@config
class EvalConfig:
    batch_size: int = Field(16, ge=1)
    """Eval examples per forward pass."""
    resamples: int = Field(1000, ge=10)
    """Bootstrap resamples for the 95% intervals."""
    seed: int = Field(0, ge=0, lt=2**32)
    """Seeds the bootstrap, the choice of generation prompts and sampling."""
    generation_prompts: int = Field(32, ge=0)
    """Eval prompts answered (greedy and sampled) to measure length drift; 0 skips generation."""
    max_new_tokens: int = Field(64, ge=1)
    """Longest generated answer, for length drift and task suites."""
    suites: List[str] = field(default_factory=list)
    """Task-suite JSONL files (see evaluation/suites.py)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the models run: 'auto' (cuda when present), 'cpu' or 'cuda'."""
