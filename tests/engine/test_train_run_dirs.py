"""Hydra run folders: two runs started in the same second get different folders under the
default ``outputs/<date>/<time>_<uid>`` pattern (relative to the launch directory), and a
relative data.root resolves against the launch directory, not the run folder."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from ._train_utils import TRAIN_PY, child_env, read_status, shapes_root, tiny_overrides  # noqa: F401

pytestmark = pytest.mark.slow

# Imports everything first (seconds), says it is ready, waits for the "go" file, then runs the
# real tools/train.py: both children reach Hydra's run-folder naming within milliseconds.
_SYNCED_LAUNCH = """
import os, runpy, sys, time
ready, go, train_py = sys.argv[1:4]
sys.argv = [train_py, *sys.argv[4:]]
import gn_detect.engine.launch, gn_detect.engine.trainer, gn_detect.data, gn_detect.modeling  # noqa
open(ready, "w").close()
deadline = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
runpy.run_path(train_py, run_name="__main__")
"""

_RUN_DIR = re.compile(r"^(\d{2}-\d{2}-\d{2})_([0-9a-f]{6})$")


def test_same_second_runs_get_own_folders_and_relative_root(shapes_root, tmp_path):  # noqa: F811
    launch = tmp_path / "launch"
    (launch / "data").mkdir(parents=True)
    (launch / "data" / "shapes").symlink_to(shapes_root, target_is_directory=True)
    # relative data.root; no hydra.run.dir: the default pattern, relative to the launch directory
    overrides = tiny_overrides("data/shapes", **{"solver.max_iter": 1, "solver.warmup_iters": 0})
    go = tmp_path / "go"
    procs = []
    try:
        for k in range(2):
            ready = tmp_path / f"ready{k}"
            procs.append((ready, subprocess.Popen(
                [sys.executable, "-c", _SYNCED_LAUNCH, str(ready), str(go), str(TRAIN_PY), *overrides],
                cwd=str(launch), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        deadline = time.monotonic() + 120
        while not all(r.exists() for r, _ in procs):
            assert time.monotonic() < deadline, "children did not get ready"
            assert all(p.poll() is None for _, p in procs), [p.communicate()[0][-3000:] for _, p in procs]
            time.sleep(0.01)
        while time.time() % 1.0 > 0.2:  # start early in a second: both name their folder in the same one
            time.sleep(0.005)
        go.touch()
        outs = [p.communicate(timeout=120)[0] for _, p in procs]
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for (_, p), out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]

    run_dirs = sorted(d for d in (launch / "outputs").glob("*/*") if d.is_dir())
    assert len(run_dirs) == 2, run_dirs  # two folders, not one shared (and clobbered) folder
    stamps = [_RUN_DIR.match(d.name) for d in run_dirs]
    assert all(stamps), [d.name for d in run_dirs]
    assert run_dirs[0].parent == run_dirs[1].parent  # same date folder
    assert stamps[0].group(1) == stamps[1].group(1), "not started in the same second; the test set-up is broken"
    assert stamps[0].group(2) != stamps[1].group(2)
    for d in run_dirs:
        assert read_status(d)["state"] == "done", d
        assert (d / "metrics.jsonl").is_file() and (d / "config.yaml").is_file()
        assert (d / ".hydra" / "config.yaml").is_file()

    # the relative root was resolved against the launch directory (where the data is) ...
    expected_ann = str(launch / "data" / "shapes" / "annotations" / "instances_train.json")
    assert all(f"from {expected_ann}" in out for out in outs), outs[0][-3000:]
    # ... and nothing was generated relative to a run folder or next to the launch directory
    assert not any(d.joinpath("data").exists() for d in run_dirs)
    assert sorted(p.name for p in launch.iterdir()) == ["data", "outputs"]
