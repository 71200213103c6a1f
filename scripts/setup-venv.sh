#!/usr/bin/env bash
# Create (or reuse) .venv with the CPU build of torch and cacstream installed editable with test extras.
# Idempotent: a second run only reinstalls the package (rebuilding the C++ extension if it changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# torch first, pinned to the local CPU wheel (see scripts/constraints-cpu.txt)
python -c "import torch" 2>/dev/null || pip install -q -c scripts/constraints-cpu.txt torch 2>&1 | grep -v '^WARNING: Location' || true
pip install -q -c scripts/constraints-cpu.txt scikit-build-core pybind11 ninja 2>&1 | grep -v '^WARNING: Location' || true
pip install -q -c scripts/constraints-cpu.txt --no-build-isolation -e '.[torch,onnx,test]' 2>&1 | grep -v '^WARNING: Location' || true
python -c "import cacstream.kernels._cpu, torch; print('cacstream ready: torch', torch.__version__)"
