"""Fast checks of the cluster-scale pieces: run-folder names from the swept keys only
(launch.sweep_subdir), torchrun variables from Slurm / submitit (dist.env_from_scheduler), the
pre-emption signal and its hand-over to submitit (signals)."""
from __future__ import annotations

import signal

import pytest
import yaml
from omegaconf import OmegaConf

from gn_detect.engine import dist as gdist
from gn_detect.engine.launch import sweep_subdir, swept_keys
from gn_detect.engine.signals import exit_code, hand_over_preemption, preempt_signal


def test_swept_keys_follow_the_basic_sweeper() -> None:
    assert swept_keys({}, ["norm=bn,gn", "seed=0", "data.root=/d"]) == {"norm"}
    # a study's swept seed is un-swept by a single command-line value, and range() is a sweep
    assert swept_keys({"norm": "a,b", "seed": "0,1,2"}, ["seed=0", "+x=range(2)"]) == {"norm", "x"}


def _job_root(tmp_path, job_task, master_task, params=None):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir(exist_ok=True)
    hydra = {"sweep": {"dir": str(sweep_dir)}, "runtime": {"cwd": str(tmp_path)},
             "sweeper": {"params": params or {}}, "overrides": {"task": master_task},
             "job": {"override_dirname": ",".join(sorted(job_task)),
                     "config": {"override_dirname": {"exclude_keys": ["sweep_name", "study"]}}}}
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    job = OmegaConf.create({"hydra": {**hydra, "overrides": {"task": job_task}}})
    return job


def test_run_folder_is_named_by_swept_keys_only(tmp_path) -> None:
    fixed = ["data.root=/data/coco", "solver.max_iter=90000", "checkpoint.period=100000", "+study=where_gn"]
    root = _job_root(tmp_path, ["seed=1", "norm=gn", *fixed], ["norm=bn,gn", *fixed],
                     params={"seed": "0,1,2", "norm": "x,y"})
    assert sweep_subdir(root) == "norm=gn,seed=1"
    # nothing swept: named by the job number, not by every override
    root = _job_root(tmp_path, ["norm=gn", "data.root=/d"], ["norm=gn", "data.root=/d"])
    root.hydra.job.num = 0
    assert sweep_subdir(root) == "0"


def test_env_from_scheduler_reads_srun_and_keeps_torchrun() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "5",
           "SLURM_JOB_NODELIST": "gpu[03-05,07]", "SLURM_JOB_ID": "123456"}
    assert gdist.env_from_scheduler(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("5", "8", "5", "gpu03")
    assert env["MASTER_PORT"] == str(20000 + 123456 % 20000)
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "8"}
    assert not gdist.env_from_scheduler(torchrun) and torchrun["WORLD_SIZE"] == "2"
    # sbatch without srun (no step): not a multi-process launch
    assert not gdist.env_from_scheduler({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"})
    assert gdist.first_host("node1,node2") == "node1" and gdist.first_host("a-[10-12]") == "a-10"


def test_preempt_signal_and_hand_over(monkeypatch: pytest.MonkeyPatch) -> None:
    assert preempt_signal() == signal.SIGUSR2 and exit_code(preempt_signal()) == 140
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert preempt_signal() == signal.SIGUSR1
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "NOPE")
    with pytest.raises(ValueError, match="SUBMITIT_PREEMPT_SIGNAL=NOPE"):
        preempt_signal()
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL")
    calls = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        assert hand_over_preemption(signal.SIGUSR2) and calls == [signal.SIGUSR2]
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        assert not hand_over_preemption(signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, old)
