#!/usr/bin/env bash
# Sets up the environment and runs the default job: the tiny RetinaNet (GN+WS) trained and
# evaluated on synthetic shapes on CPU. Extra args are Hydra overrides for tools/train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${GN_DETECT_VENV:-.venv}"
exec "$VENV/bin/python" tools/train.py "$@"
