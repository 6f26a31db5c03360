"""The simulated world of `make demo` (and of anything that measures the loop end to end, offline on CPU):
a tiny chat model, its users with a hidden taste, their clicks and the ground truth.

    base = build_base(".demo/base")                           # built once, then reused from the folder
    model, tokenizer = load_policy(base, adapter=None)        # night 0 serves the base alone
    day = simulate_day(model, tokenizer, day=0, n=400, seed=0, log_dir=".demo/logs", model_version="base")
    nightly_retrain(params)                                   # flows/demo.py: the production flow
    model, tokenizer = load_policy(base, adapter=".demo/serving")  # tomorrow's answers: the export
    ground_truth(model, tokenizer, seed=0)                    # what users really think, noise-free

Modules, in reading order:
    taste.py    what users ask, the three answer styles, the hidden judge `satisfied`, the noisy clicks `rate`
    base.py     the base model: a 2-layer GPT-2 with the real GPT-2 tokenizer, warm-started on the styles, and
                the KTO settings that move it within a night (TRAIN_SETTINGS: the demo's and the lab's)
    serving.py  the production model answering: `load_policy`, sampled `answer`s
    traffic.py  a day of traffic written as thumbs events JSONL, and the noise-free `ground_truth`
    assistant.py  the real assistant's world (`make demo`'s default): SmolLM2-135M-Instruct answering real
                user requests (requests/, PandaLM's instructions), users who like brief, complete answers
"""

from evaluation.world.base import TRAIN_SETTINGS, WorldConfig, build_base
from evaluation.world.serving import answer, load_policy
from evaluation.world.taste import (HELD_OUT_TASKS, MAX_WORDS, POLITE_OPENERS, QUESTIONS, TASKS, click, day_prompts,
                                    fresh_prompts, messages, question, rate, satisfied, styled_answer)
from evaluation.world.traffic import START, Day, Truth, ground_truth, judge, simulate_day, write_events

__all__ = ["TRAIN_SETTINGS", "WorldConfig", "build_base", "answer", "load_policy", "HELD_OUT_TASKS", "MAX_WORDS", "POLITE_OPENERS",
           "QUESTIONS", "TASKS", "click", "day_prompts", "fresh_prompts", "messages", "question", "rate", "satisfied",
           "styled_answer", "START", "Day", "Truth", "ground_truth", "judge", "simulate_day", "write_events"]
