"""`benchmarks/gpu.sh --dry-run`: the GPU check's every stage on the CPU, so the script cannot rot between lent GPUs.

The dry run runs the tests marked `gpu` on the CPU (THUMBS_GPU_DRYRUN=1) and the thumbs-vs-TRL benchmark on a
tiny model, and must leave exactly the files a GPU run brings back (the device tool returns at most 8 files,
no deeper than 2 folders; these lie flat in one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import date

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

FILES = {"gpu.log", "env.txt", "tests.log", "bench.log", "bench.json", "BENCHMARKS-gpu.md", "profile-thumbs.txt"}


def gpu_sh(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_dry_run_passes_every_stage_on_the_cpu_and_writes_what_a_gpu_run_brings_back(tmp_path):
    out = tmp_path / "out"
    done = gpu_sh("--dry-run", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == FILES and all(p.is_file() for p in out.iterdir())
    assert "summary: tests passed" in done.stdout and "bench done" in done.stdout

    tests_log = (out / "tests.log").read_text()
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                                "tests/test_gpu.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    n_gpu = len([line for line in collected.stdout.splitlines() if line.startswith("tests/test_gpu.py::")])
    assert n_gpu >= 6
    assert re.search(rf"\b{n_gpu} passed\b", tests_log) and "skipped" not in tests_log.splitlines()[-1], tests_log[-2000:]

    bench = json.loads((out / "bench.json").read_text())
    results = bench["results"]
    # On the CPU the yardstick is this machine's measured float32 matmul rate, not a datasheet's
    assert bench["device"] == "cpu" and bench["peak_flops"] == bench["matmul_ceiling_flops"] > 1e9
    for name in ("TRL KTOTrainer", "thumbs (incl. reference pass)"):
        r = results[name]
        assert r["status"] == "ok" and r["real_tokens_per_second"] > 0 and r["model_flops_per_second"] > 0
        assert r["peak_cuda_bytes"] is None and r["epoch_seconds"] > 0  # no GPU, no CUDA memory
        flops = r["real_tokens_per_second"] * 10 * bench["counts"]["matmul_parameters"]
        assert r["model_flops_per_second"] == pytest.approx(flops)
        assert r["mfu"] == pytest.approx(flops / bench["peak_flops"])
    assert results["TRL KTOTrainer + Liger"] == {"status": "skipped", "reason": "Liger's Triton kernels need a GPU"}

    entry = (out / "BENCHMARKS-gpu.md").read_text()
    assert entry.startswith(f"\n### train vs TRL, {date.today().isoformat()}\n\n`python benchmarks/train.py --vs trl")
    assert "| TRL KTOTrainer + Liger | skipped: Liger's Triton kernels need a GPU |" in entry
    assert "thumbs / TRL defaults: **" in entry
    assert "Self CPU" in (out / "profile-thumbs.txt").read_text()
    assert "torch" in (out / "env.txt").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_the_real_run_refuses_and_names_the_dry_run(tmp_path):
    done = gpu_sh("--skip-tests", "--skip-bench", "--out", str(tmp_path / "out"), timeout=300)
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stdout and "--dry-run" in done.stdout


SMOLLM2_FILES = {"gpu.log", "env.txt", "demo.log", "lab.log", "lab-smollm2.md", "lab-smollm2.png"}


def test_the_smollm2_dry_run_runs_the_demo_and_the_assistant_world_lab_and_writes_what_a_gpu_run_brings_back(tmp_path):
    out = tmp_path / "out"
    done = gpu_sh("--smollm2", "--dry-run", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == SMOLLM2_FILES and all(p.is_file() for p in out.iterdir())
    assert "preflight: imports ok" in done.stdout and "summary: demo done" in done.stdout and "lab done" in done.stdout
    demo = (out / "demo.log").read_text()
    assert re.search(r"^ground truth: [\d.]+% on night 0 -> [\d.]+% after night 0", demo, re.M), demo[-2000:]
    report = (out / "lab-smollm2.md").read_text()
    assert "in the assistant's world (SmolLM2-135M-Instruct, real requests)" in report
    assert "| poison-1%+caps | 1 |" in report and "| default | 0 | not run |" in report
    assert (out / "lab-smollm2.png").stat().st_size > 1000
