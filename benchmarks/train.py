"""thumbs' KTO trainer against TRL's KTOTrainer: same model, examples, batch, β, λ, LoRA and steps.

    python benchmarks/train.py --vs trl                    # 29M Llama shape, 160 HH-RLHF examples, one epoch
    python benchmarks/train.py --vs trl --quantize nf4     # both on a 4-bit NF4 base (QLoRA)

Each trainer runs in its own spawned process, so its peak RSS (and, on a GPU, peak CUDA memory) is its
own. Throughput is real (non-pad) prompt + completion tokens of the examples trained on, per second,
first step excluded (warm-up). thumbs' figure includes computing the reference log-probs once per
snapshot (a cold cache), spread over the steps; both trainers see every example once.
"""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ.setdefault(_var, "1")

import argparse
import gzip
import json
import multiprocessing
import resource
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import record  # noqa: E402
from benchmarks.trl_baseline import GPT2_TOKENIZER, HH_TEST, run_trl  # noqa: E402

MODELS = {  # Llama shapes with the GPT-2 vocabulary and random weights (throughput does not depend on them)
    "tiny-llama": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4),
}


def build_model(directory: Path, shape: str, seed: int = 0) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **MODELS[shape])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def hh_rows(pairs: int) -> list[dict]:
    """The first `pairs` HH-RLHF pairs, split the way `thumbs ingest --format hh` splits them."""
    from ingest.records import BadRow, split_hh_pair

    rows = []
    with gzip.open(HH_TEST, "rt") as f:
        for line in f:
            pair = json.loads(line)
            try:
                messages, chosen, rejected = split_hh_pair(pair["chosen"], pair["rejected"])
            except BadRow:
                continue
            if chosen.strip() and rejected.strip():
                rows += [{"prompt": messages, "completion": chosen.strip(), "desirable": True},
                         {"prompt": messages, "completion": rejected.strip(), "desirable": False}]
            if len(rows) == 2 * pairs:
                return rows
    return rows


def write_snapshot(rows: list[dict], directory: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (directory / "train").mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("completion", pa.string()), ("desirable", pa.bool_())]))
    pq.write_table(table, directory / "train" / "part-0.parquet")
    n_d = sum(r["desirable"] for r in rows)
    (directory / "stats.json").write_text(json.dumps({
        "snapshot_id": "benchmark", "n_desirable": n_d, "n_undesirable": len(rows) - n_d,
        "desirable_weight": 1.0, "undesirable_weight": 1.0}))
    return directory


def run_thumbs(snapshot: Path, model_dir: Path, out: Path, settings: dict) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_thumbs_in_child, str(snapshot), str(model_dir), str(out), settings).result()


def _thumbs_in_child(snapshot: str, model_dir: str, out: str, settings: dict) -> dict:
    import torch

    from training.config import TrainConfig
    from training.trainer import train

    config = TrainConfig(**settings)
    train(Path(snapshot), model_dir, Path(out), config, log=lambda line: None)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    meta = json.loads((Path(out) / "thumbs_meta.json").read_text())
    timed = rows[1:] or rows
    ref_s = meta["reference_cache"]["seconds"] * len(timed) / len(rows)  # its share of the timed steps
    train_s = sum(r["seconds"] for r in timed)
    tokens = sum(r["tokens"] for r in timed)
    return {"steps": len(rows), "seconds_per_step": (train_s + ref_s) / len(timed),
            "train_seconds_per_step": train_s / len(timed), "reference_seconds": meta["reference_cache"]["seconds"],
            "real_tokens_per_step": tokens / len(timed), "real_tokens_per_second": tokens / (train_s + ref_s),
            "loss_step0": rows[0]["loss"], "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_cuda_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None}


def table(ours: dict, theirs: dict) -> str:
    gb = 1 << 30
    lines = ["| trainer | s/step | real tokens/step | real tokens/s | peak RSS GB | peak CUDA GB | loss at step 0 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in (("TRL KTOTrainer", theirs), ("thumbs (incl. reference pass)", ours)):
        cuda = f"{r['peak_cuda_bytes'] / gb:.2f}" if r.get("peak_cuda_bytes") else "-"
        lines.append(f"| {name} | {r['seconds_per_step']:.2f} | {r['real_tokens_per_step']:,.0f} | "
                     f"{r['real_tokens_per_second']:,.0f} | {r['peak_rss_bytes'] / gb:.2f} | {cuda} | "
                     f"{r['loss_step0']:.6f} |")
    speed = ours["real_tokens_per_second"] / theirs["real_tokens_per_second"]
    memory = ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]
    lines.append(f"\nthumbs/TRL: **{speed:.2f}x** throughput, **{memory:.2f}x** peak RSS"
                 + (f", {ours['peak_cuda_bytes'] / theirs['peak_cuda_bytes']:.2f}x peak CUDA memory"
                    if ours.get("peak_cuda_bytes") and theirs.get("peak_cuda_bytes") else "")
                 + f"; thumbs' reference pass took {ours['reference_seconds']:.1f} s of it, its steps alone "
                 f"{ours['train_seconds_per_step']:.2f} s.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vs", choices=["trl"], required=True)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny-llama")
    parser.add_argument("--pairs", type=int, default=80, help="HH-RLHF pairs; twice as many examples")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=384)
    parser.add_argument("--quantize", choices=["none", "nf4"], default="none")
    parser.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()

    rows = hh_rows(args.pairs)
    steps = args.steps or len(rows) // args.batch
    common = dict(beta=0.1, lora_r=16, lora_alpha=32, lora_dropout=0.0, max_length=args.max_length,
                  max_prompt_length=args.max_prompt_length, learning_rate=5e-5)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        n_params = build_model(tmp / "model", args.model)
        snapshot = write_snapshot(rows, tmp / "snapshot")
        print(f"{args.model}: {n_params / 1e6:,.1f}M parameters, {len(rows)} HH-RLHF examples, batch {args.batch}, "
              f"{steps} steps, base {args.quantize}, CPU", flush=True)

        from transformers import AutoTokenizer

        from training.data import render
        tokenizer = AutoTokenizer.from_pretrained(tmp / "model")
        examples = []
        for r in rows:  # the very texts thumbs renders, so both tokenize the same strings
            prompt, completion, _ = render(r["prompt"], r["completion"], tokenizer)
            examples.append({"prompt": prompt, "completion": completion, "label": r["desirable"]})
        theirs = run_trl(tmp / "model", tmp / "model", examples, steps=steps, batch_size=args.batch,
                         desirable_weight=1.0, undesirable_weight=1.0, seed=0, quantize_4bit=args.quantize == "nf4",
                         output_dir=str(tmp / "trl"), **common)
        print(f"TRL done: {theirs['seconds_per_step']:.2f} s/step", flush=True)
        ours = run_thumbs(snapshot, tmp / "model", tmp / "thumbs", dict(
            common, max_steps=steps, micro_batch_size=args.batch, quantize=args.quantize, device="cpu",
            checkpoint_every=0, seed=0))
    md = table(ours, theirs)
    print(md)
    if args.record:
        record("train vs TRL", " ".join(["python benchmarks/train.py"] + sys.argv[1:]),
               f"{args.model} ({n_params / 1e6:,.1f}M parameters, GPT-2 vocabulary, random weights), "
               f"{len(rows)} HH-RLHF examples, batch {args.batch}, {steps} steps, max length {args.max_length}, "
               f"LoRA r16 all-linear, base {args.quantize}, CPU float32", md)


if __name__ == "__main__":
    main()
