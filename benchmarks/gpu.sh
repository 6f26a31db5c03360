#!/usr/bin/env bash
# The GPU check in one command: the tests marked `gpu`, then thumbs vs TRL (defaults, and with Liger's kernels)
# on a 1.18B-parameter Llama-shaped random model with a 4-bit NF4 base, on one CUDA GPU. Everything it writes
# goes to one folder ($OUT when set, else --out, else .gpu-out/), at most 7 files, none in subfolders:
#
#   gpu.log              everything printed, stage by stage, with times
#   env.txt              GPU, driver, Python and package versions
#   tests.log            pytest -m gpu tests/test_gpu.py
#   bench.log            benchmarks/train.py's progress and warnings
#   bench.json           every figure of the benchmark (tokens/s, peak CUDA memory, MFU, ...)
#   BENCHMARKS-gpu.md    the entry to append to BENCHMARKS.md (`cat` it onto the file)
#   profile-thumbs.txt   torch.profiler's operator table of a short thumbs run (the "why" behind the figures)
#
#   bash benchmarks/gpu.sh              # on a CUDA machine; under 8 minutes on an H100/H200
#   bash benchmarks/gpu.sh --dry-run    # the same stages on the CPU with tiny models, in about 2 minutes
#   bash benchmarks/gpu.sh --smollm2    # the real model instead: the demo, then the lab's key arms on SmolLM2
#
# --smollm2 (issue 28) writes gpu.log, env.txt, demo.log (`make demo` on SmolLM2-135M-Instruct: the nightly table
# and the gain), lab.log and lab-smollm2.md/.png (the imbalance and poisoning arms in the assistant's world:
# default, 1:4 with λ from counts and with λ=1, 1% adversaries without and with the vote cap; 1 seed, 2 nights of
# 128 requests, 5 runs side by side). It needs thumbs' own stack and SmolLM2 on the machine: `make gpu-bundle`
# packs them into .gpu-carry/1..4 (162 MB, git-ignored; benchmarks/gpu_bundle.py says how), carried one part a
# call. Its dry run (--smollm2 --dry-run) runs the tiny world's demo for one night and one small assistant-world
# lab run on the CPU, in about 5 minutes.
#
# Options: --out DIR, --skip-tests, --skip-bench. The GPU machine has torch, transformers, peft and accelerate
# but not bitsandbytes, trl, liger-kernel or pydantic: `make gpu-wheels` (here, with internet) puts their cp312
# wheels under .whl/ (git-ignored, ~48 MB), and this script installs them from there into /tmp/thumbs-site. The data
# the run reads (HH-RLHF, the GPT-2 tokenizer) is in the repository. The dry run uses the local environment
# ($PYTHON, else .venv/bin/python, else python3).
#
# The next session with a lent GPU calls the device tool's `run` with exactly:
#   command: bash benchmarks/gpu.sh
#   carry:   [".whl"]
#   timeout_s: 600
# then appends files_at/BENCHMARKS-gpu.md to BENCHMARKS.md and reads tests.log and profile-thumbs.txt.
# For --smollm2: the calls `make gpu-bundle` prints (each part but the last with `command: true`, back to back).
set -uo pipefail

DRY=0 TESTS=1 BENCH=1 SMOL=0 DEST="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --smollm2) SMOL=1 ;;
    --skip-tests) TESTS=0 ;;
    --skip-bench) BENCH=0 ;;
    --out) DEST="$2"; shift ;;
    -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
DEST="${DEST:-$ROOT/.gpu-out}"
mkdir -p "$DEST" || exit 2
DEST="$(cd "$DEST" && pwd)"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
export TOKENIZERS_PARALLELISM=false
START=$SECONDS

say() { printf '[gpu.sh %4ds] %s\n' "$((SECONDS - START))" "$*"; }

# The wheels the GPU image lacks, by name (one version of each; `make gpu-wheels` downloads them).
WHEELS="bitsandbytes trl liger_kernel datasets dill multiprocess pydantic pydantic_core annotated_types typing_inspection"

install_wheels() {
  local missing="" name
  for name in $WHEELS; do
    ls .whl/"$name"-*.whl >/dev/null 2>&1 || missing="$missing $name"
  done
  if [ "$DRY" = 1 ]; then
    [ -z "$missing" ] && say "wheels: .whl/ holds all of: $WHEELS" \
      || say "wheels: .whl/ lacks:$missing (fine for the dry run; run 'make gpu-wheels' before a GPU run)"
    return 0
  fi
  if [ -n "$missing" ]; then
    say "wheels: .whl/ lacks:$missing; carry .whl after 'make gpu-wheels' (installing what is there)"
  fi
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/thumbs-site \
      .whl/*.whl || { say "wheels: pip install failed"; return 1; }
    export PYTHONPATH="/tmp/thumbs-site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    say "wheels: installed $(ls .whl/*.whl | wc -l) into /tmp/thumbs-site"
  fi
}

environment() {
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "mode: $([ "$DRY" = 1 ] && echo 'dry run (CPU)' || echo GPU)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
      --format=csv 2>&1
    "$PY" - <<'PY' 2>&1
import importlib.metadata as md, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "trl", "liger-kernel", "datasets", "triton",
             "pyarrow", "fsspec", "safetensors", "numpy", "pytest", "pydantic", "apache-beam", "prefect", "gguf"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
PY
  } >"$DEST/env.txt"
  cat "$DEST/env.txt"
}

# A stage's command within its limit, everything it prints into its log, the lines matching
# `noise` kept off the screen; its exit status, 124 said as the limit reached.
limited() {
  local name="$1" limit="$2" log="$3" noise="$4"
  shift 4
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$log" | grep --line-buffered -vE "$noise"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && say "$name: stopped after ${limit}s"
  return "$rc"
}

NOISE='Warning|warnings.warn|it/s\]'

run_tests() {
  say "tests: pytest -m gpu tests/test_gpu.py $([ "$DRY" = 1 ] && echo '(on the CPU: THUMBS_GPU_DRYRUN=1)')"
  THUMBS_GPU_DRYRUN=$DRY timeout -k 10 "$TESTS_LIMIT" "$PY" -m pytest -m gpu tests/test_gpu.py -q -rA \
    -p no:cacheprovider --basetemp="$(mktemp -d /tmp/thumbs-gpu-tests.XXXXXX)/t" -o addopts="" 2>&1 \
    | tee "$DEST/tests.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && say "tests: stopped after ${TESTS_LIMIT}s"
  return "$rc"
}

run_bench() {
  say "bench: benchmarks/train.py --vs trl ${BENCH_ARGS[*]}"
  limited bench "$BENCH_LIMIT" "$DEST/bench.log" "$NOISE|examples/s\]|^\{" "$PY" benchmarks/train.py --vs trl \
    "${BENCH_ARGS[@]}" --json "$DEST/bench.json" --md "$DEST/BENCHMARKS-gpu.md" --profile "$DEST/profile-thumbs.txt"
}

# Every import the run makes, before it starts: a package the image lacks is named at once, not minutes in.
preflight() {
  local imports="$1"
  if "$PY" -c "$imports" >"$DEST/preflight.txt" 2>&1; then
    say "preflight: imports ok"; rm -f "$DEST/preflight.txt"; return 0
  fi
  say "preflight: an import failed: $(tail -n 1 "$DEST/preflight.txt")"
  say "preflight: a package the GPU image lacks: add its wheel (make gpu-wheels / make gpu-bundle) and carry it"
  rm -f "$DEST/preflight.txt"
  return 1
}

# The parts of `make gpu-bundle` that earlier calls carried (.gpu-carry/N/), put back together and installed.
install_bundle() {
  if [ "$DRY" = 1 ]; then
    say "bundle: the dry run uses $PY's own packages"
    return 0
  fi
  "$PY" benchmarks/gpu_bundle.py --unpack .gpu-carry --into "$WORK/bundle" || return 1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/thumbs-site \
    "$WORK"/bundle/*.whl || { say "bundle: pip install failed"; return 1; }
  export PYTHONPATH="/tmp/thumbs-site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  say "bundle: installed $(ls "$WORK"/bundle/*.whl | wc -l) wheels into /tmp/thumbs-site"
}

# `make demo` on SmolLM2 (the dry run: the tiny world, one night). It ran when its table and gain are printed;
# a gain under the demo's +15 target is a result (reported), not a failure of the script.
run_demo() {
  say "demo: python -m flows.demo ($([ "$DRY" = 1 ] && echo 'THUMBS_DEMO_MODEL=tiny, 1 night of 120 requests' || echo 'SmolLM2'))"
  local -a env=(THUMBS_DEMO_DIR="$WORK/demo" PREFECT_HOME="$WORK/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false)
  [ "$DRY" = 1 ] && env+=(THUMBS_DEMO_MODEL=tiny THUMBS_DEMO_NIGHTS=1 THUMBS_DEMO_EVENTS=120)
  limited demo "$DEMO_LIMIT" "$DEST/demo.log" "$NOISE" env "${env[@]}" "$PY" -m flows.demo
  if grep -q '^ground truth: ' "$DEST/demo.log"; then
    say "demo: $(grep '^ground truth: ' "$DEST/demo.log" | tail -n 1)"
    return 0
  fi
  return 1
}

# The lab's key arms in the assistant's world (the dry run: one small run on the CPU).
run_lab() {
  local -a args
  if [ "$DRY" = 1 ]; then
    args=(--variants "poison-1%+caps" --seeds 1 --nights 1 --events 12 --truth-prompts 6 --device cpu --jobs 1)
  else
    args=(--variants "default,1:4 λ-counts,1:4 λ=1,poison-1%,poison-1%+caps" --seeds 1 --nights 2 --events 128
          --truth-prompts 68 --device auto --jobs 5)
  fi
  say "lab: benchmarks/quality.py --world assistant --arms imbalance,poisoning ${args[*]}"
  limited lab "$LAB_LIMIT" "$DEST/lab.log" "$NOISE" "$PY" benchmarks/quality.py --world assistant \
    --arms imbalance,poisoning "${args[@]}" --out "$WORK/lab"
  local rc=$?
  [ -f "$WORK/lab/report.md" ] && cp "$WORK/lab/report.md" "$DEST/lab-smollm2.md"
  [ -f "$WORK/lab/lab.png" ] && cp "$WORK/lab/lab.png" "$DEST/lab-smollm2.png"
  return "$rc"
}

# The interpreter: in a dry run the local venv's ($PYTHON, else .venv's, else python3), on the GPU machine its
# python3 ($PYTHON), which must see a CUDA GPU.
pick_python() {
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  if [ "$DRY" = 1 ]; then
    PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
    return 0
  fi
  PY="${PYTHON:-python3}"
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA GPU visible to torch: run this on the GPU machine, or pass --dry-run"
    return 2
  fi
}

main_smollm2() {
  pick_python || return
  if [ "$DRY" = 1 ]; then DEMO_LIMIT=420 LAB_LIMIT=360; else DEMO_LIMIT=270 LAB_LIMIT=270; fi
  # Everything the stages write beside $DEST goes into a folder of this run's own: nothing another run (or anyone)
  # left in /tmp is touched.
  WORK="$(mktemp -d /tmp/thumbs-smollm2.XXXXXX)" || return 2
  say "mode --smollm2, $([ "$DRY" = 1 ] && echo 'dry run on the CPU' || echo GPU), output in $DEST, work in $WORK"
  install_bundle || return 1
  environment
  preflight "import apache_beam, prefect, gguf, orjson, phonenumbers, pydantic
import flows.demo, flows.nightly, ingest.curate.pipeline, training.trainer, evaluation.lab.nights
from training.gguf import smollm2; smollm2()" || return 1
  local status=0 demo lab
  if run_demo; then demo="done"; else demo="FAILED"; status=1; fi
  say "demo: $demo"
  if run_lab; then lab="done"; else lab="FAILED"; status=1; fi
  say "lab: $lab"
  [ -f "$DEST/lab-smollm2.md" ] && sed -n '/^### /,$p' "$DEST/lab-smollm2.md"
  say "summary: demo $demo ($(grep '^ground truth: ' "$DEST/demo.log" 2>/dev/null | tail -n 1)); lab $lab; files in $DEST: $(ls "$DEST" | tr '\n' ' ')"
  rm -rf "$WORK"  # this run's own folder; what matters was copied into $DEST
  return "$status"
}

main() {
  pick_python || return
  if [ "$DRY" = 1 ]; then
    TESTS_LIMIT=240 BENCH_LIMIT=240
    BENCH_ARGS=(--device cpu --model micro-llama --quantize nf4 --pairs 4 --batch 2 --steps 3 --max-length 96
                --max-prompt-length 64 --profile-steps 1)
  else
    TESTS_LIMIT=180 BENCH_LIMIT=270
    BENCH_ARGS=(--device cuda --model llama-1b --quantize nf4 --pairs 160 --batch 8 --max-length 512
                --max-prompt-length 384 --profile-steps 4)
  fi
  say "mode $([ "$DRY" = 1 ] && echo 'dry run on the CPU' || echo GPU), output in $DEST"
  install_wheels || return 1
  environment
  preflight "import pydantic, training.trainer, benchmarks.train
import trl" || return 1
  local status=0 tests="skipped" bench="skipped"
  if [ "$TESTS" = 1 ]; then
    if run_tests; then tests="passed"; else tests="FAILED"; status=1; fi
    say "tests: $tests"
  fi
  if [ "$BENCH" = 1 ]; then
    if run_bench; then bench="done"; else bench="FAILED"; status=1; fi
    say "bench: $bench"
    [ -f "$DEST/BENCHMARKS-gpu.md" ] && cat "$DEST/BENCHMARKS-gpu.md"
  fi
  say "summary: tests $tests ($(tail -n 1 "$DEST/tests.log" 2>/dev/null)); bench $bench; files in $DEST: $(ls "$DEST" | tr '\n' ' ')"
  return "$status"
}

if [ "$SMOL" = 1 ]; then
  main_smollm2 2>&1 | tee "$DEST/gpu.log"
else
  main 2>&1 | tee "$DEST/gpu.log"
fi
exit "${PIPESTATUS[0]}"
