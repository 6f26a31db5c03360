"""KTO training of a LoRA adapter on a snapshot: setup → train → export.

    thumbs train --snapshot SNAPSHOT --base-model MODEL --out OUT [--config training/kto.yaml]
    torchrun --nproc_per_node 2 -m training.cli --snapshot ... (data parallel; gloo on CPU, NCCL on GPU)

Each micro-batch costs one forward and backward of the policy and, for z0, two no-grad forwards
over the mismatched pairs (policy, then reference = adapter off); the matched examples' reference
log-probs come from the per-snapshot cache.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np
import torch

from common.atomic import write_text_atomic
from ingest.curate.balance import ClassWeights, band_warning
from training import checkpoint, distributed, gguf, run_folder
from training.config import TrainConfig
from ingest.curate.store import local_snapshot
from ingest.curate.snapshot import read_stats
from training.data import Encoded, collate, desirable_only, kl_partners, passes
from training.loss import estimate_kl, kto_loss
from training.model import (Scorer, check_base_model, compute_dtype, load_model, load_tokenizer, model_files_fingerprint,
                            pick_device, resolve_model_path, weights_fingerprint)
from training.plan import Plan
from training.refcache import cache_dir, cache_key, reference_logps
from training.tokencache import encoded_split


class TrainingError(RuntimeError):
    """A run that cannot start or cannot go on; the message says what to change."""


class Diverged(TrainingError):
    """The loss or the gradients stopped being finite; the last good checkpoint is kept."""


def lr_factor(step: int, total: int, warmup_ratio: float, schedule: str) -> float:
    warmup = int(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1 - progress) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))


# --- one optimizer step --------------------------------------------------------------------------------

STAT_NAMES = ("loss", "examples", "n_desirable", "n_undesirable", "reward_desirable", "reward_undesirable",
              "logps_desirable", "logps_undesirable", "tokens", "kl")


def train_step(scorer: Scorer, micro: List[np.ndarray], encoded: Encoded, reference: torch.Tensor,
               weights: ClassWeights, config: TrainConfig, device: torch.device, pad_id: int,
               processes: distributed.Processes, z0_pairs: Optional[list] = None) -> torch.Tensor:
    """Forward, backward and gradient sync for one optimizer step; returns the step's summed stats.

    `z0_pairs` (from `Plan.z0_pairs`) are z0's (examples, partners) per micro-batch; by default the
    micro-batch's own examples, deranged."""
    stats = torch.zeros(len(STAT_NAMES), dtype=torch.float64, device=device)
    if z0_pairs is None:
        z0_pairs = [(idx, idx[kl_partners(encoded.prompt_group[idx])]) for idx in micro]
    budget = config.pass_tokens(device.type)
    for idx, (kl_idx, kl_from) in zip(micro, z0_pairs):
        with torch.no_grad():  # z0 first, so its activations are gone before the policy's are kept
            if config.objective == "kto" and config.z0 == "kl":
                policy_kl, reference_kl = [], []
                for part in passes(encoded, kl_idx, config.max_length, budget, completions_from=kl_from):
                    pairs = collate(encoded, kl_idx[part], config.max_length, pad_id,
                                    completions_from=kl_from[part]).to(device)
                    policy_kl.append(scorer(pairs))
                    with scorer.reference_mode():
                        reference_kl.append(scorer(pairs))
                # all-reduced over processes, clamped, detached
                kl = estimate_kl(torch.cat(policy_kl), torch.cat(reference_kl))
            else:
                kl = torch.zeros((), device=device)
        parts = [idx[part] for part in passes(encoded, idx, config.max_length, budget)]
        batches = [collate(encoded, part, config.max_length, pad_id) for part in parts]
        completion_tokens = sum(int(b.completion_mask.sum()) for b in batches)  # SFT's mean is over all of them
        for part, batch in zip(parts, batches):  # each pass's loss is its share of the micro-batch's mean
            batch = batch.to(device)
            policy_logps = scorer(batch)  # (B,)
            d = batch.desirable
            if config.objective == "sft":  # mean token NLL of the (all desirable) completions
                loss = -policy_logps.sum() / completion_tokens
                (loss / len(micro)).backward()
                losses, rewards = loss.detach().expand(len(idx)), torch.zeros(len(part), device=device)
            else:
                reference_logps = reference[torch.from_numpy(part)].to(device)
                out = kto_loss(policy_logps, reference_logps, batch.desirable, kl, config.beta,
                               desirable_weight=weights.desirable_weight, undesirable_weight=weights.undesirable_weight)
                (out.losses.sum() / (len(idx) * len(micro))).backward()
                losses, rewards = out.losses, out.rewards

            logps = policy_logps.detach().double()
            stats += torch.stack([
                losses.detach().double().sum(), torch.tensor(float(len(part)), device=device),
                d.sum().double(), (~d).sum().double(), rewards[d].double().sum(), rewards[~d].double().sum(),
                logps[d].sum(), logps[~d].sum(), torch.tensor(float(batch.tokens), device=device),
                torch.zeros((), dtype=torch.float64, device=device),
            ])
        stats[-1] += kl.double()  # once a micro-batch, the same on every process: the all-summed value / world is z0
    distributed.average_gradients(scorer.trainable_parameters(), processes)
    return stats


def summarize(stats: torch.Tensor, processes: distributed.Processes, micro_steps: int, kto: bool = True) -> dict:
    """The step's metrics; under SFT there is no reference, so no rewards or margin."""
    s = dict(zip(STAT_NAMES, distributed.all_sum(stats, processes).tolist()))
    mean = lambda a, b: a / b if b and kto else None  # noqa: E731  (a class absent from the step has no mean)
    rd, ru = mean(s["reward_desirable"], s["n_desirable"]), mean(s["reward_undesirable"], s["n_undesirable"])
    return {"loss": s["loss"] / s["examples"], "kl": s["kl"] / processes.world / micro_steps,
            "rewards/desirable": rd, "rewards/undesirable": ru,
            "logps/desirable": mean(s["logps_desirable"], s["n_desirable"]),
            "logps/undesirable": mean(s["logps_undesirable"], s["n_undesirable"]),
            "margin": rd - ru if rd is not None and ru is not None else None,
            "examples": int(s["examples"]), "tokens": int(s["tokens"])}


# --- the session ----------------------------------------------------------------------------------------

@dataclass
class Session:
    """Everything `train` sets up before the first step (the run folder is `out`, training/run_folder.py)."""
    config: TrainConfig
    processes: distributed.Processes
    device: torch.device
    out: Path
    tokenizer: object
    model: torch.nn.Module
    scorer: Scorer
    encoded: Encoded
    reference: torch.Tensor
    weights: ClassWeights  # λD and λU by name, with the counts they balance
    plan: Plan
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    identity: dict  # what a checkpoint must match to be resumed
    meta: dict


def train(snapshot: Path, base_model: Union[str, os.PathLike], out: Path, config: TrainConfig, *, resume: bool = False,
          log: Optional[Callable[[str], None]] = None) -> dict:
    """Train a KTO LoRA adapter on `snapshot`'s train split; write it to `out`; return the run's summary.
    `base_model`: a local folder, a GGUF file or a hub name."""
    base_model = os.fspath(base_model)  # the run's metadata records it as text
    processes = distributed.start(want_cuda=pick_device(config.device).type == "cuda")
    say = (log or (lambda line: print(line, file=sys.stderr, flush=True))) if processes.main else (lambda line: None)
    try:
        session = setup(local_snapshot(snapshot), base_model, Path(out), config, processes, resume, say)
        return fit(session, say)
    finally:
        distributed.stop(processes)


def setup(snapshot: Path, base_model: str, out: Path, config: TrainConfig, processes: distributed.Processes,
          resume: bool, say: Callable) -> Session:
    started = time.monotonic()
    stats = read_stats(snapshot)
    if run_folder.is_finished(out):
        raise TrainingError(f"{out} already holds a finished adapter ({run_folder.META}); choose another --out")
    if checkpoint.saved(out) and not resume:
        raise TrainingError(f"{out} holds checkpoints of an unfinished run: pass --resume to continue it, "
                            "or choose another --out")
    device = pick_device(config.device)
    model_dir = resolve_model_path(base_model)
    check_base_model(model_dir)  # a damaged base is named now, not blamed on the data later
    tokenizer = load_tokenizer(model_dir)
    model_files = model_files_fingerprint(model_dir)  # config.json and the tokenizer files: both caches' keys
    encoded, _ = encoded_split(Path(snapshot), None, tokenizer, model_files, max_length=config.max_length,
                               max_prompt_length=config.max_prompt_length, check=config.objective == "kto", log=say)
    if config.objective == "sft":
        encoded = desirable_only(encoded)
    plan = Plan(encoded, config, processes.world)
    c = encoded.counts
    sft = config.objective == "sft"  # no λ in SFT's loss: unit weights, no balance to check
    weights = ClassWeights(1.0, 1.0, c["desirable"], 0) if sft else _class_weights(config, stats, c, say)
    say(f"train: {c['examples']:,} examples ({c['desirable']:,} desirable / {c['undesirable']:,} undesirable, "
        f"{c['prompts']:,} prompts); truncated: {c['truncated_prompt']:,} prompts ({c['dropped_turns']:,} turns "
        f"dropped), {c['truncated_completion']:,} completions; dropped: {c['dropped_empty']:,} empty, "
        f"{c['unsplittable']:,} unsplittable, {c['template_refused']:,} refused by the template, "
        f"{c['dropped_prompt_too_long']:,} prompts too long")
    lost = [(row, why) for row, why in encoded.dropped if not why.startswith("empty")]
    if lost:
        say(f"warning: {len(lost):,} example(s) could not be tokenized for training, e.g. row {lost[0][0]}: "
            f"{lost[0][1]}; `thumbs inspect` lists them")
    objective = (f"SFT on the {c['desirable']:,} desirable examples ({c.get('set_aside_undesirable', 0):,} undesirable "
                 "set aside)" if config.objective == "sft" else
                 f"β={config.beta} λD={weights.desirable_weight:.4g} λU={weights.undesirable_weight:.4g} "
                 f"z0={config.z0} ({config.kl_pairs} pairs)")
    say(f"train: {plan.total_steps:,} steps of {config.micro_batch_size} x {config.gradient_accumulation_steps} "
        f"accumulation x {processes.world} process(es); {objective}; base {base_model} ({config.quantize}) on {device}")

    fingerprint = weights_fingerprint(model_dir)
    torch.manual_seed(config.seed)  # LoRA's A matrices start random: the seed makes a run repeatable
    model = load_model(model_dir, config, device)
    scorer = Scorer(model, config.logits_chunk_tokens)
    data_fingerprint = encoded.fingerprint()
    key = cache_key(fingerprint, config.quantize, compute_dtype(device), device, data_fingerprint,
                    model_files=model_files, chat_template=tokenizer.chat_template,
                    limits={"max_length": config.max_length, "max_prompt_length": config.max_prompt_length},
                    libraries=run_folder.library_versions())
    ref_started = time.monotonic()
    if config.objective == "sft":  # no reference policy in SFT's loss
        reference, cached = torch.zeros(len(encoded), dtype=torch.float32), None
    else:
        reference, cached = reference_logps(
            scorer, encoded, key=key, cache_dir=cache_dir(snapshot) if config.cache_reference else None,
            tokens_per_pass=config.pass_tokens(device.type), max_length=config.max_length,
            pad_id=tokenizer.pad_token_id, device=device, rank=processes.rank, world=processes.world, log=say)

    optimizer = torch.optim.AdamW(scorer.trainable_parameters(), lr=config.learning_rate,
                                  betas=config.adam_betas, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, plan.total_steps, config.warmup_ratio, config.schedule))
    identity = {"snapshot_id": stats.get("snapshot_id"), "base_model_sha256": fingerprint,
                "data_sha256": data_fingerprint, "world": processes.world,
                "config": config.to_dict()}
    meta = {"base_model": base_model, "base_model_path": str(model_dir), "base_model_sha256": fingerprint,
            "base_model_gguf": gguf.record(model_dir),  # the .gguf file a dequantised base came from, else None
            "snapshot_id": stats.get("snapshot_id"), "snapshot": str(snapshot),
            "config": dict(config.to_dict(), desirable_weight=weights.desirable_weight,
                           undesirable_weight=weights.undesirable_weight),
            "balance": None if sft else {"ratio": weights.ratio, "in_band": weights.in_band},
            "data": c, "processes": processes.world,
            "reference_cache": {"key": key, "hit": cached, "seconds": round(time.monotonic() - ref_started, 3)},
            "device": str(device), "setup_seconds": round(time.monotonic() - started, 2)}
    out.mkdir(parents=True, exist_ok=True)
    run_folder.clear_partial(out)
    return Session(config, processes, device, out, tokenizer, model, scorer, encoded, reference, weights, plan,
               optimizer, scheduler, identity, meta)


def fit(session: Session, say: Callable) -> dict:
    c, processes = session.config, session.processes
    start_step = _maybe_resume(session, say)
    metrics_log = _MetricsLog(run_folder.metrics_path(session.out), start_step, processes.main, say)
    params = session.scorer.trainable_parameters()
    session.model.train()
    began, last_say, history = time.monotonic(), 0.0, []
    for step in range(start_step, session.plan.total_steps):
        t0 = time.monotonic()
        micro = session.plan.micro_batches(step, processes.rank)
        stats = train_step(session.scorer, micro, session.encoded, session.reference, session.weights, c, session.device,
                           session.tokenizer.pad_token_id, processes, session.plan.z0_pairs(step, processes.rank, micro))
        row = summarize(stats, processes, len(micro), kto=c.objective == "kto")
        clip = c.max_grad_norm if c.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if not (math.isfinite(row["loss"]) and math.isfinite(grad_norm)):
            last = checkpoint.latest(session.out)
            raise Diverged(f"step {step + 1}: loss {row['loss']} and gradient norm {grad_norm}; stopped before the "
                           f"update. Last good checkpoint: {last or 'none'}. Lower learning_rate or beta, and check "
                           "the data.")
        row.update(step=step + 1, epoch=round((step + 1) / session.plan.steps_per_epoch, 4), grad_norm=grad_norm,
                   learning_rate=session.scheduler.get_last_lr()[0])
        session.optimizer.step()
        session.scheduler.step()
        session.optimizer.zero_grad(set_to_none=True)
        seconds = time.monotonic() - t0
        row.update(seconds=round(seconds, 4), tokens_per_s=round(row["tokens"] / seconds, 1))
        metrics_log.write(row)
        history.append(row)

        done = step + 1
        if c.checkpoint_every and done % c.checkpoint_every == 0 and done < session.plan.total_steps:
            if processes.main:
                checkpoint.save(session.out, done, session.model, session.optimizer, session.scheduler, session.identity,
                                c.keep_checkpoints)
            distributed.barrier(processes)
        now = time.monotonic()
        if now - last_say > 2 or done == session.plan.total_steps:
            last_say, rate = now, (done - start_step) / (now - began)
            say(f"  step {done:,}/{session.plan.total_steps:,}  loss {row['loss']:.4f}  kl {row['kl']:.4f}  "
                f"margin {_fmt(row['margin'])}  {row['tokens_per_s']:,.0f} tok/s  "
                f"ETA {(session.plan.total_steps - done) / rate:,.0f}s")
    return _finish(session, history, start_step, began, say)


def _maybe_resume(session: Session, say: Callable) -> int:
    """The step to start from: the newest checkpoint whose files match their proof; a damaged one is named
    and skipped (its step is trained again), so one torn write never blocks the run."""
    found = checkpoint.saved(session.out)
    for path in found:
        try:
            saved = checkpoint.read(path)
            changed = sorted(k for k in session.identity if saved.state.get(k) != session.identity[k])
            if changed:
                raise TrainingError(f"cannot resume from {path}: {', '.join(changed)} differ from that run's. Resume "
                                    "with the same snapshot, base model, config and process count, or choose "
                                    "another --out")
            checkpoint.restore(saved, session.model, session.optimizer, session.scheduler)  # parses all before it changes any
        except checkpoint.CheckpointError as err:
            say(f"warning: {err}; resuming from an earlier checkpoint instead")
            continue
        say(f"train: resuming from {path} (step {saved.state['step']:,} of {session.plan.total_steps:,})")
        return saved.state["step"]
    if found:
        where = checkpoint.checkpoint_dir(session.out)
        raise TrainingError(f"none of the {len(found)} checkpoint(s) in {where} can be resumed (each is damaged, see "
                            f"the warnings above). Start this run again: `rm -r {where}` and run the same command "
                            "without --resume, or choose another --out")
    return 0


def _finish(session: Session, history: list, start_step: int, began: float, say: Callable) -> dict:
    elapsed = time.monotonic() - began
    tail = history[-min(10, len(history)):]
    final = {k: _mean([r[k] for r in tail]) for k in ("loss", "kl", "rewards/desirable", "rewards/undesirable",
                                                       "margin", "tokens_per_s")} if tail else {}
    summary = {"out": str(session.out), "steps": session.plan.total_steps, "resumed_from_step": start_step,
               "examples": len(session.encoded), "train_seconds": round(elapsed, 2),
               "tokens": sum(r["tokens"] for r in history), "final": final}
    _check_processes_agree(session)
    if session.processes.main:
        written = run_folder.write_adapter(session.out, session.model, session.tokenizer)
        meta = dict(session.meta, summary=summary, libraries=run_folder.library_versions(),
                    finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        run_folder.write_meta(session.out, meta, files=[*written, run_folder.METRICS])
        checkpoint.remove_all(session.out)
    distributed.barrier(session.processes)
    say(f"train: done, {summary['steps']:,} steps in {elapsed:,.1f}s; last {len(tail)} steps: loss "
        f"{_fmt(final.get('loss'))}, kl {_fmt(final.get('kl'))}, margin {_fmt(final.get('margin'))}; "
        f"adapter at {session.out}")
    return summary


def _check_processes_agree(session: Session) -> None:
    """Every process must end with the same adapter; a silent divergence would export one rank's guess."""
    if session.processes.world == 1:
        return
    local = torch.stack([p.detach().double().sum() for p in session.scorer.trainable_parameters()]).sum()
    total = distributed.all_sum(local.clone(), session.processes)
    if not torch.isclose(total, local * session.processes.world, rtol=1e-9, atol=1e-12):
        raise TrainingError("the processes ended with different adapters; gradients were not synchronised")


class _MetricsLog:
    """metrics.jsonl, one line per step; on resume the lines past the checkpoint are dropped first, and so is a
    line torn by the kill (the steps it lost are logged again as they are retrained)."""

    def __init__(self, path: Path, keep_until: int, main: bool, say: Callable = print):
        self.path, self.main = path, main
        if not main:
            return
        kept, torn = [], 0
        for line in path.read_text(errors="replace").splitlines() if keep_until and path.exists() else []:
            row = _parse_row(line)
            torn += row is None and bool(line.strip())
            if row is not None and row["step"] <= keep_until:
                kept.append(line)
        if torn:
            say(f"warning: {path}: {torn} damaged line(s) dropped")
        write_text_atomic(path, "".join(line + "\n" for line in kept))

    def write(self, row: dict) -> None:
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def _parse_row(line: str) -> Optional[dict]:
    """A metrics line as a dict with an integer step, or None if it is not one."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and type(row.get("step")) is int else None


def _class_weights(config: TrainConfig, stats: dict, counts: dict, say: Callable) -> ClassWeights:
    """λD, λU by name: the config's overrides, else the snapshot's; an override outside the band is warned about."""
    def pick(name: str) -> float:
        value = getattr(config, name)
        return float(stats[name] if value is None else value)

    weights = ClassWeights(desirable_weight=pick("desirable_weight"), undesirable_weight=pick("undesirable_weight"),
                           n_desirable=counts["desirable"], n_undesirable=counts["undesirable"])
    if config.desirable_weight is not None or config.undesirable_weight is not None:
        warning = band_warning(weights)
        if warning:
            say(f"warning: {warning}")
    return weights


def _mean(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
