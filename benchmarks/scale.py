"""Memory as the data grows (issue 31): what a stage holds, per example and per token, at growing sizes.

    python benchmarks/scale.py encode [--examples 20000,80000] [--record]

`encode`: a snapshot of synthetic chat examples (HH-RLHF-like lengths: 1-3 turn prompts, 10-120 word answers;
half thumbs-up) tokenized as the trainer does (`training.data.encode` over the train split, the GPT-2 tokenizer
shipped in evaluation/world, max length 512, prompt 384). Each size runs in a child process of its own: the peak
RSS above the child's footprint once the tokenizer is loaded, divided by examples and tokens. The snapshot is
built once per size and reused across `--tree`s, so a change can be compared with the code before it:

    git worktree add /tmp/before HEAD~1
    python benchmarks/scale.py encode --tree /tmp/before --tree .    # side by side, same snapshots
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("the a model answer user please explain how why what code python data error help thanks "
         "good bad fine sorry could would maybe list table function return value").split()


def build_snapshot(folder: Path, n: int, seed: int = 0) -> Path:
    """A curate-shaped snapshot of `n` train examples (write_split + write_stats, as tests build them)."""
    import pyarrow as pa

    from ingest.curate.snapshot import write_split, write_stats

    rng = random.Random(seed)
    text = lambda lo, hi: " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))  # noqa: E731
    prompts, completions = [], []
    for _ in range(n):
        turns = [{"role": "user", "content": text(5, 40)}]
        for _ in range(rng.randint(0, 2)):
            turns += [{"role": "assistant", "content": text(10, 60)}, {"role": "user", "content": text(5, 40)}]
        prompts.append(turns)
        completions.append(text(10, 120))
    table = pa.table({"prompt": prompts, "completion": completions,
                      "desirable": [i % 2 == 0 for i in range(n)]})
    write_split(folder, "train", table)
    write_stats(folder, {"counts": {"train": n}})
    return folder


def child(tree: Path, snapshot: Path) -> dict:
    """In a child process on `tree`'s code: encode the snapshot's train split; the memory it took."""
    code = f"""
import json, resource, sys
sys.path.insert(0, {str(tree)!r})
from transformers import AutoTokenizer
from training.data import encode
import ingest.curate.snapshot as snap
tok = AutoTokenizer.from_pretrained({str(ROOT / 'evaluation' / 'world' / 'gpt2-tokenizer')!r})
tok.pad_token = tok.eos_token
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
before = rss()
rows = snap.iter_split({str(snapshot)!r}) if hasattr(snap, 'iter_split') else snap.read_split({str(snapshot)!r})
enc = encode(rows, tok, 512, 384, check=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tokens = int(enc.lengths.sum())
print(json.dumps({{"examples": len(enc), "tokens": tokens, "held": rss() - before, "peak": peak - before}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["encode"])
    p.add_argument("--examples", default="20000,80000", help="comma-separated sizes")
    p.add_argument("--tree", action="append", type=Path, help="a checkout whose code to measure (default: this one)")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args(argv)
    trees = args.tree or [ROOT]
    sizes = [int(s) for s in args.examples.split(",")]
    lines = ["| code | examples | tokens | peak MB above the tokenizer | bytes a token at peak | held after, MB |",
             "|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            snapshot = build_snapshot(Path(tmp) / f"snap-{n}", n)
            for tree in trees:
                r = child(tree.resolve(), snapshot)
                name = "this tree" if tree.resolve() == ROOT else str(tree)
                lines.append(f"| {name} | {r['examples']:,} | {r['tokens']:,} | {r['peak'] / 2**20:,.0f} | "
                             f"{r['peak'] / r['tokens']:.0f} | {r['held'] / 2**20:,.0f} |")
                print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.record:
        from benchmarks.report import record

        record("scale", f"python benchmarks/scale.py encode --examples {args.examples}"
               + "".join(f" --tree {t}" for t in args.tree or []),
               "GPT-2 tokenizer, max length 512 / prompt 384, synthetic HH-like chats; each run in its own process",
               table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
