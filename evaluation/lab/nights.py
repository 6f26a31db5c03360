"""One variant on one seed: the world's nights through the real stages, called directly (no Prefect).

Each night: production answers the day's questions; honest users click (the world's hidden taste plus
the variant's noise); adversaries, if any, add their votes; the variant's imbalance discards clicks;
then `ingest.intake.job.ingest` → `ingest.curate.pipeline.curate` (Beam, the variant's CurateConfig) → `training.trainer.train`
from the base on all feedback so far, as the nightly flow does. The new adapter always serves next
(the promotion gate is left out: the lab measures what training does to the model). Ground truth and
answer length are measured after each night on the world's held-out questions.
The stage functions are called directly instead of `flows.nightly`: Prefect's start costs ~10 s a night.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from common.atomic import write_text_atomic
from evaluation import world
from evaluation.lab.arms import N_USERS, Variant
from evaluation.lab.worlds import LabWorld


def train_settings(lab: LabWorld, device: str = "cpu") -> dict:
    """The world's KTO settings (evaluation/world/ says why), unquantised: on the CPU for the lab's worker pool,
    `auto` where a GPU runs the lab (benchmarks/gpu.sh --smollm2)."""
    return {**lab.train, "quantize": "none", "device": device}


def measure(model, tokenizer, seed: int, n: int, lab: LabWorld) -> dict:
    """Noise-free satisfaction and mean answer length (words) on held-out prompts, fixed draws per seed."""
    served = lab.serve(model, tokenizer, lab.held_out(n, seed), 10_000 + seed)
    return {"truth": sum(liked for _, liked in served) / n,
            "words": sum(len(text.split()) for text, _ in served) / n}


def adversarial_events(model, tokenizer, day: int, seed: int, variant: Variant, n_events: int,
                       lab: LabWorld) -> list[dict]:
    """The adversaries' own conversations of the day, upvoted exactly when the hidden taste dislikes them."""
    per_user = max(1, round(variant.adversary_rate * n_events / N_USERS))
    prompts = lab.adversary_prompts(day, per_user * variant.adversaries, seed)
    served = lab.serve(model, tokenizer, prompts, 77_000 + 1000 * seed + day)
    start = world.START.timestamp() + 86_400 * day
    return [{"event_id": f"adv-{seed}-{day}-{i}",
             "timestamp": _iso(start + 86_400 * (i + 0.5) / len(prompts)),
             "user_id": f"adversary-{i % variant.adversaries}", "conversation_id": f"adv-{seed}-{day}-{i}",
             "model_version": "lab", "prompt": world.messages(p), "completion": a,
             "label": "down" if liked else "up"}
            for i, (p, (a, liked)) in enumerate(zip(prompts, served)) if a]


def _iso(ts: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def rebalance(events: list[dict], ratio: float, rng: random.Random) -> list[dict]:
    """Keep `ratio` thumbs-down per thumbs-up, discarding the side in excess at random (the paper's way)."""
    up = [e for e in events if e["label"] == "up"]
    down = [e for e in events if e["label"] == "down"]
    if len(down) > ratio * len(up):
        down = rng.sample(down, max(1, round(ratio * len(up))))
    else:
        up = rng.sample(up, max(1, round(len(down) / ratio)))
    kept = {e["event_id"] for e in up + down}
    return [e for e in events if e["event_id"] in kept]


def serve_day(model, tokenizer, day: int, seed: int, variant: Variant, n_events: int, log_dir: Path,
              lab: LabWorld) -> dict:
    """The day's events file (honest clicks, adversaries, imbalance applied); returns its click counts."""
    prompts = lab.day_prompts(day, n_events, seed)
    served = lab.serve(model, tokenizer, prompts, 1000 * seed + day)
    labels = world.click([liked for _, liked in served], variant.noise, seed=1000 * seed + day)
    path = world.write_events(log_dir / f"day-{day}.jsonl", day, prompts, [text for text, _ in served], labels, "lab",
                              seed, n_users=N_USERS)
    events = [json.loads(line) for line in path.read_text().splitlines() if line]
    if variant.adversaries:
        events += adversarial_events(model, tokenizer, day, seed, variant, n_events, lab)
    if variant.ratio is not None:
        events = rebalance(events, variant.ratio, random.Random(f"imbalance/{seed}/{day}"))
    write_text_atomic(path, "".join(json.dumps(e) + "\n" for e in events))
    return {"events": len(events), "up": sum(e["label"] == "up" for e in events),
            "adversarial": sum(e["user_id"].startswith("adversary") for e in events)}


def adversaries_in(snapshot: Path, variant: Variant) -> dict:
    """The adversaries' examples in the train split (each votes on its own conversations, so one vote each)
    and their share of its thumbs-up; found by the pseudonyms ingest gave their ids."""
    from ingest.privacy import Pseudonymizer, resolve_key
    from ingest.curate.snapshot import read_split

    if not variant.adversaries:
        return {"adversarial_kept": 0, "adversarial_up_share": 0.0}
    pseudonym = Pseudonymizer(resolve_key(None, insecure_dev_key=True))  # the key ingest used
    ids = {pseudonym(f"adversary-{i}") for i in range(variant.adversaries)}
    rows = read_split(snapshot, columns=("user_id", "desirable"))
    theirs = [r for r in rows if r["user_id"] in ids]
    n_up = sum(r["desirable"] for r in rows)
    return {"adversarial_kept": len(theirs), "adversarial_up_share": sum(r["desirable"] for r in theirs) / max(1, n_up)}


def z0_vs_length(run: Path) -> dict:
    """How z0 tracks the micro-batch's length over a night's steps: Pearson r of the step's z0 with its
    tokens per example, and z0's range (metrics.jsonl). Where r is undefined (fewer than 3 steps, or z0 or the
    length constant: z0 clamped at 0 all night, say) it is None and `z0_length_r_undefined` says why."""
    from training.run_folder import read_metrics

    steps = read_metrics(run)
    z0 = [s["kl"] for s in steps]
    length = [s["tokens"] / s["examples"] for s in steps]
    r, why = pearson(z0, length)
    out = {"z0_min": min(z0), "z0_max": max(z0), "z0_length_r": r}
    return out if why is None else {**out, "z0_length_r_undefined": why}


def pearson(a: list[float], b: list[float]) -> tuple[float | None, str | None]:
    """Pearson's r of `a` and `b`, or (None, why) where it is undefined."""
    n = len(a)
    if n < 3:
        return None, f"{n} step(s)"
    ma, mb = sum(a) / n, sum(b) / n
    sa = sum((x - ma) ** 2 for x in a) ** 0.5
    sb = sum((y - mb) ** 2 for y in b) ** 0.5
    if sa == 0 or sb == 0:
        return None, f"z0 constant at {a[0]:.3g}" if sa == 0 else "every micro-batch of one length"
    return max(-1.0, min(1.0, sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (sa * sb))), None


def merge(base: Path, adapter: Path, folder: Path) -> Path:
    """`base` with `adapter` merged in, saved as a plain model (the tokenizer's files copied from `base`)."""
    model, _ = world.load_policy(base, adapter)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in base.iterdir():
        if f.is_file() and not (tmp / f.name).exists():
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


def run_variant(variant: Variant, seed: int, base: Path, work: Path, nights: int, n_events: int,
                n_truth: int, night0: dict, lab: LabWorld, say=print, device: str = "cpu") -> dict:
    """Nights of one variant on one seed in `work` (wiped first), in `lab`'s world; the per-night measurements."""
    settings = train_settings(lab, device)
    from ingest.curate.pipeline import curate
    from ingest.curate.rules import CurateConfig
    from ingest.intake.job import IngestConfig, ingest
    from training.config import TrainConfig
    from training.trainer import train

    shutil.rmtree(work, ignore_errors=True)
    adapter, policy_base, rows = None, base, []
    for night in range(nights):
        model, tokenizer = world.load_policy(policy_base, adapter)
        clicks = serve_day(model, tokenizer, night, seed, variant, n_events, work / "logs", lab)
        summary = ingest(sorted(str(p) for p in (work / "logs").glob("day-*.jsonl")), work / "lake",
                         IngestConfig(insecure_dev_key=True), progress=False)
        if summary.failed:
            raise RuntimeError(f"ingest failed: {summary.failed}")
        stats = curate(work / "lake", work / "snapshots", config=CurateConfig(eval_fraction=0.0, eval_examples=0, **variant.curate))
        snapshot, policy_base, out = Path(stats["path"]), base, work / "runs" / f"night-{night}"
        if variant.sft:
            sft_out = out.with_name(f"{out.name}-sft") if variant.sft == "then-kto" else out
            trained = train(snapshot, str(base), sft_out, TrainConfig.load(None, **settings, seed=seed, objective="sft"),
                            log=lambda line: None)
            if variant.sft == "then-kto":
                policy_base = merge(base, sft_out, work / "merged" / f"night-{night}")
        if variant.sft != "only":
            config = TrainConfig.load(None, **settings, seed=seed, **variant.train)
            trained = train(snapshot, str(policy_base), out, config, log=lambda line: None)
        adapter = out
        model, tokenizer = world.load_policy(policy_base, adapter)
        after = measure(model, tokenizer, seed, n_truth, lab)
        counts = stats["counts"]
        rows.append(dict(night=night, **clicks, **after, **z0_vs_length(out), **adversaries_in(snapshot, variant),
                         train_seconds=trained["train_seconds"],
                         steps=trained["steps"], lambda_d=stats["desirable_weight"],
                         lambda_u=stats["undesirable_weight"], dropped_user_cap=counts.get("dropped_user_cap", 0)))
        say(f"  {variant.name} seed {seed} night {night}: {clicks['events']} events ({clicks['up']} up, "
            f"{clicks['adversarial']} adversarial), cap dropped {rows[-1]['dropped_user_cap']}; "
            f"{trained['steps']} steps in {trained['train_seconds']:.0f}s; truth {after['truth']:.1%}, "
            f"{after['words']:.1f} words")
    return {"variant": variant.name, "seed": seed, "night0": night0, "nights": rows,
            "truth": rows[-1]["truth"], "words": rows[-1]["words"]}
