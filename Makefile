# The two commands of the README's quick start. Both set everything up first (idempotent).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint bench

setup:
	bash scripts/setup.sh $(VENV)

# Two Meta-Rewarding iterations of the tiny config on the embedded model (CPU, minutes).
run: setup
	$(BIN)/metareward run configs/tiny-cpu.yaml

# The whole test suite, slow end-to-end tests included (they are small).
test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/run.py --out benchmarks/results/cpu.json
