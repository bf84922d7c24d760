#!/usr/bin/env bash
# Creates .venv (or $GN_DETECT_VENV) and installs gn-detect with its pinned torch/torchvision.
# Idempotent: a second run only checks that the install is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${GN_DETECT_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import gn_detect, torch, torchvision, pycocotools, hydra, submitit, hydra_plugins.hydra_submitit_launcher, hydra_plugins.gn_detect_slurm, pytest, xdist, scipy, faster_coco_eval, onnx, onnxruntime, onnxscript, safetensors" 2>/dev/null; then
  echo "[setup] installing gn-detect and its dependencies (torch==2.14.1, torchvision==0.29.1)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
fi
"$VENV/bin/python" -c "import torch, torchvision; print(f'[setup] ready: torch {torch.__version__}, torchvision {torchvision.__version__}')"
