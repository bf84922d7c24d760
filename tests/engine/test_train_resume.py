"""A real launch stopped by SIGTERM to its whole process group (what `timeout` and `scancel`
send; the data-loader worker gets it too) saves its checkpoint, says 'interrupted' and exits
143; the same command resumes it to the same weights and losses as an uninterrupted run (CPU).
A signal also stops a sweep with that status. The in-process resume check is in test_train_run.py."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from gn_detect.engine.trainer import train

from ._train_utils import (
    child_env,
    compose,
    one_thread,  # noqa: F401  (fixture)
    read_metrics,
    read_status,
    records,
    run_train,
    shapes_root,  # noqa: F401  (fixture)
    tail,
    tiny_overrides,
    train_cmd,
)

pytestmark = pytest.mark.slow

MAX_ITER = 20
PERIOD = 4
STOP_AFTER = 5  # SIGTERM once this many iterations are logged (between two periodic checkpoints)


def _overrides(root: Path, num_workers: int, **extra: object) -> list[str]:
    return tiny_overrides(root, **{
        "solver.max_iter": MAX_ITER, "solver.warmup_iters": 3, "checkpoint.period": PERIOD,
        "data.num_workers": num_workers, **extra,
    })


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "model_final.pth", map_location="cpu", weights_only=True)
    return ckpt["model"]


@pytest.fixture
def uninterrupted(shapes_root, tmp_path_factory, one_thread) -> Path:  # noqa: F811
    """The reference, in-process (same config; batches do not depend on the number of workers)."""
    base = tmp_path_factory.mktemp("resume_A")
    train(compose(_overrides(shapes_root, 0)), base / "run", base_dir=base)
    assert read_status(base / "run")["state"] == "done"
    return base / "run"


def _train_losses(run_dir: Path) -> dict[int, float]:
    """iteration -> loss of the last train record of that iteration (a resumed run may log one twice)."""
    return {r["iter"]: r["loss"] for r in records(run_dir, "train")}


def _signal_group_after(cmd: list[str], cwd: Path, run_dir: Path, signum: int) -> tuple[int, str]:
    """Starts ``cmd`` in its own process group, sends ``signum`` to the whole group once
    ``run_dir`` has STOP_AFTER train records; returns the exit status and the output."""
    proc = subprocess.Popen(cmd, cwd=str(cwd), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if len(records(run_dir, "train")) >= STOP_AFTER:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"run ended before it could be interrupted:\n{proc.communicate()[0][-4000:]}"
        assert len(records(run_dir, "train")) >= STOP_AFTER, "no training progress within 90 s"
        os.killpg(proc.pid, signum)  # the main process and its data-loader worker
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def test_sigterm_then_resume_matches_uninterrupted(uninterrupted, shapes_root, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    overrides = _overrides(shapes_root, 1, **{"hydra.run.dir": str(run_dir)})
    code, out = _signal_group_after(train_cmd(overrides), tmp_path, run_dir, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, out[-4000:]  # 143: a scheduler must not record success
    assert "Traceback" not in out and "DataLoader worker" not in out, out[-4000:]

    status = read_status(run_dir)
    assert status["state"] == "interrupted" and "signal SIGTERM" in status["error"], status
    stopped_at = int(status["iteration"])
    assert STOP_AFTER <= stopped_at < MAX_ITER, status
    assert (run_dir / "checkpoints" / "last.pth").is_file()
    last = torch.load(run_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert last["iteration"] == stopped_at  # the signal saved the state where the loop stopped
    assert not (run_dir / "checkpoints" / "model_final.pth").exists()
    assert not records(run_dir, "final")

    resumed = run_train(overrides, cwd=tmp_path)  # the same command, the same run folder
    assert resumed.returncode == 0, tail(resumed)
    assert f"resumed at iteration {stopped_at}" in resumed.stdout, tail(resumed)
    assert read_status(run_dir)["state"] == "done"
    finals = records(run_dir, "final")
    assert len(finals) == 1 and finals[0]["iter"] == MAX_ITER - 1

    # every iteration was trained exactly once and logged the same loss as the uninterrupted run
    logged = [r["iter"] for r in records(run_dir, "train")]
    assert sorted(set(logged)) == list(range(MAX_ITER)), logged
    assert logged[stopped_at:] == list(range(stopped_at, MAX_ITER)), logged
    ref_losses, losses = _train_losses(uninterrupted), _train_losses(run_dir)
    assert losses == ref_losses, {k: (ref_losses[k], losses[k]) for k in ref_losses if ref_losses[k] != losses[k]}

    ref, got = _final_state(uninterrupted), _final_state(run_dir)
    assert ref.keys() == got.keys()
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differ, f"{len(differ)} tensors differ after resume, e.g. {differ[:5]}"
    assert read_metrics(run_dir)[-1]["type"] == "final"


def test_sigint_stops_a_sweep_with_its_status(shapes_root, tmp_path):  # noqa: F811
    """SIGINT (Ctrl-C) to a sweep's process group: the running run saves and ends 'interrupted',
    the runs after it are skipped, and the sweep exits 130."""
    sweep_dir = tmp_path / "sweep"
    cmd = train_cmd(["-m", "seed=0,1", f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}",
                     *_overrides(shapes_root, 1)])
    code, out = _signal_group_after(cmd, tmp_path, sweep_dir / "0", signal.SIGINT)
    assert code == 128 + signal.SIGINT, out[-4000:]
    status = read_status(sweep_dir / "0")
    assert status["state"] == "interrupted" and "signal SIGINT" in status["error"], status
    assert (sweep_dir / "0" / "checkpoints" / "last.pth").is_file()
    assert not (sweep_dir / "1" / "config.yaml").exists(), "the sweep went on after the signal"
    assert "skip (sweep stopped" in out and "Traceback" not in out, out[-4000:]
