#!/usr/bin/env bash
# One GPU check of the GroupNorm op/kernel, in about 5 minutes on an H100/H200:
#   bash scripts/gpu_check.sh OUT_DIR            # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run OUT_DIR  # the same steps on the CPU at tiny shapes (CI)
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (one table), plus bench_norm.json.
# Steps and what passes: scripts/gpu_check.py. Exit status 0 only if every step ran and every
# correctness case passed.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
# pure-Python dependencies gn_detect imports besides torch/torchvision/triton/numpy
DEPS="omegaconf hydra-core antlr4-python3-runtime pyyaml tqdm pillow"

usage() {
  cat <<EOF
usage: bash scripts/gpu_check.sh [--dry-run] [--budget-s S] OUT_DIR

Needs PyTorch, torchvision and Triton as installed on the GPU machine (any 2.x; the versions are
recorded), and gn_detect's pure-Python dependencies:
  $DEPS
either installed, or unpacked in a folder named by GN_DETECT_PYTHONPATH, e.g. made elsewhere with
  pip download --no-deps -d wheels $DEPS ; unzip each wheel into one folder
  (pip install --no-deps --target DEPS_DIR $DEPS).
Python: \$PYTHON (default python3). --dry-run: CPU, tiny shapes, kernel in Triton's interpreter.
EOF
}

DRY=0
BUDGET=()
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY=1 ;;
    --budget-s) BUDGET=(--budget-s "$2"); shift ;;
    -*) echo "gpu_check: unknown option $1; fix: see bash scripts/gpu_check.sh --help" >&2; exit 2 ;;
    *) OUT="$1" ;;
  esac
  shift
done
if [ -z "$OUT" ]; then
  echo "gpu_check: no OUT_DIR given; fix: bash scripts/gpu_check.sh [--dry-run] OUT_DIR" >&2
  exit 2
fi
export PYTHONPATH="$REPO${GN_DETECT_PYTHONPATH:+:$GN_DETECT_PYTHONPATH}${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import torch, torchvision, omegaconf, hydra, yaml, tqdm, PIL" 2>/dev/null; then
  echo "gpu_check: $PY cannot import torch/torchvision or one of: $DEPS; fix: install them or set GN_DETECT_PYTHONPATH (see --help)" >&2
  exit 2
fi
mkdir -p "$OUT"
if [ "$DRY" = 1 ]; then
  # the interpreter must be on before triton is imported; one thread per process keeps CI fair
  TRITON_INTERPRET=1 OMP_NUM_THREADS=2 exec "$PY" "$REPO/scripts/gpu_check.py" --dry-run "${BUDGET[@]}" "$OUT"
fi
exec timeout 600 "$PY" "$REPO/scripts/gpu_check.py" "${BUDGET[@]}" "$OUT"
