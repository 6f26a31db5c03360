"""The real assistant's world (`make demo`'s default): real requests, the hidden taste, the clicks, the sampler."""

from __future__ import annotations

import json

import pytest
import torch

from evaluation import world
from evaluation.world import assistant
from evaluation.world.serving import _draw


def test_requests_ship_with_the_package_and_a_quarter_is_held_out_from_every_day():
    requests = assistant.requests()
    assert len(requests) == len(set(requests)) == 136 and all(0 < len(r) <= 300 for r in requests)
    held = {r for r in requests if assistant.held_out(r)}
    assert 25 <= len(held) <= 45  # a quarter by hash: 36
    stream = {r for day in range(10) for r in assistant.day_requests(day, 128, seed=0)}
    assert stream and not stream & held
    assert assistant.day_requests(3, 50, seed=0) == assistant.day_requests(3, 50, seed=0)
    assert assistant.day_requests(3, 50, seed=0) != assistant.day_requests(4, 50, seed=0)


@pytest.mark.parametrize("text, finished, liked", [
    ("Try a warm bath and a fixed bedtime.", True, True),
    ("word " * assistant.MAX_WORDS, True, True),
    ("word " * assistant.MIN_WORDS, True, True),
    ("word " * (assistant.MAX_WORDS + 1), True, False),  # complete but long
    ("Try a warm bath and a fixed", False, False),  # cut off at the limit, however short
    ("Crew members.", True, False),  # brief, but no answer
    ("word " * (assistant.MIN_WORDS - 1), True, False),
    ("", True, False),
])
def test_hidden_taste_is_a_brief_complete_answer(text, finished, liked):
    assert assistant.satisfied(text, finished) is liked


def test_clicks_flip_the_verdict_at_the_stated_noise():
    verdicts = [i % 3 == 0 for i in range(6000)]
    assert world.click(verdicts, 0.0, seed=1) == verdicts
    flipped = sum(c != v for c, v in zip(world.click(verdicts, 0.1, seed=1), verdicts)) / len(verdicts)
    assert 0.09 < flipped < 0.11


def test_nucleus_draws_only_from_the_top_p_mass():
    generator = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    counts = torch.bincount(_draw(logits, 1.0, 0.7, generator), minlength=4)
    assert counts[2:].sum() == 0  # 0.5 + 0.3 reach 0.7: the rest is never drawn
    assert 0.58 < counts[0] / counts[:2].sum() < 0.67  # renormalised: 0.5 / 0.8 = 0.625
    counts = torch.bincount(_draw(logits, 1.0, 1.0, generator), minlength=4) / 4000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    assert (_draw(logits, 1.0, 0.1, generator) == 0).all()  # the most likely token always enters the nucleus
    cold = torch.bincount(_draw(logits, 0.25, 1.0, generator), minlength=4) / 4000
    assert cold[0] > 0.8  # temperature sharpens: 0.5^4 / (0.5^4 + 0.3^4 + ...) = 0.88


@pytest.mark.slow
def test_a_day_on_smollm2_is_sampled_rated_and_logged(tmp_path):
    from training.gguf import dequantized
    from evaluation.world import load_policy

    model, tokenizer = load_policy(dequantized(assistant.base()))
    prompts = assistant.day_requests(0, 4, seed=0)
    first = assistant.answer(model, tokenizer, prompts, seed=5)
    assert first == assistant.answer(model, tokenizer, prompts, seed=5)  # the same seed, the same draws
    assert first != assistant.answer(model, tokenizer, prompts, seed=6)
    for text, finished in first:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert text and (len(ids) <= assistant.MAX_NEW_TOKENS + 2 if finished else len(ids) >= assistant.MAX_NEW_TOKENS - 2)
    day = assistant.simulate_day(model, tokenizer, 0, 4, seed=0, log_dir=tmp_path, model_version="base", noise=0.0)
    events = [json.loads(line) for line in day.events.read_text().splitlines()]
    assert [e["prompt"][0]["content"] for e in events] == prompts
    assert [e["label"] == "up" for e in events] == day.labels  # noise 0: clicks are the verdicts
    assert day.satisfaction == sum(day.labels) / 4
