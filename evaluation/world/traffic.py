"""A simulated day of traffic (questions, answers, clicks, the events file) and the ground truth.

Ground truth (`ground_truth`): the judge's acceptance rate, without noise, of answers to questions
about HELD_OUT_TASKS, which never appear in the stream, so no night trains on them; answers are
sampled at temperature 1 (what users get, not the model's single most likely answer) with the same
seed every night, so nights differ by the policy only.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common.atomic import write_text_atomic
from evaluation.world.serving import answer
from evaluation.world.taste import day_prompts, fresh_prompts, messages, rate, satisfied

START = datetime(2026, 11, 20, tzinfo=timezone.utc)  # day 0 of the simulated deployment


def write_events(path: str | os.PathLike, day: int, prompts: list[str], completions: list[str],
                 labels: list[bool], model_version: str, seed: int, n_users: int = 60) -> Path:
    """The day's feedback as thumbs events JSONL (the README's format), spread over the day, atomically."""
    rng = random.Random(f"events/{seed}/{day}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    day_start = START + timedelta(days=day)
    lines = []
    for i, (p, c, up) in enumerate(zip(prompts, completions, labels)):
        if not c:  # an empty answer gets no thumbs (ingest would quarantine it as empty_completion)
            continue
        moment = day_start + timedelta(seconds=int(86_400 * (i + rng.random()) / len(prompts)))
        lines.append(json.dumps({
            "event_id": f"e-{seed}-{day}-{i}", "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "user_id": f"u-{rng.randrange(n_users)}", "conversation_id": f"c-{seed}-{day}-{i}",
            "model_version": model_version, "prompt": messages(p), "completion": c,
            "label": "up" if up else "down"}))
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


@dataclass
class Day:
    """One simulated day of traffic: what was asked, answered and clicked, and its events file."""
    day: int
    events: Path
    prompts: list
    completions: list
    labels: list  # True = thumbs-up
    satisfaction: float  # the day's true (noise-free) satisfaction: for the narration, never for training


def simulate_day(model, tokenizer, day: int, n: int, seed: int, log_dir: str | os.PathLike, model_version: str,
                 noise: float = 0.1) -> Day:
    """Serve `n` of the day's questions, let the users click, write `log_dir/day-<day>.jsonl`."""
    prompts = day_prompts(day, n, seed)
    completions = answer(model, tokenizer, prompts, seed=1000 * seed + day)
    labels = rate(prompts, completions, noise, seed=1000 * seed + day)
    path = write_events(Path(log_dir) / f"day-{day}.jsonl", day, prompts, completions, labels, model_version, seed)
    return Day(day, path, prompts, completions, labels, sum(map(satisfied, prompts, completions)) / n)


@dataclass
class Truth:
    """The ground truth of a policy: its noise-free satisfaction, and the held-out answers it was judged on."""
    rate: float
    samples: list  # (question, answer, satisfied) per held-out draw


def judge(model, tokenizer, seed: int, n: int = 300) -> Truth:
    """Noise-free satisfaction on `n` held-out questions; the same questions and draws' seed every night."""
    prompts = fresh_prompts(n, seed)
    completions = answer(model, tokenizer, prompts, seed=10_000 + seed)
    verdicts = list(map(satisfied, prompts, completions))
    return Truth(sum(verdicts) / n, list(zip(prompts, completions, verdicts)))


def ground_truth(model, tokenizer, seed: int, n: int = 300) -> float:
    return judge(model, tokenizer, seed, n).rate
