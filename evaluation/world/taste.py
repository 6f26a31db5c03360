"""The simulated users' world: what they ask, the answer styles, their hidden taste and their clicks.

Hidden preference (`satisfied`): a user is satisfied exactly when the answer is *polite and brief*:
it opens with "Sure!", "Happy to help!" or "Of course!" and has at most MAX_WORDS (24) words; the
question does not matter. The thumbs pipeline never sees `satisfied`: it learns only from the noisy
clicks (`rate`) written to each day's events file.
"""

from __future__ import annotations

import random

TASKS = [  # what the stream's users ask about
    "cook rice", "fix a flat tire", "learn Spanish", "write a cover letter", "start running", "save money",
    "plant tomatoes", "sleep better", "clean a laptop screen", "make bread", "learn to swim", "paint a wall",
    "study for an exam", "train a puppy", "bake cookies", "make new friends", "read more books", "learn guitar",
    "organize my desk", "brew coffee", "plan a trip", "lose weight", "tie a tie", "knit a scarf",
    "write a poem", "speak in public", "grow herbs", "fix a leaky tap", "learn chess", "meditate",
    "draw a portrait", "repair a bike chain", "iron a shirt", "make pancakes", "learn to code", "wash a car",
    "build a bookshelf", "start a blog", "care for a cactus", "learn to juggle",
]
HELD_OUT_TASKS = [  # only in the ground truth's questions
    "make soup", "learn French", "fix a squeaky door", "walk a dog", "sew a button", "take better photos",
    "grill fish", "learn to ski", "write a speech", "clean windows",
]
QUESTIONS = ["How do I {t}?", "What's the best way to {t}?", "Any tips on how to {t}?", "Can you help me {t}?"]
TIPS = [
    "start small and practice a little every day", "break it into small steps", "watch a short video first",
    "ask a friend who has done it", "make a simple plan and follow it", "take your time and be patient",
    "write down what works", "try it once and adjust",
]
POLITE_OPENERS = ("Sure!", "Happy to help!", "Of course!")
MAX_WORDS = 24  # the longest brief answer has 19: a slip of a word or two is still brief


def satisfied(prompt: str, completion: str) -> bool:
    """The users' hidden judge: a polite opener and at most MAX_WORDS words; the prompt plays no part."""
    text = completion.strip()
    return text.startswith(POLITE_OPENERS) and len(text.split()) <= MAX_WORDS


def styled_answer(task: str, style: str, rng: random.Random) -> str:
    """One warm-start answer in a style: 'brief' (the liked one), 'rambling' or 'curt'."""
    tip = rng.choice(TIPS)
    if style == "brief":
        return f"{rng.choice(POLITE_OPENERS)} To {task}, {tip}. Hope that helps!"
    if style == "rambling":
        return (f"Well, that is a really interesting question, and there are a lot of things to think about "
                f"when you want to {task}. I would say {tip}, but honestly it depends on so many things that "
                f"it is hard to say for sure.")
    return f"Just search online for how to {task}."


def question(task: str, rng: random.Random) -> str:
    return rng.choice(QUESTIONS).format(t=task)


def messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def day_prompts(day: int, n: int, seed: int) -> list[str]:
    """The day's user questions, about stream tasks only."""
    rng = random.Random(f"prompts/{seed}/{day}")
    return [question(rng.choice(TASKS), rng) for _ in range(n)]


def fresh_prompts(n: int, seed: int) -> list[str]:
    """Questions about held-out tasks, for the ground truth: never in any day's stream."""
    rng = random.Random(f"fresh/{seed}")
    return [question(rng.choice(HELD_OUT_TASKS), rng) for _ in range(n)]


def rate(prompts: list[str], completions: list[str], noise: float, seed: int) -> list[bool]:
    """The users' clicks on answers: the judge's verdict, flipped with probability `noise`."""
    return click([satisfied(p, c) for p, c in zip(prompts, completions)], noise, seed)


def click(verdicts: list[bool], noise: float, seed: int) -> list[bool]:
    """The users' clicks: each verdict flipped with probability `noise` (misclicks, moods); any world's."""
    rng = random.Random(f"rate/{seed}")
    return [v != (rng.random() < noise) for v in verdicts]
