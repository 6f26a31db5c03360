"""The worlds the lab runs its arms in: the same nights, two kinds of users and models.

- `tiny` (the default): the 2-layer GPT-2 of `evaluation/world/` built here, questions about tasks, users who like a
  polite opener and a short answer. An arm over 3 seeds takes minutes on the CPU.
- `assistant`: SmolLM2-135M-Instruct (the GGUF `make` installs, dequantised) answering real user requests, users
  who like brief, complete answers (`evaluation/world/assistant.py`, the demo's world). Minutes a night on the
  CPU, seconds on a GPU: `benchmarks/gpu.sh --smollm2` runs the key arms there.

Each gives the lab what a night needs: the base model's folder, the day's and the held-out prompts, and answers
served with the hidden taste's verdict on each (the lab's users click on the verdicts, with the variant's noise).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class LabWorld:
    name: str
    train: dict
    """The world's KTO settings (learning rate, β, epochs, lengths): what moves its model within a night."""
    base: Callable[[Path, int | None], Path]
    """(lab folder, warm-start steps or None) -> the base model's folder."""
    serve: Callable[..., list[tuple[str, bool]]]
    """(model, tokenizer, prompts, seed) -> (answer as the user sees it, whether the hidden taste likes it)."""
    day_prompts: Callable[[int, int, int], list[str]]
    """(day, n, seed) -> the day's prompts, from the stream only."""
    held_out: Callable[[int, int], list[str]]
    """(n, seed) -> prompts the stream never asks, for the ground truth."""
    adversary_prompts: Callable[[int, int, int], list[str]]
    """(day, n, seed) -> what the adversaries ask in their own conversations that day (stream topics)."""


def _tiny_base(out: Path, base_steps: int | None) -> Path:
    from evaluation import world

    config = world.WorldConfig() if base_steps is None else world.WorldConfig(sft_steps=base_steps)
    return world.build_base(out / "base", config)


def _tiny_serve(model, tokenizer, prompts: list[str], seed: int) -> list[tuple[str, bool]]:
    from evaluation import world

    answers = world.answer(model, tokenizer, prompts, seed=seed)
    return [(a, world.satisfied(p, a)) for p, a in zip(prompts, answers)]


def _tiny_day(day: int, n: int, seed: int) -> list[str]:
    from evaluation import world

    return world.day_prompts(day, n, seed)


def _tiny_held_out(n: int, seed: int) -> list[str]:
    from evaluation import world

    return world.fresh_prompts(n, seed)


def _tiny_adversary(day: int, n: int, seed: int) -> list[str]:
    from evaluation import world

    rng = random.Random(f"adversary/{seed}/{day}")
    return [world.question(rng.choice(world.TASKS), rng) for _ in range(n)]


def _assistant_base(out: Path, base_steps: int | None) -> Path:
    from evaluation.world import assistant
    from training.gguf import dequantized

    return dequantized(assistant.base())  # a real pretrained model: nothing to warm-start (base_steps unused)


def _assistant_serve(model, tokenizer, prompts: list[str], seed: int) -> list[tuple[str, bool]]:
    from evaluation.world import assistant

    return [(text, assistant.satisfied(text, finished))
            for text, finished in assistant.answer(model, tokenizer, prompts, seed=seed)]


def _assistant_day(day: int, n: int, seed: int) -> list[str]:
    from evaluation.world import assistant

    return assistant.day_requests(day, n, seed)


def _assistant_adversary(day: int, n: int, seed: int) -> list[str]:
    from evaluation.world import assistant

    return assistant.day_requests(day, n, 77_000 + seed)  # other draws from the stream than the honest users'


def _assistant_held_out(n: int, seed: int) -> list[str]:
    """The held-out requests in their fixed order, repeated to `n` (each draw of one request samples anew)."""
    from evaluation.world import assistant

    held = [r for r in assistant.requests() if assistant.held_out(r)]
    return [held[i % len(held)] for i in range(n)]


def _assistant_train() -> dict:
    from evaluation.world import assistant

    return dict(assistant.TRAIN_SETTINGS)


def _tiny_train() -> dict:
    from evaluation.world.base import TRAIN_SETTINGS

    return dict(TRAIN_SETTINGS)


def lab_world(name: str) -> LabWorld:
    """The world named `name` (`tiny` or `assistant`)."""
    if name == "tiny":
        return LabWorld("tiny", _tiny_train(), _tiny_base, _tiny_serve, _tiny_day, _tiny_held_out, _tiny_adversary)
    if name == "assistant":
        return LabWorld("assistant", _assistant_train(), _assistant_base, _assistant_serve, _assistant_day,
                        _assistant_held_out, _assistant_adversary)
    raise ValueError(f"unknown world {name!r}; choose from {', '.join(WORLDS)}")


WORLDS = ("tiny", "assistant")
