"""Sweeps through hydra-submitit-launcher on CPU: ``hydra/launcher=submitit_local`` runs the runs of
a sweep in parallel (one process each), a re-run skips finished runs, the report is written; the
pre-emption signal (SIGUSR2) makes a run save its checkpoint and submitit re-submit it, and the
re-submitted job ends bit-identical to an uninterrupted run; the Slurm launcher configs compose.
About 60 s on two CPU cores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.sweeps.test_sweep_run import TRAIN, output, run_dirs, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
LOCAL = ["hydra/launcher=submitit_local", "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def command(tmp: Path, sweep_dir: Path, args: list[str], max_iter: int | None = None) -> list[str]:
    extra = [f"solver.max_iter={max_iter}"] if max_iter else []
    return [sys.executable, str(TRAIN), "-m", *args, *tiny_overrides(tmp), *extra, f"hydra.sweep.dir={sweep_dir}"]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exited {proc.returncode}\n{output(proc)[-4000:]}"
    return proc


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def job_logs(sweep_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (sweep_dir / ".submitit").rglob("*.*") if p.suffix in (".out", ".err"))


def test_submitit_local_runs_in_parallel_rerun_skips_and_report(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    cmd = command(tmp_path, sweep_dir, [*LOCAL, "norm=gn,gn_ws", "seed=0"])
    proc = run(cmd, tmp_path)
    assert "2 done, 0 failed" in output(proc), output(proc)[-3000:]
    runs = run_dirs(sweep_dir)
    assert [r.name for r in runs] == ["norm=gn", "norm=gn_ws"]  # swept keys only; fixed ones in multirun.yaml
    assert "solver.max_iter=3" in (sweep_dir / "multirun.yaml").read_text()
    spans = []
    for r in runs:
        recs = records(r)
        assert json.loads((r / "status.json").read_text())["state"] == "done" and recs[-1]["type"] == "final"
        spans.append((recs[0]["time"], recs[-1]["time"]))
    # parallel: each run's first train record came before the other's final record
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"]["done"] == 2 and summary["counts"]["settings"] == 2

    mtimes = {r: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs}
    proc = run(cmd, tmp_path)
    assert job_logs(sweep_dir).count("skip (already done)") == 2
    assert {r: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs} == mtimes  # nothing retrained
    assert "2 done, 0 failed" in output(proc)


def test_a_failed_submitit_local_run_makes_the_sweep_exit_1(tmp_path: Path) -> None:
    """The project's submitit_local records its runs as the basic launcher does (issue 20)."""
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_bytes(b"not a checkpoint")
    sweep_dir = tmp_path / "failing"
    cmd = command(tmp_path, sweep_dir, [*LOCAL, "norm=gn", f"model.backbone.weights={bad}"])
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, f"exited {proc.returncode}\n{output(proc)[-4000:]}"
    (status,) = [p for p in sweep_dir.rglob("status.json") if ".hydra" not in p.parts]
    run_dir = status.parent
    assert json.loads(status.read_text())["state"] == "failed"
    assert str(run_dir) in output(proc).strip().splitlines()[-1]


def _wait_for_training(sweep_dir: Path, proc: subprocess.Popen, records_needed: int = 2) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be pre-empted"
        found = [p.parent for p in sweep_dir.glob("*/metrics.jsonl")]
        if found and sum(r["type"] == "train" for r in records(found[0])) >= records_needed:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("no training records within 120 s")


def test_preempted_submitit_run_is_requeued_and_resumes_bit_identical(tmp_path: Path) -> None:
    max_iter, args = 25, [*LOCAL, "norm=gn", "seed=0"]
    sweep_dir = tmp_path / "preempted"
    proc = subprocess.Popen(command(tmp_path, sweep_dir, args, max_iter), cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_dir = _wait_for_training(sweep_dir, proc)
        pid = json.loads((run_dir / "status.json").read_text())["pid"]
        os.kill(pid, signal.SIGUSR2)  # what Slurm sends (through submitit) before a time limit
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    logs = job_logs(sweep_dir)
    assert "Requeued job" in logs and "resum" in logs.lower(), logs[-4000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    iters = [r["iter"] for r in records(run_dir) if r["type"] == "train"]
    assert iters == list(range(max_iter))  # one record per iteration across the two jobs

    reference = tmp_path / "reference"  # the same run, uninterrupted (Hydra's basic launcher)
    run(command(tmp_path, reference, ["norm=gn", "seed=0"], max_iter), tmp_path)
    [ref_dir] = run_dirs(reference)
    got = torch.load(run_dir / "checkpoints" / "model_final.pth", weights_only=True)
    want = torch.load(ref_dir / "checkpoints" / "model_final.pth", weights_only=True)
    got, want = got.get("model", got), want.get("model", want)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm_1gpu", "slurm_8gpu"])
def test_slurm_launcher_configs_compose_without_a_cluster(launcher: str) -> None:
    proc = subprocess.run([sys.executable, str(TRAIN), f"hydra/launcher={launcher}", "--cfg", "hydra"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, output(proc)[-3000:]
    # the project's launcher (asks Slurm about its jobs) and requeue after time limits, in all three
    assert "_target_: hydra_plugins.gn_detect_slurm.launcher.SlurmLauncher" in proc.stdout
    assert "max_num_timeout: 30" in proc.stdout and "is validated against ConfigStore schema" not in proc.stderr
    if launcher == "slurm_8gpu":
        assert "tasks_per_node: 8" in proc.stdout and "gpus_per_node: 8" in proc.stdout
    if launcher == "slurm_1gpu":
        assert "gpus_per_node: 1" in proc.stdout
