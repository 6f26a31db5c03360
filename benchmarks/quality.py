"""`make lab`: the alignment lab. Each arm's variants, on the same seeds and nights of the simulated world,
through the real ingest, curation and trainer; writes lab/report.md (a table per arm) and lab/lab.png.

    python benchmarks/quality.py                   # the full lab: every arm, 3 seeds, 2 nights of 150 events
    python benchmarks/quality.py --arms poisoning --seeds 3 --nights 2 --events 200    # a reduced run
    python benchmarks/quality.py --record                          # also append the tables to LAB.md
    python benchmarks/quality.py --world assistant --arms imbalance --variants "default,1:4 λ-counts,1:4 λ=1" \
        --seeds 1 --nights 2 --events 128 --truth-prompts 68 --device auto   # on SmolLM2 (a GPU: gpu.sh --smollm2)

Finished runs are kept in lab/runs/<variant>/seed-<s>.json: a re-run skips them (pass --fresh to redo).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.lab.arms import ARMS, variants_for  # noqa: E402
from evaluation.lab.worlds import WORLDS  # noqa: E402

LAB_MD = Path(__file__).resolve().parents[1] / "LAB.md"


def parse(argv):
    from evaluation.world.base import WorldConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {','.join(ARMS)}")
    p.add_argument("--variants", default="", help="only these variants of the arms (comma-separated names)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--nights", type=int, default=2)
    p.add_argument("--events", type=int, default=150, help="honest events per day")
    p.add_argument("--truth-prompts", type=int, default=300)
    p.add_argument("--base-steps", type=int, default=None,
                   help=f"warm-start steps of the world's base (default {WorldConfig.sft_steps}); fewer build a "
                        "rougher base quickly, for smoke runs: runs on the full base never reuse theirs")
    p.add_argument("--world", choices=WORLDS, default="tiny",
                   help="tiny: the 2-layer GPT-2 world (minutes on CPU); assistant: SmolLM2 answering real requests, "
                        "the demo's world (evaluation/lab/worlds.py)")
    p.add_argument("--device", default="cpu", help="where training runs: cpu (the default, for the worker pool), "
                                                    "auto or cuda on a GPU machine")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (torch threads split between them)")
    p.add_argument("--out", default="lab")
    p.add_argument("--fresh", action="store_true", help="redo runs whose results are kept")
    p.add_argument("--report-only", action="store_true", help="write the report from the kept runs, run nothing")
    p.add_argument("--record", action="store_true", help="append the report's tables to LAB.md")
    return p.parse_args(argv)


def _one(job: dict) -> dict:
    """One (variant, seed) in a worker process; its result is also written to its JSON file."""
    import torch

    from common.atomic import write_text_atomic

    torch.set_num_threads(job["threads"])
    from evaluation import world
    from evaluation.lab.arms import VARIANTS
    from evaluation.lab.nights import measure, run_variant
    from evaluation.lab.worlds import lab_world

    base = Path(job["base"])
    settings = job["settings"]
    lab = lab_world(settings.get("world", "tiny"))
    night0 = measure(*world.load_policy(base), job["seed"], settings["truth_prompts"], lab)
    result = run_variant(VARIANTS[job["variant"]], job["seed"], base, Path(job["work"]), settings["nights"],
                         settings["events"], settings["truth_prompts"], night0, lab,
                         say=lambda line: print(line, flush=True), device=job["device"])
    result["settings"] = settings
    write_text_atomic(Path(job["result"]), json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    from evaluation import world
    from evaluation.lab.report import write_report
    from evaluation.lab.worlds import lab_world

    args = parse(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    variants = variants_for(arms)
    if args.variants:
        wanted = {n.strip() for n in args.variants.split(",")}
        variants = [v for v in variants if v.name in wanted]
    out = Path(args.out)
    started = time.monotonic()
    if args.base_steps == world.WorldConfig.sft_steps:
        args.base_steps = None  # the full base by another name: its runs are the full lab's
    if args.world != "tiny" and args.base_steps is not None:
        print(f"lab: --base-steps is for the tiny world's warm-start; the {args.world} world's base is a real model",
              file=sys.stderr)
        return 2
    base = lab_world(args.world).base(out, args.base_steps)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    settings = {"nights": args.nights, "events": args.events, "truth_prompts": args.truth_prompts}
    if args.world != "tiny":
        settings["world"] = args.world  # kept runs of one world never stand in for another's
    if args.base_steps is not None:
        settings["base_steps"] = args.base_steps  # a kept run is reused only under the same settings
    jobs, results = [], {}
    for v in variants:
        for seed in range(args.seeds):
            folder = out / "runs" / v.name.replace(" ", "_").replace("/", "-").replace(":", "-")
            folder.mkdir(parents=True, exist_ok=True)
            result = folder / f"seed-{seed}.json"
            if result.exists() and not args.fresh:
                kept = json.loads(result.read_text())
                if kept.get("settings") == settings:
                    results.setdefault(v.name, {})[seed] = kept
                    continue
            jobs.append(dict(variant=v.name, seed=seed, base=str(base), work=str(folder / f"work-{seed}"),
                             result=str(result), threads=threads, settings=settings, device=args.device))
    if args.report_only:
        jobs = []
    print(f"lab: {len(jobs)} run(s) to do ({sum(map(len, results.values()))} kept) over {len(variants)} variant(s) x "
          f"{args.seeds} seed(s), {args.nights} night(s) of {args.events} events; {args.jobs} at a time", flush=True)
    # Workers start fresh (spawn), never forked from this process: by now torch has started threads here (the base
    # was built or loaded), and a child forked from them can hang; and a GPU run's workers each open CUDA.
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done, result in enumerate(pool.map(_one, jobs), 1):
            results.setdefault(result["variant"], {})[result["seed"]] = result
            print(f"lab: {done}/{len(jobs)} done ({result['variant']} seed {result['seed']}: truth "
                  f"{result['truth']:.1%}), {time.monotonic() - started:,.0f}s", flush=True)
    machine = f"{os.cpu_count()}-core {platform.machine()}, Python {platform.python_version()}"
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [f"`{command}` on {machine}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {args.seeds} seed(s), "
              f"{args.nights} night(s) of {args.events} honest events, ground truth on {args.truth_prompts} held-out "
              f"questions after the last night"
              + (" in the assistant's world (SmolLM2-135M-Instruct, real requests)" if args.world == "assistant" else "")
              + (f", on a rough base ({args.base_steps} warm-start steps)" if args.base_steps else "")
              + f"; {time.monotonic() - started:,.0f}s wall for the runs done now."]
    path = write_report(out, arms, results, header)
    print(path.read_text())
    if args.record:
        text = path.read_text().replace("# Alignment lab report", "## Lab run")
        text = text.replace("](lab.png)", f"]({out}/lab.png)")
        with open(LAB_MD, "a") as f:
            f.write("\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
