"""The simulated world of `make demo`: a tiny chat model, its users and their hidden taste, offline on CPU.

    base = build_base(".demo/base")                           # built once, then reused from the folder
    model, tokenizer = load_policy(base, adapter=None)        # night 0 serves the base alone
    day = simulate_day(model, tokenizer, day=0, n=400, seed=0, log_dir=".demo/logs", model_version="base")
    nightly_retrain(params)                                   # flows/demo.py: the production flow
    model, tokenizer = load_policy(base, adapter=".demo/serving")  # tomorrow's answers: the export
    ground_truth(model, tokenizer, seed=0)                    # what users really think, noise-free

The model is a 2-layer GPT-2 (n_embd 64) with the real GPT-2 tokenizer, warm-started by a short
supervised fit on answers in three styles, of which the users like one. The thumbs pipeline never
sees `satisfied`: it learns only from the noisy clicks written to the day's events file.

Hidden preference (`satisfied`): a user is satisfied exactly when the answer is *polite and brief*:
it opens with "Sure!", "Happy to help!" or "Of course!" and has at most MAX_WORDS (24) words; the
question does not matter. The warm-start answers are 12% that style, 50% rambling (long, cut off at
the token limit) and 38% curt ("Just search online for how to ..."), so on night 0 about 1 answer in
7 satisfies and, with 10% of clicks flipped (`rate`), about 1 thumbs-up comes for 4 thumbs-down.

Ground truth (`ground_truth`): the judge's acceptance rate, without noise, of answers to questions
about HELD_OUT_TASKS, which never appear in the stream, so no night trains on them; answers are
sampled at temperature 1 (what users get, not the model's single most likely answer) with the same
seed every night, so nights differ by the policy only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch

from training.data import render

SHARED = Path(os.environ.get("THUMBS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
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
START = datetime(2026, 11, 20, tzinfo=timezone.utc)  # day 0 of the simulated deployment
BASE_VERSION = 1  # bump when the warm-start's code changes: cached bases are keyed by it


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


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def day_prompts(day: int, n: int, seed: int) -> list[str]:
    """The day's user questions, about stream tasks only."""
    rng = random.Random(f"prompts/{seed}/{day}")
    return [question(rng.choice(TASKS), rng) for _ in range(n)]


def fresh_prompts(n: int, seed: int) -> list[str]:
    """Questions about held-out tasks, for the ground truth: never in any day's stream."""
    rng = random.Random(f"fresh/{seed}")
    return [question(rng.choice(HELD_OUT_TASKS), rng) for _ in range(n)]


# --- the base model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorldConfig:
    """The base model and its warm-start; every field is part of the cached base's identity."""
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 2
    style_shares: tuple = (("brief", 0.12), ("rambling", 0.50), ("curt", 0.38))
    """Share of each answer style in the warm-start: the base's habits before any feedback."""
    sft_examples: int = 2000
    sft_steps: int = 1000
    """600-700 steps left the first answer token under-fit on some seeds: word salad, not three styles."""
    sft_batch: int = 32
    sft_lr: float = 3e-3
    seed: int = 0
    tokenizer: str = str(SHARED / "models" / "tiny-random-gpt2")
    """Only its (real GPT-2) tokenizer is used; the weights are built here."""

    def key(self) -> str:
        fields = dict(asdict(self), version=BASE_VERSION, tokenizer=Path(self.tokenizer).name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def build_base(folder: str | os.PathLike, config: WorldConfig = WorldConfig(), log=print) -> Path:
    """The warm-started base in `folder/tiny-gpt2-<config key>`: built once (temp dir + rename), then reused."""
    from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel

    final = Path(folder) / f"tiny-gpt2-{config.key()}"
    if (final / "config.json").exists():
        return final
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
    model_config = AutoConfig.from_pretrained(config.tokenizer)
    model_config.update({"n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
                         "n_positions": 128, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(model_config)
    _warm_start(model, tokenizer, config, log)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    try:
        os.rename(work, final)
    except OSError:  # another run built the same base first: identical, keep theirs
        shutil.rmtree(work)
    return final


def _warm_start(model, tokenizer, config: WorldConfig, log) -> None:
    """Causal-LM loss on answer tokens, with the exact 50,257-way softmax computed over a few hundred classes.

    Tokens that occur nowhere in the world's text start with one shared embedding row u. They are
    never inputs or targets, so in the full softmax they get identical gradients and stay identical:
    it equals a softmax over the world's tokens plus one "other" class with logit h·u + log(n_other),
    given one row's share of that class's gradient. That is exact and ~100x cheaper; u is written back
    to every unused row, so the saved model is a plain GPT-2 whose softmax was always the full one.
    """
    rng = random.Random(f"warm-start/{config.seed}")
    styles, shares = zip(*config.style_shares)
    rows = []
    for _ in range(config.sft_examples):
        task = rng.choice(TASKS)
        prompt, completion, _ = render(_messages(question(task, rng)),
                                       styled_answer(task, rng.choices(styles, shares)[0], rng), tokenizer)
        rows.append((tokenizer(prompt)["input_ids"], tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]))
    texts = [render(_messages(q.format(t=t)), styled_answer(t, s, rng), tokenizer)[:2]
             for t in TASKS + HELD_OUT_TASKS for q in QUESTIONS for s in styles]
    used = sorted({i for pair in texts for text in pair for i in tokenizer(text)["input_ids"]}
                  | {tokenizer.eos_token_id})
    wte = model.transformer.wte.weight  # (V, C), tied with the output head
    unused = torch.ones(len(wte), dtype=torch.bool)
    unused[used] = False
    other = int(unused.nonzero()[0])  # u: the row that stands for all unused tokens
    with torch.no_grad():
        wte[unused] = wte[other].clone()
    classes = torch.tensor(used + [other])
    to_class = torch.full((len(wte),), len(used))
    to_class[classes[:-1]] = torch.arange(len(used))
    n_other = int(unused.sum())
    offset = torch.zeros(len(classes))
    offset[-1] = math.log(n_other)  # n equal logits = one logit + log n

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft_lr, weight_decay=0.0, foreach=True)
    model.train()
    for step in range(config.sft_steps):
        batch = [rows[rng.randrange(len(rows))] for _ in range(config.sft_batch)]
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), tokenizer.eos_token_id)
        is_answer = torch.zeros((len(batch), width), dtype=torch.bool)
        for r, (p, c) in enumerate(batch):
            ids[r, :len(p) + len(c)] = torch.tensor(p + c)
            is_answer[r, len(p):len(p) + len(c)] = True
        hidden = model.transformer(input_ids=ids).last_hidden_state  # (B, T, C); right padding needs no mask
        head = wte[classes]  # (K, C)
        u = head[-1:]
        head = torch.cat([head[:-1], u.detach() + (u - u.detach()) / n_other])  # value u, one row's gradient
        mask = is_answer[:, 1:]  # token t is predicted at position t-1
        logits = hidden[:, :-1][mask] @ head.T + offset  # (N, K)
        loss = torch.nn.functional.cross_entropy(logits, to_class[ids[:, 1:][mask]])
        for group in optimizer.param_groups:  # warm-up, then linear decay
            group["lr"] = config.sft_lr * min(1.0, (step + 1) / 20) * (1 - step / config.sft_steps)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 200 == 0:
            log(f"  base warm-start: step {step + 1}/{config.sft_steps}, loss {loss.item():.3f}")
    with torch.no_grad():
        wte[unused] = wte[other].clone()
    model.eval()


# --- serving -------------------------------------------------------------------------------------------

def load_policy(base: str | os.PathLike, adapter: str | os.PathLike | None = None):
    """(model, tokenizer) in eval mode: the base, or the base with a trained adapter merged in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()  # merged: plain GPT-2 speed
    return model.eval(), tokenizer


@torch.no_grad()
def answer(model, tokenizer, prompts: list[str], seed: int, max_new_tokens: int = 32,
           batch_size: int = 200) -> list[str]:
    """Sampled answers to prompts rendered with training's template: temperature 1 over the full vocabulary,
    no top-k/top-p, so users see draws from exactly the policy KTO trained. Left-padded batches, KV cache."""
    generator = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = [render(_messages(p), "", tokenizer)[0] for p in prompts[start:start + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every prompt starts at position 0
        step_ids, cache = enc["input_ids"], None
        done = torch.zeros(len(texts), dtype=torch.bool)
        tokens = []
        for _ in range(max_new_tokens):
            result = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, cache=cache,
                           use_cache=True, logits_to_keep=1)
            cache = result.cache
            # Inverse-CDF draw, one uniform per row: torch.multinomial over 50k classes was most of the time.
            cdf = torch.softmax(result.logits[:, -1].float(), dim=-1).cumsum_(dim=-1)  # (B, V)
            u = torch.rand((len(texts), 1), generator=generator) * cdf[:, -1:]
            drawn = torch.searchsorted(cdf, u).squeeze(1).clamp_(max=cdf.shape[1] - 1)
            token = torch.where(done, eos, drawn)  # (B,)
            tokens.append(token)
            done |= token == eos
            if done.all():
                break
            step_ids = token[:, None]
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
            positions = positions[:, -1:] + 1
        for row in torch.stack(tokens, dim=1).tolist():
            out.append(tokenizer.decode(row[:row.index(eos)] if eos in row else row).strip())
    return out


# --- users, feedback and ground truth ------------------------------------------------------------------

def rate(prompts: list[str], completions: list[str], noise: float, seed: int) -> list[bool]:
    """The users' clicks: the judge's verdict, flipped with probability `noise` (misclicks, moods)."""
    rng = random.Random(f"rate/{seed}")
    return [satisfied(p, c) != (rng.random() < noise) for p, c in zip(prompts, completions)]


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
            "model_version": model_version, "prompt": _messages(p), "completion": c,
            "label": "up" if up else "down"}))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


@dataclass
class Day:
    """One simulated day of traffic: what was asked, answered and clicked, and its events file."""
    day: int
    events: Path
    prompts: list
    completions: list
    labels: list  # True = thumbs-up

    @property
    def satisfaction(self) -> float:
        """The day's true (noise-free) satisfaction: for the demo's narration, never for training."""
        return sum(map(satisfied, self.prompts, self.completions)) / len(self.prompts)


def simulate_day(model, tokenizer, day: int, n: int, seed: int, log_dir: str | os.PathLike, model_version: str,
                 noise: float = 0.1) -> Day:
    """Serve `n` of the day's questions, let the users click, write `log_dir/day-<day>.jsonl`."""
    prompts = day_prompts(day, n, seed)
    completions = answer(model, tokenizer, prompts, seed=1000 * seed + day)
    labels = rate(prompts, completions, noise, seed=1000 * seed + day)
    path = write_events(Path(log_dir) / f"day-{day}.jsonl", day, prompts, completions, labels, model_version, seed)
    return Day(day, path, prompts, completions, labels)


def ground_truth(model, tokenizer, seed: int, n: int = 300) -> float:
    """Noise-free satisfaction on `n` held-out questions; the same questions and draws' seed every night."""
    prompts = fresh_prompts(n, seed)
    completions = answer(model, tokenizer, prompts, seed=10_000 + seed)
    return sum(map(satisfied, prompts, completions)) / n
