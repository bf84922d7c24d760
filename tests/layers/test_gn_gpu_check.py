"""scripts/gpu_check.sh --dry-run: every step of the GPU check runs on the CPU at tiny shapes
(kernel in Triton's interpreter) and writes the JSON and the markdown table; --help names the
pure-Python dependencies; a missing OUT_DIR is a one-line error."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_and_usage_errors():
    proc = _run("--help")
    assert proc.returncode == 0 and "GN_DETECT_PYTHONPATH" in proc.stdout
    assert all(dep in proc.stdout for dep in ("omegaconf", "hydra-core", "pyyaml", "tqdm"))
    proc = _run()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "fix:" in proc.stderr


@pytest.mark.slow
def test_dry_run_runs_every_step(tmp_path):
    pytest.importorskip("triton")
    proc = _run("--dry-run", str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert set(steps) == {"correctness", "bench_norm", "bench_model", "graph"}
    assert not any("error" in s for s in steps.values())
    corr = steps["correctness"]
    assert corr["failed"] == [] and corr["passed"] == len(corr["cases"]) == 18
    assert {(c["dtype"], c["layout"], c["relu"]) for c in corr["cases"]} >= {
        (d, lay, r) for d in ("bfloat16", "float32") for lay in ("cl", "nchw") for r in (True, False)}
    assert {"ours-cl", "ours-nchw", "torch-gn-cl", "torch-bn-cl"} <= set(steps["bench_norm"]["rows"][0]["GBps"])
    assert steps["bench_norm"]["copy_GBps"] > 0
    runs = {(r["mode"], r["norm"]) for r in steps["bench_model"]["runs"]}
    assert {("eager", "affine"), ("eager", "gn_ws")} <= runs
    assert "eager impl=auto" in steps["bench_model"]["gn_ws_over_affine"]
    graph = steps["graph"]
    assert graph["graph_breaks"] == 0 and graph["recompiles"] == graph["parts"] * (graph["shapes"] - 1)
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("| check | result |") and "gn_ws / affine" in table
    assert "(ours: cl one-pass channels-last, nchw one-pass NCHW)" in table  # tiny shapes fit one program
