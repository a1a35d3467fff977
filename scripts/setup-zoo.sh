#!/usr/bin/env bash
# Create .venv-zoo: PyTorch with a torchvision that imports beside it, timm, and prunedrop (editable, test extras),
# for the zoo matrix (benchmarks/zoo_matrix.py) and tests/test_zoo.py. Idempotent: a second run only checks.
#
# Why a second environment: PyPI's torchvision wheels are built against PyPI's CUDA torch; beside the CPU torch
# of .venv (torch 2.13.0+cpu) `import torchvision` fails ("operator torchvision::nms does not exist": its _C.so
# needs libtorch_cuda.so). So this tries, in order:
#   1. the CPU builds of both from the PyTorch index (https://download.pytorch.org/whl/cpu; about 200 MB), when
#      that index is reachable;
#   2. PyPI's CUDA builds (several GB with the nvidia-* libraries; they run on a CPU).
# Environment: PYTHON (default python3), VENV (default .venv-zoo), ZOO_TORCH_VERSION (2.14.1),
# ZOO_TORCHVISION_VERSION (0.29.1), ZOO_INDEX_TIMEOUT (seconds to wait for the PyTorch index, 15).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-zoo}"
TORCH_VERSION="${ZOO_TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${ZOO_TORCHVISION_VERSION:-0.29.1}"
INDEX_TIMEOUT="${ZOO_INDEX_TIMEOUT:-15}"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null

vision_imports() {
    "$PY" -c "import torch, torchvision, torchvision.models as m; m.resnet18(num_classes=2).eval()(torch.zeros(1, 3, 32, 32))" \
        >/dev/null 2>&1
}

if ! vision_imports; then
    start=$(date +%s)
    if "$PY" -m pip install -q --timeout "$INDEX_TIMEOUT" --retries 0 --index-url "$CPU_INDEX" \
            "torch==$TORCH_VERSION+cpu" "torchvision==$TORCHVISION_VERSION+cpu" 2>/dev/null && vision_imports; then
        echo "installed the CPU builds of torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION from $CPU_INDEX" \
             "in $(( $(date +%s) - start )) s"
    else
        echo "the PyTorch CPU index is not reachable (or its wheels did not import); installing PyPI's CUDA builds" \
             "(several GB, they run on a CPU)"
        "$PY" -m pip install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
        echo "installed torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION from PyPI in $(( $(date +%s) - start )) s"
    fi
fi
vision_imports || { echo "torchvision still does not import beside torch in $VENV" >&2; exit 1; }
# the pinned torch stays: prunedrop's own requirements are satisfied by it
"$PY" -m pip install -q -e ".[test,torchvision,timm]" "torch==$(
    "$PY" -c "import torch; print(torch.__version__.split('+')[0])")"
"$PY" -c "import prunedrop, torch, torchvision, timm, onnxruntime; print('prunedrop', prunedrop.__version__, '| torch', \
torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__, '| onnxruntime', \
onnxruntime.__version__)"
