#!/usr/bin/env bash
# Create .venv with the CPU build of PyTorch and prunedrop (editable, with test and plot extras).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${PRUNEDROP_TORCH_VERSION:-2.13.0}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# The pinned CPU build first: a plain `pip install torch` would pull a CUDA build of several GB.
if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    python -m pip install -q "torch==$TORCH_VERSION"
fi
python -m pip install -q -e ".[test,plots]"
python -c "import prunedrop, torch, onnxruntime; print('prunedrop', prunedrop.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
