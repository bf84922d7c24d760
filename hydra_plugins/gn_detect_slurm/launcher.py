"""The project's submitit launchers: Slurm (configs/hydra/launcher/submitit_slurm.yaml),
hydra-submitit-launcher's SlurmLauncher waiting for its jobs as gn_detect/sweeps/slurm_jobs.py
describes, and local (submitit_local.yaml), the plugin's LocalLauncher recording each run for the
sweep's exit status. Hydra loads launchers from the hydra_plugins package only, hence this file."""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as PluginLocalLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as PluginSlurmLauncher
from omegaconf import OmegaConf, open_dict

from gn_detect.runs import read_status, write_status
from gn_detect.sweeps.outcome import record_run
from gn_detect.sweeps.slurm_jobs import Interrupted, raise_interrupted, wait_for_job

log = logging.getLogger(__name__)


class _RunDirs:
    """What a job's run folder is, for launchers that learn of jobs after they ran."""

    def run_dir(self, overrides: list[str], idx: int) -> Path:
        """The run folder job ``idx`` writes (its config's hydra.sweep.dir / subdir)."""
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


class LocalLauncher(_RunDirs, PluginLocalLauncher):
    """submitit_local whose runs count in the sweep's exit status (gn_detect/sweeps/outcome.py):
    each job's run folder is recorded once the jobs have returned, as the basic launcher does."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = super().launch(job_overrides, initial_job_idx)
        for k, overrides in enumerate(job_overrides):
            record_run(self.run_dir(list(overrides), initial_job_idx + k))
        return returns


class SlurmLauncher(_RunDirs, PluginSlurmLauncher):
    """hydra-submitit-launcher's SlurmLauncher, waiting as gn_detect/sweeps/slurm_jobs.py says."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = self._submit(job_overrides, initial_job_idx)
        handlers = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
        returns = []
        try:
            for k, (job, overrides) in enumerate(zip(jobs, job_overrides)):
                returns.append(self._collect(job, list(overrides), initial_job_idx + k))
        except Interrupted as stop:
            ids = " ".join(str(j.job_id) for j in jobs)
            print(f"[gn-detect] sweep interrupted by {signal.Signals(stop.signum).name} while waiting for Slurm "
                  f"job(s) {ids}; they go on in Slurm (scancel {ids} stops them), rerun the command to "
                  "collect them", file=sys.stderr, flush=True)
            sys.exit(128 + stop.signum)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        return returns

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        """Submit one job per override list, as the plugin does (one job array)."""
        import submitit

        assert self.config is not None
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]})
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        params = []
        for k, overrides in enumerate(job_overrides):
            idx = initial_job_idx + k
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return executor.map_array(self, *zip(*params))

    def _collect(self, job: Any, overrides: list[str], idx: int) -> JobReturn:
        finished, note = wait_for_job(job)
        run_dir = self.run_dir(overrides, idx)
        ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
        if finished:
            try:
                ret = job.results()[0]
            except Exception as exc:  # noqa: BLE001 - the job raised outside the run (submitit's error record)
                note = f"Slurm job {job.job_id} raised: {str(exc).strip().splitlines()[-1]}"
        if note:
            print(f"[gn-detect] run {run_dir}: {note}", flush=True)
            if run_dir.is_dir() and read_status(run_dir).get("state") == "running":
                write_status(run_dir, "failed", error=note)
        record_run(run_dir, scheduler_note=note)
        ret.status = JobStatus.COMPLETED  # the outcome is counted above, not raised by Hydra
        return ret
