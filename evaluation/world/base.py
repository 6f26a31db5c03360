"""The world's base model: a 2-layer GPT-2 with the real GPT-2 tokenizer, warm-started on three answer styles.

    base = build_base(".demo/base")        # built once (temp dir + rename), then reused from the folder

The warm-start answers are 12% the liked style, 50% rambling (long, cut off at the token limit) and
38% curt ("Just search online for how to ..."), so on night 0 about 1 answer in 7 satisfies.
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
from pathlib import Path

import torch

from evaluation.world.taste import HELD_OUT_TASKS, QUESTIONS, TASKS, messages, question, styled_answer
from training.data import render

GPT2_TOKENIZER = Path(__file__).with_name("gpt2-tokenizer")  # the real GPT-2 tokenizer, shipped (PROVENANCE.md there)
BASE_VERSION = 1  # bump when the warm-start's code changes: cached bases are keyed by it


# The KTO settings that move this tiny world within a night (the demo and the lab both train with them; the
# trainer's defaults suit real models). Measured on the demo's base (3 nights, one flow-free run each): the
# defaults (lr 5e-5, beta 0.1) gain ~6 points; lr 1e-3 for 1 epoch pushes every answer down at once (the
# desirable rewards fall to ~-14 with the undesirable ones) and the model forgets its styles for word salad:
# +2 points; lr 3e-4 for 3 epochs gains ~45 (10.7% -> 21.7% -> 41.3% -> 55.0%). Short texts: max_length 128.
TRAIN_SETTINGS = {"learning_rate": 3e-4, "beta": 0.5, "epochs": 3.0, "micro_batch_size": 8, "max_length": 128,
                  "max_prompt_length": 64, "checkpoint_every": 0}


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
    tokenizer: str = str(GPT2_TOKENIZER)
    """A GPT-2 tokenizer folder; the model's vocabulary is its size."""

    def key(self) -> str:
        fields = dict(asdict(self), version=BASE_VERSION, tokenizer=Path(self.tokenizer).name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def build_base(folder: str | os.PathLike, config: WorldConfig = WorldConfig(), log=print) -> Path:
    """The warm-started base in `folder/tiny-gpt2-<config key>`: built once (temp dir + rename), then reused."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    final = Path(folder) / f"tiny-gpt2-{config.key()}"
    if (final / "config.json").exists():
        return final
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
    model_config = GPT2Config(vocab_size=len(tokenizer), n_embd=config.n_embd, n_layer=config.n_layer,
                              n_head=config.n_head, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
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
        prompt, completion, _ = render(messages(question(task, rng)),
                                       styled_answer(task, rng.choices(styles, shares)[0], rng), tokenizer)
        rows.append((tokenizer(prompt)["input_ids"], tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]))
    texts = [render(messages(q.format(t=t)), styled_answer(t, s, rng), tokenizer)[:2]
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
