#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh) and runs the test suite; extra args go to pytest.
# Two passes: every test but the Slurm ones on GN_DETECT_TEST_WORKERS pytest-xdist workers (2:
# the two cores; 0 runs them in this process), then the Slurm tests (pytest -m slurm) one at a
# time, since they share one small cluster. A pass that collects no test is fine only when the
# other collected some (a selection given in the arguments); both empty is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${GN_DETECT_VENV:-.venv}"
WORKERS="${GN_DETECT_TEST_WORKERS:-2}"
PYTEST=("$VENV/bin/python" -m pytest tests -q -p no:cacheprovider)
set +e
"${PYTEST[@]}" -n "$WORKERS" -m "not slurm" "$@"
rc_main=$?
"${PYTEST[@]}" -m slurm "$@"
rc_slurm=$?
set -e
# pytest exit 5 means no test was collected: a broken selection, not a pass.
if [ "$rc_main" -eq 5 ] && [ "$rc_slurm" -eq 5 ]; then echo "[test] pytest collected no tests" >&2; exit 1; fi
[ "$rc_main" -eq 5 ] && rc_main=0
[ "$rc_slurm" -eq 5 ] && rc_slurm=0
if [ "$rc_main" -ne 0 ]; then exit "$rc_main"; fi
exit "$rc_slurm"
