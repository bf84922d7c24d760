#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh) and runs the test suite; extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${GN_DETECT_VENV:-.venv}"
set +e
"$VENV/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
rc=$?
set -e
# pytest exit 5 means no test was collected: a broken selection, not a pass.
if [ "$rc" -eq 5 ]; then echo "[test] pytest collected no tests" >&2; exit 1; fi
exit "$rc"
