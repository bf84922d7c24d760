"""Sweeps on a real one-node Slurm cluster (``bash scripts/slurm_local.sh up``): the project's Slurm
launcher configs with CPU overrides, the sweep command's exit status and report for each scheduler
event, and bit-identical resumption where the run goes on:

* a 2-job sweep through ``submitit_slurm`` (both done: exit 0) and through ``slurm_1gpu`` with one
  failing job (exit 1, the failure in the report and the last line);
* pre-emption by ``scancel --signal=USR2`` and then, in the resumed job, by ``scontrol requeue``
  (SIGTERM; slurm_1gpu), and by a time limit (Slurm's own ``--signal=USR2@120`` warning, after
  ``scontrol update TimeLimit`` shortens the job's limit; submitit_slurm): requeued, resumed, one
  train record per iteration, final weights equal to an uninterrupted run, the report rewritten
  after the last job (exit 0);
* ``slurm_8gpu``'s one-task-per-GPU layout with two CPU tasks: each task takes its rank from
  Slurm (through submitit), DDP + SyncBN run over gloo, and the final weights equal those of the
  same run under ``torchrun --nproc_per_node=2``;
* a cancelled job and a SIGKILLed one in one sweep, with ``sacct`` failing (no accounting): exit 1
  within 2 minutes of the kill, both named, the cancelled run ``interrupted``, the killed one
  ``failed`` with what Slurm said.

Skipped when no cluster answers, unless ``GN_DETECT_REQUIRE_SLURM=1`` (.ci/run sets it): then a
missing cluster fails. About 5 minutes on two CPU cores.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.sweeps.test_submitit_launcher import command, records
from tests.sweeps.test_sweep_run import output, run_dirs

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]
# CPU jobs on the 2-core node: one core each, two at once
CPU = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
       "hydra.launcher.timeout_min=5"]
MAX_ITER = 30  # the scancel / requeue signals arrive while the run trains


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_local.sh"), "status"], capture_output=True, text=True)
    if proc.returncode != 0:
        why = f"no local Slurm cluster ({proc.stderr.strip()}); start one with: bash scripts/slurm_local.sh up"
        if os.environ.get("GN_DETECT_REQUIRE_SLURM") == "1":
            pytest.fail(f"GN_DETECT_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    return {**os.environ, "SLURM_CONF": proc.stdout.strip(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def slurm(env: dict, *args: str) -> str:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, check=True, timeout=60).stdout


def job_field(env: dict, job_id: str, key: str) -> str:
    m = re.search(rf"\b{key}=(\S*)", slurm(env, "scontrol", "show", "job", "-o", job_id))
    return m.group(1) if m else ""


def sweep(tmp: Path, sweep_dir: Path, args: list[str], env: dict, max_iter: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(tmp, sweep_dir, args, max_iter), cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=400)


def start(tmp: Path, sweep_dir: Path, args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(command(tmp, sweep_dir, args, MAX_ITER), cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def training(sweep_dir: Path, name: str, proc: subprocess.Popen, index: int = 0, n: int = 3) -> tuple[Path, str]:
    """(run folder, Slurm job id) once the run ``name``, job ``index`` of the sweep's job array,
    has ``n`` train records."""
    run_dir, deadline = sweep_dir / name, time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the sweep ended early:\n{proc.stdout.read()[-3000:]}"
        if (run_dir / "metrics.jsonl").is_file() and sum(r["type"] == "train" for r in records(run_dir)) >= n:
            # a job array's task k is <array>_<k>; one job alone is not an array
            [job_id] = [p.name for p in (sweep_dir / ".submitit").iterdir() if (p / f"{p.name}_submitted.pkl").is_file()
                        and (p.name.endswith(f"_{index}") or "_" not in p.name)]
            return run_dir, job_id
        time.sleep(0.3)
    raise AssertionError(f"{name}: no training within 180 s")


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


def summary(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, slurm_env: dict) -> dict:
    """The resumed runs' config, uninterrupted under Hydra's basic launcher: final weights."""
    tmp = tmp_path_factory.mktemp("slurm_reference")
    proc = sweep(tmp, tmp / "ref", ["norm=gn", "seed=0"], slurm_env, MAX_ITER)
    assert proc.returncode == 0, output(proc)[-3000:]
    return weights(tmp / "ref" / "0")


def weights(run_dir: Path) -> dict:
    state = torch.load(run_dir / "checkpoints" / "model_final.pth", weights_only=True)
    return state.get("model", state)


def assert_resumed_bit_identical(run_dir: Path, reference: dict, sweep_dir: Path) -> None:
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert [r["iter"] for r in records(run_dir) if r["type"] == "train"] == list(range(MAX_ITER))
    got = weights(run_dir)
    assert got.keys() == reference.keys()
    assert [k for k in reference if not torch.equal(got[k], reference[k])] == []
    # the report was rewritten after the requeued job ended: the run counts as done
    counts = summary(sweep_dir)["counts"]
    assert (counts["done"], counts["unfinished"], counts["failed"]) == (1, 0, 0), counts


def test_two_job_sweep_through_submitit_slurm(tmp_path: Path, slurm_env: dict) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = sweep(tmp_path, sweep_dir, ["hydra/launcher=submitit_slurm", *CPU, "norm=gn,gn_ws", "seed=0"], slurm_env)
    assert proc.returncode == 0, output(proc)[-4000:]
    assert [r.name for r in run_dirs(sweep_dir)] == ["norm=gn", "norm=gn_ws"]
    assert all(json.loads((r / "status.json").read_text())["state"] == "done" for r in run_dirs(sweep_dir))
    assert summary(sweep_dir)["counts"]["done"] == 2 and "2 done, 0 failed" in output(proc)
    assert "sacct" not in output(proc)  # no accounting warnings from polling


def test_two_job_sweep_through_slurm_1gpu_with_a_failing_job(tmp_path: Path, slurm_env: dict) -> None:
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_text("not a checkpoint")
    sweep_dir = tmp_path / "sweep"
    proc = sweep(tmp_path, sweep_dir, ["hydra/launcher=slurm_1gpu", *CPU, "norm=gn", "seed=0",
                                       f"model.backbone.weights={bad},null"], slurm_env)
    out = output(proc)
    assert proc.returncode == 1, out[-4000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("[gn-detect] sweep not complete: 1 of 2 run(s) not done") and "not_a_checkpoint" in last, last
    s = summary(sweep_dir)
    assert (s["counts"]["done"], s["counts"]["failed"]) == (1, 1) and "not_a_checkpoint" in json.dumps(s["failed"])


def test_preempted_by_usr2_then_scontrol_requeue_resumes_twice(tmp_path: Path, slurm_env: dict,
                                                                  reference: dict) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = start(tmp_path, sweep_dir, ["hydra/launcher=slurm_1gpu", *CPU, "norm=gn", "seed=0"], slurm_env)
    run_dir, job_id = training(sweep_dir, "0", proc)  # nothing swept: the folder is the job number
    slurm(slurm_env, "scancel", "--signal=USR2", job_id)  # what Slurm sends before a pre-emption
    wait_until(lambda: job_field(slurm_env, job_id, "Restarts") == "1", proc, "requeue after USR2")
    trained = sum(r["type"] == "train" for r in records(run_dir))
    training(sweep_dir, "0", proc, n=trained + 2)  # the requeued job trains again
    slurm(slurm_env, "scontrol", "requeue", job_id)  # SIGTERM, as Slurm's REQUEUE pre-emption sends
    out = finish(proc)
    assert proc.returncode == 0, out[-4000:]
    assert job_field(slurm_env, job_id, "Restarts") == "2"
    assert_resumed_bit_identical(run_dir, reference, sweep_dir)


def usr2_pending(pid: int) -> bool:
    """SIGUSR2 is pending for the (stopped) process ``pid`` (/proc/<pid>/status)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return any(int(fields[k].strip(), 16) >> (signal.SIGUSR2 - 1) & 1 for k in ("SigPnd", "ShdPnd"))


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline and proc.poll() is None, f"no {what} within {timeout} s"
        time.sleep(0.2)


def test_time_limit_requeues_and_resumes(tmp_path: Path, slurm_env: dict, reference: dict) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = start(tmp_path, sweep_dir, ["hydra/launcher=submitit_slurm", *CPU, "norm=gn", "seed=0"], slurm_env)
    run_dir, job_id = training(sweep_dir, "0", proc)
    # A limit 60-120 s ahead: within submitit_slurm's signal_delay_s (120), so Slurm sends the
    # time-limit warning (USR2) at its next check (up to 30 s), well before the limit itself. The
    # run is held stopped until the signal is pending, so a fast machine cannot finish it first.
    # The requeued job gets its 5 minutes back before it starts.
    pid = json.loads((run_dir / "status.json").read_text())["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        h, m, sec = (int(x) for x in job_field(slurm_env, job_id, "RunTime").split("-")[-1].split(":"))
        limit = (h * 3600 + m * 60 + sec) // 60 + 2
        slurm(slurm_env, "scontrol", "update", f"JobId={job_id}", f"TimeLimit={limit}")
        # Slurm may also send SIGCONT with it: then the run saves and ends at once
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or usr2_pending(pid), proc,
                   "time-limit signal from Slurm", timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    wait_until(lambda: job_field(slurm_env, job_id, "Restarts") == "1", proc, "requeue after the time limit")
    slurm(slurm_env, "scontrol", "update", f"JobId={job_id}", "TimeLimit=5")
    out = finish(proc)
    assert proc.returncode == 0, out[-4000:]
    assert "timed-out" in "".join(p.read_text(errors="replace") for p in (sweep_dir / ".submitit").rglob("*.err"))
    assert_resumed_bit_identical(run_dir, reference, sweep_dir)


def test_cancelled_and_killed_jobs_end_the_sweep_without_accounting(tmp_path: Path, slurm_env: dict) -> None:
    no_sacct = tmp_path / "bin"
    no_sacct.mkdir()
    (no_sacct / "sacct").write_text("#!/bin/sh\necho 'sacct: error: accounting storage is disabled' >&2\nexit 1\n")
    (no_sacct / "sacct").chmod(0o755)
    env = {**slurm_env, "PATH": f"{no_sacct}{os.pathsep}{slurm_env['PATH']}"}
    sweep_dir = tmp_path / "sweep"
    proc = start(tmp_path, sweep_dir, ["hydra/launcher=submitit_slurm", *CPU, "norm=gn,gn_ws", "seed=0"], env)
    cancelled, cancelled_job = training(sweep_dir, "norm=gn", proc)
    killed, killed_job = training(sweep_dir, "norm=gn_ws", proc, index=1)
    slurm(env, "scancel", cancelled_job)
    os.kill(json.loads((killed / "status.json").read_text())["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    out = finish(proc, timeout=200)
    assert proc.returncode == 1, out[-4000:]
    assert time.monotonic() - killed_at < 120
    last = out.strip().splitlines()[-1]
    assert "2 of 2 run(s) not done" in last and str(cancelled) in last and str(killed) in last, last
    assert f"Slurm job {cancelled_job} was cancelled" in out
    assert json.loads((cancelled / "status.json").read_text())["state"] == "interrupted"
    status = json.loads((killed / "status.json").read_text())
    assert status["state"] == "failed" and f"Slurm job {killed_job} ended FAILED" in status["error"], status
    s = summary(sweep_dir)
    assert (s["counts"]["failed"], s["counts"]["unfinished"]) == (1, 1), s["counts"]
    assert (cancelled / "checkpoints" / "last.pth").is_file()


def test_two_tasks_of_slurm_8gpu_train_as_under_torchrun(tmp_path: Path, slurm_env: dict) -> None:
    """One job, two tasks (processes) on the node, as slurm_8gpu runs one per GPU: RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT come from Slurm; SyncBN's statistics and DDP's
    gradients cross the two processes; bit-identical to torchrun with two processes."""
    args = ["norm=syncbn", "seed=0", "data.ims_per_device=2"]
    sweep_dir = tmp_path / "sweep"
    proc = sweep(tmp_path, sweep_dir, ["hydra/launcher=slurm_8gpu", *CPU, "hydra.launcher.tasks_per_node=2", *args],
                 slurm_env, max_iter=4)
    assert proc.returncode == 0, output(proc)[-4000:]
    [run_dir] = run_dirs(sweep_dir)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert json.loads((run_dir / "env.json").read_text())["world_size"] == 2
    ref_dir = tmp_path / "torchrun"
    _python, train, multirun, *overrides = command(tmp_path, ref_dir, args, 4)
    assert multirun == "-m"  # dropped: one run (hydra.sweep.dir is then ignored), its folder set here
    ref = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", train,
                          *overrides, f"hydra.run.dir={ref_dir}"], cwd=tmp_path, env=slurm_env, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, output(ref)[-4000:]
    assert json.loads((ref_dir / "env.json").read_text())["world_size"] == 2
    got, want = weights(run_dir), weights(ref_dir)
    assert got.keys() == want.keys() and [k for k in want if not torch.equal(got[k], want[k])] == []
