"""A canary release in the simulated world (issue 30): a candidate that passes every offline check but that users
like less is rolled back by the live test; a good one is promoted. Days to each decision, and how many users saw
the worse arm.

    python benchmarks/canary.py [--events 400] [--share 0.5] [--seed 0] [--work lab/canary] [--record]

Real pieces throughout, on the tiny world of the lab (evaluation/world: a warm-started 2-layer GPT-2 whose users
like polite, brief answers, 10% misclicks): events files ingested into a lake, Beam curation, KTO training,
`thumbs evaluate` against production, `promote` under `rollout: canary`, and each simulated night
`deploy.canary.settle` on the lake's votes. Production (v0001) is the base itself (an adapter that changes
nothing, registered with --force). The good candidate, trained on day 0's real thumbs, goes first; then the
poisoned one, trained and evaluated on the same day's feedback with every thumb flipped (a brigade that owns the
stream): offline it separates its eval split's thumbs well and beats production there, so it passes every check;
users, who see its answers, like them less than the good production's. Each day `--events` requests come from 300 users; `deploy.rollout.assign` on each user's
pseudonym sends them to an arm, whose model answers; their votes are logged with the arm's served name.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_USERS = 300


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400, help="requests a simulated day (default 400)")
    parser.add_argument("--share", type=float, default=0.5, help="the canary's share of the users (default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=ROOT / "lab" / "canary")
    parser.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    args = parser.parse_args(argv)

    from evaluation import world
    from evaluation.canary import CanaryPolicy
    from evaluation.promotion import PromotionPolicy

    started = time.monotonic()
    work = args.work
    for name in ("logs", "poisoned-logs", "lake", "poisoned-lake", "lake-good", "lake-poisoned", "snapshots", "runs",
                 "registry"):
        shutil.rmtree(work / name, ignore_errors=True)
    base = world.build_base(work / "base", log=lambda line: None)
    policy = PromotionPolicy(rollout="canary", max_kl_per_token=2.0, min_length_ratio=0.2,
                             canary=CanaryPolicy(share=args.share))
    say(f"canary in the simulated world: {args.events} requests a day from {N_USERS} users, canary share "
        f"{args.share:.0%}; live test: margin {policy.canary.margin}, {policy.canary.confidence:.0%}, at least "
        f"{policy.canary.min_votes} votes an arm, at most {policy.canary.max_days} days")

    # Day 0: the base serves; its feedback (and a poisoned copy of it) trains the two candidates.
    model, tokenizer = world.load_policy(base)
    day = world.simulate_day(model, tokenizer, 0, args.events, args.seed, work / "logs", model_version="thumbs-base")
    flip(day.events, work / "poisoned-logs" / day.events.name)
    clean, poisoned = snapshot(work / "logs", work / "lake", work / "snapshots"), \
        snapshot(work / "poisoned-logs", work / "poisoned-lake", work / "snapshots")
    runs = {"base": train(clean, base, work / "runs" / "base", max_steps=1, learning_rate=1e-12),
            "poisoned": train(poisoned, base, work / "runs" / "poisoned"),
            "good": train(clean, base, work / "runs" / "good")}
    truth = {name: world.ground_truth(*world.load_policy(base, run), args.seed) for name, run in runs.items()}
    say("ground truth (noise-free satisfaction on held-out questions): "
        + ", ".join(f"{name} {rate:.1%}" for name, rate in truth.items()))

    from deploy.registry import Registry

    registry = Registry(str(work / "registry"))
    production = offline(runs["base"], clean, registry, policy, force=True)["version"]
    results, serving = [], "base"  # which run production serves
    for name, snap in (("good", clean), ("poisoned", poisoned)):  # the poisoned one then faces the good production
        record = offline(runs[name], snap, registry, policy)
        say(f"{name} candidate {record['version']}: offline " + ("PASSED" if record["promote"] else "REJECTED")
            + "; " + "; ".join(record["reasons"]))
        canary = registry.aliases()["canary"]
        if canary is None or canary["version"] != record["version"]:
            raise SystemExit(f"the {name} candidate did not become the canary: {record['reasons']}")
        results.append(dict(live(registry, work, base, runs, name, canary, args, policy), name=name,
                            version=record["version"], truth=truth[name], production_truth=truth[serving],
                            offline=record["reasons"]))
        production = registry.aliases()["production"]
        serving = name if production == record["version"] else serving
    seconds = time.monotonic() - started
    table = render(results)
    say("\n" + table + f"\n\nproduction is now {production}; {seconds:,.0f}s in all")
    if args.record:
        from benchmarks.report import record

        record("canary in the simulated world", f"python benchmarks/canary.py --events {args.events} --share "
               f"{args.share} --seed {args.seed}", f"the tiny world (2-layer GPT-2, 10% misclicks), {N_USERS} users, "
               f"{seconds:,.0f}s", table)
    return 0 if [r["outcome"] for r in results] == ["promote", "rollback"] else 1


def say(line: str) -> None:
    print(line, flush=True)


def flip(events: Path, out: Path) -> None:
    """The day's events with every thumb reversed (new event ids): poisoned feedback."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in events.read_text().splitlines():
        event = json.loads(line)
        event["event_id"] = "poisoned-" + event["event_id"]
        event["label"] = "down" if event["label"] == "up" else "up"
        lines.append(json.dumps(event))
    out.write_text("\n".join(lines) + "\n")


def snapshot(logs: Path, lake: Path, snapshots: Path) -> Path:
    from ingest.curate.pipeline import curate
    from ingest.curate.rules import CurateConfig
    from ingest.intake.job import IngestConfig, ingest

    ingest(sorted(str(p) for p in logs.glob("*.jsonl")), lake, IngestConfig(insecure_dev_key=True), progress=False)
    return Path(curate(lake, snapshots, config=CurateConfig(eval_fraction=0.25))["path"])


def train(snapshot_path: Path, base: Path, out: Path, **overrides) -> Path:
    from evaluation import world
    from training.config import TrainConfig
    from training.trainer import train as fit

    fit(snapshot_path, str(base), out, TrainConfig.load(None, **{**world.TRAIN_SETTINGS, **overrides}),
        log=lambda line: None)
    return out


def offline(run: Path, snapshot_path: Path, registry, policy, force: bool = False) -> dict:
    """`thumbs evaluate --registry` then `thumbs promote` on a copy of the run."""
    from deploy.promote import evaluate_candidate, promote
    from evaluation.config import EvalConfig

    copy = run.with_name(f"{run.name}-{len(registry.versions())}")
    shutil.copytree(run, copy)
    evaluate_candidate(copy, snapshot_path, registry, config=EvalConfig(generation_prompts=8, max_new_tokens=32),
                       log=lambda line: None)
    return promote(copy, registry, policy, force=force, log=lambda line: None)


def live(registry, work: Path, base: Path, runs: dict, name: str, canary: dict, args, policy) -> dict:
    """Simulated days of traffic split between the arms, settled each night, until a decision."""
    from deploy.canary import settle
    from deploy.rollout import assign
    from evaluation import world
    from ingest.intake.job import IngestConfig, ingest
    from ingest.privacy import INSECURE_DEV_KEY, Pseudonymizer

    aliases = registry.aliases()
    versions = {"production": aliases["production"], "canary": canary["version"]}
    folders = {arm: Path(registry.path("versions", v)) for arm, v in versions.items()}
    models = {arm: world.load_policy(base, folder) for arm, folder in folders.items()}
    pseudonym, start = Pseudonymizer(INSECURE_DEV_KEY.encode()), datetime.fromisoformat(canary["started"])
    saw_canary: set = set()
    for day in range(1, policy.canary.max_days + 1):
        prompts = world.day_prompts(100 + day, args.events, args.seed)
        users = [f"u-{(7 * i + day) % N_USERS}" for i in range(args.events)]
        arm_of = [assign(pseudonym(u), canary["salt"], canary["share"]) for u in users]
        lines = []
        for arm in ("production", "canary"):
            picked = [i for i, a in enumerate(arm_of) if a == arm]
            model, tokenizer = models[arm]
            answers = world.answer(model, tokenizer, [prompts[i] for i in picked], seed=1000 * args.seed + day)
            clicks = world.rate([prompts[i] for i in picked], answers, 0.1, seed=1000 * args.seed + day)
            for i, text, up in zip(picked, answers, clicks):
                if not text:
                    continue
                if arm == "canary":
                    saw_canary.add(users[i])
                moment = start + timedelta(days=day - 1, seconds=int(86_400 * i / args.events))
                lines.append(json.dumps({"event_id": f"{name}-{day}-{i}", "timestamp": moment.isoformat(),
                                         "user_id": users[i], "model_version": f"thumbs-{versions[arm]}",
                                         "prompt": world.messages(prompts[i]), "completion": text,
                                         "label": "up" if up else "down"}))
        path = work / "logs" / f"{name}-day-{day}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        # The simulated days run ahead of the clock the canary's start is stamped with, so each test gets a lake of
        # its own: the next test's window would otherwise also count this one's later days.
        lake = work / f"lake-{name}"
        ingest([str(path)], lake, IngestConfig(insecure_dev_key=True), progress=False)
        look = settle(registry, lake, policy.canary, now=start + timedelta(days=day), log=lambda line: None)
        say(f"  {name} canary {canary['version']}, day {day}: {look['outcome']}: {look['sentence']}")
        if look["outcome"] != "continue":
            return {"outcome": look["outcome"], "days": day, "canary_votes": look["canary"]["up"] + look["canary"]["down"],
                    "production_votes": look["production"]["up"] + look["production"]["down"],
                    "canary_users": len(saw_canary), "difference": look["difference"], "low": look["low"],
                    "high": look["high"], "sentence": look["sentence"]}
    raise RuntimeError("settle never returned a final outcome")


def render(results: list) -> str:
    lines = ["| candidate | offline gate | users' ground truth vs production | live outcome | days | canary votes | "
             "users who saw the canary | thumbs-up difference [always-valid 95%] |",
             "|---|---|---:|---|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['name']} ({r['version']}) | passed | {r['truth']:.1%} vs {r['production_truth']:.1%} | "
                     f"**{r['outcome']}** | {r['days']} | {r['canary_votes']:,} | {r['canary_users']:,} | "
                     f"{100 * r['difference']:+.1f} points [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
