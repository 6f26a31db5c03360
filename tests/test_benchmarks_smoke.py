"""Every benchmark script runs at a tiny size, so none rots between the runs that record BENCHMARKS.md.

Covered elsewhere: benchmarks/train.py (tests/test_gpu_dryrun.py, through gpu.sh --dry-run), benchmarks/quality.py
(tests/test_lab.py, and gpu.sh --smollm2 --dry-run), benchmarks/gpu_bundle.py (tests/test_gpu_bundle.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.parametrize("fmt, reads_as", [("events", "events"), ("langfuse", "langfuse"),
                                           ("otel-logs", "otel-genai")])
def test_ingest_benchmark_runs_each_format_against_its_floor(fmt, reads_as):
    done = bench("benchmarks/ingest.py", "--events", "2000", "--format", fmt)
    assert "2,000 events" in done.stdout and "MB of JSONL" in done.stdout
    assert re.search(r"\| raw floor: read_json \+ write_table \| [\d.]+ \| [\d,]+ \| 1\.00x \|", done.stdout)
    assert re.search(rf"\| thumbs ingest --format {reads_as} \(.*\) \| [\d.]+ \| [\d,]+ \| [\d.]+x \|", done.stdout)


def test_curate_benchmark_runs_every_contender_on_a_committed_lake_and_they_agree():
    # The generated lake is committed as ingest commits a source: before, it had no record, readers took
    # nothing, and the run stopped at DuckDB's read ("needs at least one file to read").
    done = bench("benchmarks/curate.py", "--events", "3000")
    assert "3,000 events: " in done.stdout
    for contender in ("DuckDB, one query, 2 threads", "pyarrow floor, one process", "Beam, FnApiRunner in-process",
                      "Beam, PortableRunner + worker pool"):
        assert re.search(rf"\| {re.escape(contender)}.* \| [\d.]+ \| [\d,]+ \| [\d.]+x \| [\d.]+ \|", done.stdout)
    assert "Beam in-process / DuckDB (2 threads): **" in done.stdout  # reached only when all five counts agree


@pytest.mark.services
def test_vllm_benchmark_loads_an_adapter_into_a_running_server_and_times_first_tokens():
    from tests.vllm_harness import vllm_python

    env_python = vllm_python()  # skips (or under make test, fails) without the vLLM venv
    os.environ.setdefault("THUMBS_VLLM_PYTHON", env_python)
    done = bench("benchmarks/vllm.py", "--adapters", "2", "--repeats", "1", timeout=600)
    assert "| what | median s | n | x base first token |" in done.stdout
    assert re.search(r"\| server start \(cold, LoRA on\) \| [\d.]+ \| 1 \| \d+x \|", done.stdout), done.stdout


def test_scale_benchmark_measures_what_encoding_holds():
    done = bench("benchmarks/scale.py", "encode", "--examples", "300")
    row = re.search(r"\| this tree \| 300 \| ([\d,]+) \| [\d,]+ \| \d+ \| [\d,]+ \|", done.stdout)
    assert row and int(row.group(1).replace(",", "")) > 300 * 20, done.stdout  # tokens: at least 20 an example
