"""Without a cluster: how the sweep command waits for a Slurm job (Slurm's answers stubbed) and
the sweep exit status read from the run folders. The real cluster: tests/sweeps/test_slurm.py."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from gn_detect.sweeps import outcome, slurm_jobs
from gn_detect.sweeps.outcome import SweepRun, sweep_exit_status


def fake_job(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(job_id="7_1", paths=SimpleNamespace(result_pickle=tmp_path / "7_1_0_result.pkl"))


def answers(monkeypatch: pytest.MonkeyPatch, states: list, job: SimpleNamespace | None = None) -> list:
    """Slurm answers ``states`` in turn (the last one forever); with ``job``, the result file
    appears when the answers run out."""
    asked = []

    def state(job_id: str) -> tuple:
        asked.append(job_id)
        if job is not None and len(asked) >= len(states):
            job.paths.result_pickle.write_bytes(b"")
        return states[min(len(asked), len(states)) - 1], "exit code 0:9, reason None"

    monkeypatch.setattr(slurm_jobs, "slurm_job_state", state)
    monkeypatch.setattr(slurm_jobs, "RESULT_GRACE_S", 0.05)
    monkeypatch.setattr(slurm_jobs, "UNKNOWN_GRACE_S", 0.1)
    return asked


def test_requeued_job_is_waited_for_until_its_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = fake_job(tmp_path)
    asked = answers(monkeypatch, ["RUNNING", "REQUEUED", "PENDING", "RUNNING", "COMPLETING"], job)
    assert slurm_jobs.wait_for_job(job, poll_s=0.01) == (True, "")
    assert asked == ["7_1"] * 5


@pytest.mark.parametrize("state, said", [("CANCELLED", "Slurm job 7_1 was cancelled without a result"),
                                         ("FAILED", "Slurm job 7_1 ended FAILED without a result"),
                                         (None, "Slurm job 7_1 is unknown to scontrol and sacct")])
def test_job_ended_without_result_is_over_after_the_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         state, said) -> None:
    answers(monkeypatch, ["RUNNING", state])
    finished, note = slurm_jobs.wait_for_job(fake_job(tmp_path), poll_s=0.01)
    assert not finished and note.startswith(said), note


def test_a_requeue_after_an_end_restarts_the_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAILED then PENDING (a requeue on node failure): not over; the result comes later."""
    job = fake_job(tmp_path)
    monkeypatch.setattr(slurm_jobs, "RESULT_GRACE_S", 0.2)
    states = iter(["FAILED", "PENDING", "PENDING", "RUNNING"])

    def state(job_id: str) -> tuple:
        s = next(states, None)
        if s is None:
            job.paths.result_pickle.write_bytes(b"")
            s = "COMPLETED"
        return s, ""

    monkeypatch.setattr(slurm_jobs, "slurm_job_state", state)
    assert slurm_jobs.wait_for_job(job, poll_s=0.01) == (True, "")


def run_folder(root: Path, name: str, state: str | None, error: str | None = None) -> Path:
    d = root / name
    d.mkdir()
    if state is not None:
        (d / "status.json").write_text(json.dumps({"state": state, "error": error}))
    return d


def test_sweep_exit_status_names_every_run_not_done(tmp_path: Path) -> None:
    done = run_folder(tmp_path, "a", "done")
    failed = run_folder(tmp_path, "b", "failed", "RuntimeError: boom\n  more lines " + "x" * 300)
    cancelled = run_folder(tmp_path, "c", "interrupted")
    clash = run_folder(tmp_path, "d", "done")
    never = tmp_path / "e"
    assert sweep_exit_status([SweepRun(done)]) == (0, "")
    code, line = sweep_exit_status([SweepRun(done), SweepRun(failed), SweepRun(cancelled, scheduler_note="Slurm job 3 was cancelled"),
                                    SweepRun(clash, failure="finished run of another config"), SweepRun(never)])
    assert code == 1 and "\n" not in line and "4 of 5 run(s) not done" in line
    assert f"{failed} (failed: RuntimeError: boom more lines xxx" in line and "..." in line
    assert f"{cancelled} (interrupted: Slurm job 3 was cancelled)" in line
    assert f"{clash} (failed: finished run of another config)" in line and f"{never} (not started)" in line
    assert str(done) + " " not in line


def test_recorded_runs_keep_the_last_record_per_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcome, "_RUNS", {})
    outcome.record_run(tmp_path / "a", failure="x")
    outcome.record_run(tmp_path / "a")
    assert outcome.recorded_runs() == [SweepRun(tmp_path / "a")]
