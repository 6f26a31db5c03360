"""thumbs' KTO trainer against TRL's KTOTrainer: same model, examples, batch, β, λ, LoRA and steps.

    python benchmarks/train.py --vs trl                    # 29M Llama shape, 160 HH-RLHF examples, one epoch
    python benchmarks/train.py --vs trl --quantize nf4     # both on a 4-bit NF4 base (QLoRA)
    python benchmarks/train.py --vs trl --quantize nf4 --model llama-1b --pairs 160 --device cuda   # on a GPU
    python benchmarks/train.py --vs trl --model smollm2 --pairs 24 --trl-best-cpu   # a real model, real vocabulary

Each trainer runs in its own spawned process, so its peak RSS and peak CUDA memory
(`torch.cuda.max_memory_allocated`, model load included) are its own. On a GPU everything computes in
bf16 (an NF4 base dequantises to bf16), and TRL runs twice: at its defaults and with `use_liger_kernel`
(where liger-kernel is installed; otherwise the row says why it was skipped). Throughput is real
(non-pad) prompt + completion tokens of the examples trained on, per second, first step excluded
(warm-up). thumbs' figure includes computing the reference log-probs once per snapshot (a cold cache),
spread over the steps; both trainers see every example once, so both do the same KTO work per example.

MFU (model FLOPs utilisation) = real tokens/s x FLOPs per token / the GPU's dense bf16 peak, with
FLOPs per token = 10 N, N = the weights every token multiplies (all parameters but the input
embedding, the output head included). For one KTO pass with a frozen base: the policy's forward 2N and
backward 2N (input gradients only: a frozen weight needs no weight gradient, which full fine-tuning's
6N counts), the reference forward 2N, and z0's policy and reference forwards over the mismatched pairs
4N (their tokens counted as many as the matched ones). Not counted: LoRA's own FLOPs (~r/hidden of
the base's), attention scores (~2% at these lengths) and recomputation under gradient checkpointing
(hardware, not model, FLOPs). One convention for every row, so MFU ratios equal throughput ratios.
On the CPU the yardstick is this machine's measured float32 matmul rate (a 2048^3 product, all cores):
"of matmul peak" is model FLOP/s over it.

`--model smollm2` is SmolLM2-135M-Instruct itself (the GGUF `make` installs, dequantised: 30 layers,
49,152-token vocabulary, tied head), so the transformer body and the head weigh what they weigh in a real
model; the other shapes are random Llamas with the GPT-2 vocabulary. `--trl-best-cpu` runs TRL at its best
CPU settings (reference log-probs precomputed, no gradient checkpointing) instead of its defaults.
"""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ.setdefault(_var, "1")

import argparse
import gzip
import importlib.util
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import BENCHMARKS_MD  # noqa: E402
from benchmarks.trl_baseline import GPT2_TOKENIZER, HH_TEST, run_trl  # noqa: E402

REAL_MODELS = ("smollm2",)  # real weights, installed by `make` (training/gguf.py)
MODELS = {  # Llama shapes with the GPT-2 vocabulary and random weights (throughput does not depend on them)
    "micro-llama": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=2),
    "tiny-llama": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4),
    # Llama-3.2-1B's body (GQA, 8 KV heads); with the GPT-2 vocabulary and an untied head: 1.18B parameters.
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8),
}
# Dense (no sparsity) bf16 peaks from the vendor's datasheets, by a substring of torch's device name;
# the first match wins, so the more specific names come first.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.4),
                    ("H200", 989.4), ("H800", 989.4), ("A100", 312.0))
FLOPS_PER_TOKEN_PER_WEIGHT = 10  # see the module docstring
TARGET = (2.0, 0.7)  # issue 19: >= 2x TRL+Liger tokens/s at <= 0.7x its peak CUDA memory


def prepare_model(directory: Path, shape: str, device: str = "cpu", seed: int = 0) -> tuple[Path, dict]:
    """The model folder to train and its parameter counts: a real model's own folder, or a random Llama of
    `shape` built into `directory`."""
    if shape == "smollm2":
        from training.gguf import dequantized, smollm2

        folder = dequantized(smollm2())
        return folder, real_counts(folder)
    return directory, build_model(directory, shape, device, seed)


def real_counts(folder: Path) -> dict:
    """Parameter counts of a saved model."""
    import torch
    from transformers import AutoModelForCausalLM

    return parameter_counts(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))


def parameter_counts(model) -> dict:
    """All parameters, and the weights every token multiplies: all but the input embedding, the output head
    included (counted again when it is tied to the embedding)."""
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    tied = embed.data_ptr() == head.data_ptr()
    return {"parameters": total, "matmul_parameters": total - embed.numel() + (head.numel() if tied else 0),
            "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size, "tied_head": tied}


def build_model(directory: Path, shape: str, device: str = "cpu", seed: int = 0) -> dict:
    """A random Llama of `shape` saved to `directory` (bf16 on a GPU), and its parameter counts."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **MODELS[shape])
    torch.manual_seed(seed)
    with torch.device(device):  # a 1B model initialises in a second on the GPU, in a minute on CPU
        model = LlamaForCausalLM(config)
    if device == "cuda":
        model.to(torch.bfloat16)  # half the bytes to write and read; training computes in bf16 anyway
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    counts = parameter_counts(model)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return counts


def hh_rows(pairs: int) -> list[dict]:
    """The first `pairs` HH-RLHF pairs, split the way `thumbs ingest --format hh` splits them."""
    from ingest.intake.records import BadRow, split_hh_pair

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

    from ingest.curate.snapshot import TRAIN, write_split, write_stats

    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("completion", pa.string()), ("desirable", pa.bool_())]))
    write_split(directory, TRAIN, table)
    n_d = sum(r["desirable"] for r in rows)
    write_stats(directory, {"snapshot_id": "benchmark", "n_desirable": n_d, "n_undesirable": len(rows) - n_d,
                            "desirable_weight": 1.0, "undesirable_weight": 1.0})
    return directory


def run_thumbs(snapshot: Path, model_dir: Path, out: Path, settings: dict, profile: Optional[Path] = None,
               profile_steps: int = 4) -> dict:
    """The timed run in a spawned child; then, in the same child and after its figures are taken, the
    profiled run of `profile_steps` steps when `profile` names a file."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_thumbs_in_child, str(snapshot), str(model_dir), str(out), settings,
                           str(profile) if profile else None, profile_steps).result()


def _thumbs_in_child(snapshot: str, model_dir: str, out: str, settings: dict, profile: Optional[str],
                     profile_steps: int) -> dict:
    from training.config import TrainConfig
    from training.trainer import train

    config = TrainConfig(**settings)
    started = time.perf_counter()
    train(Path(snapshot), model_dir, Path(out), config, log=lambda line: None)
    result = dict(_figures(Path(out), config), epoch_seconds=time.perf_counter() - started)
    if profile:  # a profiler that cannot run here must not cost the figures above
        try:
            profiled = TrainConfig(**dict(settings, max_steps=profile_steps))
            _profile_thumbs(Path(snapshot), model_dir, Path(out + "-profile"), profiled, Path(profile))
            result["profile"] = profile
        except Exception as err:  # noqa: BLE001
            result["profile_error"] = f"{type(err).__name__}: {err}"
            Path(profile).write_text(f"profiling failed: {result['profile_error']}\n")
    return result


def _figures(out: Path, config) -> dict:
    import torch

    from training.run_folder import read_meta, read_metrics

    rows, meta = read_metrics(Path(out)), read_meta(Path(out))
    timed = rows[1:] or rows
    ref_s = meta["reference_cache"]["seconds"] * len(timed) / len(rows)  # its share of the timed steps
    train_s = sum(r["seconds"] for r in timed)
    tokens = sum(r["tokens"] for r in timed)
    cuda = torch.cuda.is_available() and config.device != "cpu"
    return {"steps": len(rows), "seconds_per_step": (train_s + ref_s) / len(timed),
            "train_seconds_per_step": train_s / len(timed), "reference_seconds": meta["reference_cache"]["seconds"],
            "real_tokens_per_step": tokens / len(timed), "real_tokens_per_second": tokens / (train_s + ref_s),
            "loss_step0": rows[0]["loss"], "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None, "device": meta["device"]}


def _profile_thumbs(snapshot: Path, model_dir: str, out: Path, config, path: Path) -> None:
    """torch.profiler over a short run (model load included; the reference log-probs come from the cache the
    timed run left), its operators by self time into `path`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from training.trainer import train

    cuda = config.device != "cpu" and torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        summary = train(snapshot, model_dir, out, config, log=lambda line: None)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    path.write_text(f"thumbs train, {summary['steps']} steps of micro-batch {config.micro_batch_size} on "
                    f"{'cuda' if cuda else 'cpu'}, base {config.quantize}; model load included, reference "
                    f"log-probs cached. Operators by {key}:\n\n"
                    + prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=60) + "\n")


def bf16_peak(device_name: str, override: Optional[float]) -> Optional[float]:
    """FLOP/s: `override` (TFLOP/s) if given, else the datasheet figure for `device_name`, else None."""
    if override:
        return override * 1e12
    return next((tflops * 1e12 for name, tflops in BF16_PEAK_TFLOPS if name in device_name), None)


def matmul_ceiling() -> float:
    """Measured bf16 FLOP/s of an 8192^3 matrix product on random data, median of 20 (CUDA events)."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192 ** 3 / sorted(times)[len(times) // 2]


def cpu_matmul_ceiling() -> float:
    """Measured float32 FLOP/s of a 2048^3 matrix product on random data on every core torch uses, median of 10."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(10):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * 2048 ** 3 / sorted(times)[len(times) // 2]


def add_flops(result: dict, counts: dict, peak: Optional[float]) -> None:
    flops = result["real_tokens_per_second"] * FLOPS_PER_TOKEN_PER_WEIGHT * counts["matmul_parameters"]
    result["model_flops_per_second"] = flops
    result["mfu"] = flops / peak if peak else None


def table(rows: list) -> str:
    """rows: (name, result) with result["status"] in ok | failed | skipped."""
    gb = 1 << 30
    lines = ["| trainer | s/step | real tokens/step | real tokens/s | model TFLOP/s | MFU | epoch s | peak CUDA GB | "
             "peak RSS GB | loss at step 0 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['status']}: {r['reason']} | | | | | | | | |")
            continue
        cuda = f"{r['peak_cuda_bytes'] / gb:.2f}" if r.get("peak_cuda_bytes") else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        lines.append(f"| {name} | {r['seconds_per_step']:.3f} | {r['real_tokens_per_step']:,.0f} | "
                     f"{r['real_tokens_per_second']:,.0f} | {r['model_flops_per_second'] / 1e12:.2f} | {mfu} | "
                     f"{r.get('epoch_seconds', float('nan')):,.0f} | {cuda} | {r['peak_rss_bytes'] / gb:.2f} | {r['loss_step0']:.6f} |")
    return "\n".join(lines)


def ratios(ours: dict, baselines: list) -> list:
    """One line per baseline that ran: thumbs' throughput and peak memory over its."""
    lines = []
    for name, theirs in baselines:
        if theirs["status"] != "ok" or ours["status"] != "ok":
            continue
        speed = ours["real_tokens_per_second"] / theirs["real_tokens_per_second"]
        line = f"thumbs / {name}: **{speed:.2f}x** throughput, {ours['peak_rss_bytes'] / theirs['peak_rss_bytes']:.2f}x peak RSS"
        if ours.get("epoch_seconds") and theirs.get("epoch_seconds"):
            line += (f", epoch {theirs['epoch_seconds'] / ours['epoch_seconds']:.2f}x as fast ({ours['epoch_seconds']:.0f} s vs "
                     f"{theirs['epoch_seconds']:.0f} s, setup and reference pass included)")
        if ours.get("peak_cuda_bytes") and theirs.get("peak_cuda_bytes"):
            memory = ours["peak_cuda_bytes"] / theirs["peak_cuda_bytes"]
            line += f", **{memory:.2f}x** peak CUDA memory"
            if theirs.get("liger"):
                met = speed >= TARGET[0] and memory <= TARGET[1]
                line += (f" (target >= {TARGET[0]:g}x at <= {TARGET[1]:g}x: {'met' if met else 'NOT met'})")
        lines.append(line + ".")
    if ours["status"] == "ok":
        lines.append(f"thumbs' reference pass took {ours['reference_seconds']:.1f} s of it, its steps alone "
                     f"{ours['train_seconds_per_step']:.3f} s.")
    return lines


def attempt(name: str, fn, *args, **kwargs) -> dict:
    """Run one trainer; a failure becomes a row that says why instead of losing the other rows."""
    print(f"{name}: running", flush=True)
    try:
        result = dict(fn(*args, **kwargs), status="ok")
    except Exception as err:  # noqa: BLE001  (a trainer that breaks is itself a result to report)
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"}
    if result["status"] != "ok":
        print(f"{name}: {result['status']} ({result['reason']})", flush=True)
    elif "seconds_per_step" in result:
        print(f"{name}: {result['seconds_per_step']:.3f} s/step, {result['real_tokens_per_second']:,.0f} tokens/s",
              flush=True)
    return result


def liger_unavailable(device: str) -> Optional[str]:
    if device != "cuda":
        return "Liger's Triton kernels need a GPU"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed"
    return None


def machine(device: str) -> str:
    import torch

    host = f"{os.cpu_count()}-core {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}"
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), {host}"
    return host


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vs", choices=["trl"], required=True)
    parser.add_argument("--model", choices=sorted(MODELS) + list(REAL_MODELS), default="tiny-llama")
    parser.add_argument("--pairs", type=int, default=80, help="HH-RLHF pairs; twice as many examples")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=384)
    parser.add_argument("--quantize", choices=["none", "nf4"], default="none")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when present")
    parser.add_argument("--trl-best-cpu", action="store_true",
                        help="TRL with its reference log-probs precomputed and no gradient checkpointing")
    parser.add_argument("--liger", choices=["auto", "off"], default="auto",
                        help="auto: also run TRL with use_liger_kernel where liger-kernel and a GPU are there")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU; "
                        "default: the datasheet figure of a known GPU")
    parser.add_argument("--profile", type=Path, default=None, help="also profile a short thumbs run into this file")
    parser.add_argument("--profile-steps", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--md", type=Path, default=None, help="write the BENCHMARKS.md entry to this file")
    parser.add_argument("--record", action="store_true", help="append the entry to BENCHMARKS.md")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA GPU: run on a GPU machine or pass --device cpu")
    rows = hh_rows(args.pairs)
    steps = args.steps or len(rows) // args.batch
    common = dict(beta=0.1, lora_r=16, lora_alpha=32, lora_dropout=0.0, max_length=args.max_length,
                  max_prompt_length=args.max_prompt_length, learning_rate=5e-5)
    ceiling = matmul_ceiling() if device == "cuda" else cpu_matmul_ceiling()
    # MFU's yardstick: the GPU's datasheet bf16 peak; on the CPU this machine's measured float32 matmul rate
    peak = bf16_peak(torch.cuda.get_device_name(), args.peak_tflops) if device == "cuda" else ceiling
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        model_dir, counts = prepare_model(tmp / "model", args.model, device)
        snapshot = write_snapshot(rows, tmp / "snapshot")
        print(f"{args.model}: {counts['parameters'] / 1e6:,.1f}M parameters, {len(rows)} HH-RLHF examples, "
              f"batch {args.batch}, {steps} steps, base {args.quantize}, {machine(device)}"
              + (f"; bf16 matmul ceiling {ceiling / 1e12:,.0f} TFLOP/s measured, peak "
                 f"{peak / 1e12 if peak else float('nan'):,.0f} by the datasheet" if device == "cuda"
                 else f"; float32 matmul {ceiling / 1e9:,.0f} GFLOP/s measured"), flush=True)

        from transformers import AutoTokenizer

        from training.data import render
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        examples = []
        for r in rows:  # the very texts thumbs renders, so both tokenize the same strings
            prompt, completion, _ = render(r["prompt"], r["completion"], tokenizer)
            examples.append({"prompt": prompt, "completion": completion, "label": r["desirable"]})
        trl_kwargs = dict(steps=steps, batch_size=args.batch, desirable_weight=1.0, undesirable_weight=1.0, seed=0,
                          quantize_4bit=args.quantize == "nf4", device=device, precompute_ref=args.trl_best_cpu,
                          gradient_checkpointing=not args.trl_best_cpu, **common)
        results = {"TRL KTOTrainer": attempt("TRL KTOTrainer", run_trl, model_dir, model_dir, examples,
                                             output_dir=str(tmp / "trl"), **trl_kwargs)}
        why_not = "--liger off" if args.liger == "off" else liger_unavailable(device)
        results["TRL KTOTrainer + Liger"] = {"status": "skipped", "reason": why_not} if why_not else attempt(
            "TRL KTOTrainer + Liger", run_trl, model_dir, model_dir, examples,
            output_dir=str(tmp / "trl-liger"), liger=True, **trl_kwargs)
        settings = dict(common, max_steps=steps, micro_batch_size=args.batch, quantize=args.quantize, device=device,
                        checkpoint_every=0, seed=0)
        results["thumbs (incl. reference pass)"] = attempt("thumbs", run_thumbs, snapshot, model_dir,
                                                           tmp / "thumbs", settings, args.profile, args.profile_steps)
    for result in results.values():
        if result["status"] == "ok":
            add_flops(result, counts, peak)
            if "epoch_seconds" not in result:  # TRL: building the trainer (tokenising, the reference pass) + train()
                result["epoch_seconds"] = result["setup_seconds"] + result["train_wall_seconds"]

    ours = results["thumbs (incl. reference pass)"]
    trl_name = "TRL (reference precomputed, no checkpointing)" if args.trl_best_cpu else "TRL defaults"
    baselines = [(trl_name, results["TRL KTOTrainer"]), ("TRL + Liger", results["TRL KTOTrainer + Liger"])]
    md = table(list(results.items())) + "\n\n" + "\n".join(ratios(ours, baselines))
    command = " ".join(["python benchmarks/train.py"] + (sys.argv[1:] if argv is None else list(argv)))
    what = ("SmolLM2-135M-Instruct's real weights and vocabulary" if args.model in REAL_MODELS
            else "GPT-2 vocabulary, random weights")
    detail = (f"{args.model} ({counts['parameters'] / 1e6:,.1f}M parameters, {what}), "
              f"{len(rows)} HH-RLHF examples, batch {args.batch}, {steps} steps, max length {args.max_length}, "
              f"LoRA r16 all-linear, base {args.quantize}, "
              + ("CUDA bf16" + (f"; MFU against {peak / 1e12:,.1f} TFLOP/s dense bf16 (datasheet), "
                                f"{ceiling / 1e12:,.0f} TFLOP/s measured on an 8192^3 bf16 matmul"
                                if peak else f"; {ceiling / 1e12:,.0f} TFLOP/s measured bf16 matmul, no datasheet peak")
                 if device == "cuda" else f"CPU float32; of matmul peak = model FLOP/s over {ceiling / 1e9:,.0f} "
                 f"GFLOP/s, a 2048^3 float32 matmul measured on this machine")
              + ("; TRL with its reference precomputed, no gradient checkpointing" if args.trl_best_cpu else "")
              + f"; model FLOPs {FLOPS_PER_TOKEN_PER_WEIGHT}N per token, N = {counts['matmul_parameters'] / 1e6:,.1f}M")
    entry = (f"\n### train vs TRL, {date.today().isoformat()}\n\n`{command}` on {machine(device)}; {detail}\n\n"
             f"{md}\n")
    print(entry, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": command, "machine": machine(device), "device": device,
                                         "model": args.model, "counts": counts, "steps": steps,
                                         "examples": len(rows), "peak_flops": peak, "matmul_ceiling_flops": ceiling,
                                         "results": results}, indent=2, default=str))
    if args.md:
        args.md.write_text(entry)
    if args.record:
        with open(BENCHMARKS_MD, "a") as f:
            f.write(entry)
    # TRL+Liger may fail or be missing and the rest still stands; thumbs or plain TRL failing is a failure.
    return 0 if all(results[k]["status"] == "ok" for k in ("TRL KTOTrainer", "thumbs (incl. reference pass)")) else 1


if __name__ == "__main__":
    sys.exit(main())
