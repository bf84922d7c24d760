"""How the sweep command waits for its Slurm jobs, under the project's Slurm launcher
(``hydra/launcher=submitit_slurm|slurm_1gpu|slurm_8gpu``; the class is
hydra_plugins/gn_detect_slurm/launcher.py, where Hydra requires launchers to live): the plugin's,
except the waiting.

The plugin waits with submitit, which polls ``sacct``: without an accounting database a job that
died without writing its result (SIGKILL, out of memory, a lost node) is waited for forever. Here
the command asks Slurm itself (``scontrol show job``, then ``sacct`` once the controller has
forgotten the job) and:

* a job with a result file is over (the run is done or failed: its status.json says which);
* a job Slurm still holds (pending, running, requeued after pre-emption, a time limit or
  ``scontrol requeue``) is waited for; a requeued job resumes from ``last.pth``;
* a job Slurm has ended without a result (cancelled, failed, killed, timed out without requeue)
  is over after :data:`RESULT_GRACE_S` (a shared file system may show the file late); its run is
  named in the last line with what Slurm said, and a run whose status.json still says
  ``running`` is marked ``failed`` with it;
* a job Slurm no longer knows at all is over after :data:`UNKNOWN_GRACE_S`.

So the command ends at most about a minute after Slurm ends the last job, accounting or not;
Hydra then writes the sweep report and the command exits 0 only when every run is done
(gn_detect/sweeps/outcome.py). SIGINT or SIGTERM to the command while it waits ends it with
128 + the signal; the jobs go on in Slurm (the line says how to cancel them).
"""
from __future__ import annotations

import logging
import re
import subprocess
import time
from typing import Any




log = logging.getLogger(__name__)

POLL_S = 2.0
RESULT_GRACE_S = 10.0
UNKNOWN_GRACE_S = 60.0
# Slurm job states after which a job does not run again (a requeued job is PENDING/REQUEUED).
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"}


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def slurm_job_state(job_id: str) -> tuple[str | None, str]:
    """(state, detail) of a job as Slurm reports it: ``scontrol show job`` while the controller
    holds it (MinJobAge after its end), else ``sacct`` when there is accounting; (None, "") when
    neither knows it."""
    out = _run(["scontrol", "show", "job", "-o", job_id])
    if out:
        fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out))
        if "JobState" in fields:
            detail = f"exit code {fields.get('ExitCode', '?')}, reason {fields.get('Reason', '?')}"
            return fields["JobState"], detail
    out = _run(["sacct", "-n", "-X", "-P", "-o", "State,ExitCode", "-j", job_id])
    if out and out.strip():
        state, _, exit_code = out.strip().splitlines()[-1].partition("|")
        return state.split()[0], f"exit code {exit_code}"
    return None, ""


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the sweep command while it waited (:func:`raise_interrupted`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def wait_for_job(job: Any, poll_s: float = POLL_S) -> tuple[bool, str]:
    """Wait until ``job`` (a submitit job) is over: (True, "") when it wrote its result, else
    (False, what Slurm said). See the module docstring."""
    ended_at: float | None = None
    while True:
        if job.paths.result_pickle.exists():
            return True, ""
        state, detail = slurm_job_state(str(job.job_id))
        now = time.monotonic()
        if state is None or state in ENDED:
            ended_at = ended_at or now
            grace = UNKNOWN_GRACE_S if state is None else RESULT_GRACE_S
            if now - ended_at >= grace:
                if state is None:
                    return False, f"Slurm job {job.job_id} is unknown to scontrol and sacct, and left no result"
                verb = "was cancelled" if state == "CANCELLED" else f"ended {state}"
                return False, f"Slurm job {job.job_id} {verb} without a result ({detail})"
        else:
            ended_at = None
        time.sleep(poll_s)
