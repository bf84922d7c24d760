"""The exit status of a sweep command: 0 only when every run of the command is done, else 1 with a
line naming each run that is not (docs/sweeps.md, "Exit status").

The runs are recorded where the command learns of them: Hydra's basic launcher runs the jobs in the
command's own process (gn_detect/engine/launch.py records each), the Slurm launcher
(hydra_plugins/gn_detect_slurm/launcher.py) records each job once Slurm has ended it, with what Slurm said.
A run's state is then read from its status.json, the one record of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gn_detect.runs import read_status


@dataclass
class SweepRun:
    run_dir: Path
    # Why the run is not done whatever its status.json says (a clash with a finished run of another
    # config), or what the scheduler said of a job that left no result; "" when nothing.
    failure: str = ""
    scheduler_note: str = ""


WHY_CHARS = 160  # of each run's reason in the one last line (status.json and the report hold it all)
_RUNS: dict[Path, SweepRun] = {}


def record_run(run_dir: Path, failure: str = "", scheduler_note: str = "") -> None:
    _RUNS[Path(run_dir)] = SweepRun(Path(run_dir), failure, scheduler_note)


def recorded_runs() -> list[SweepRun]:
    return list(_RUNS.values())


def not_done(runs: list[SweepRun]) -> list[str]:
    """One line per run that is not done: folder, state, and why."""
    lines = []
    for r in runs:
        status = read_status(r.run_dir)
        state = "failed" if r.failure else str(status.get("state") or "not started")
        if state == "done":
            continue
        why = " ".join(str(r.failure or r.scheduler_note or status.get("error") or "").split())
        why = why if len(why) <= WHY_CHARS else why[:WHY_CHARS - 3] + "..."
        lines.append(f"{r.run_dir} ({state}{': ' + why if why else ''})")
    return lines


def sweep_exit_status(runs: list[SweepRun]) -> tuple[int, str]:
    """(0, "") when every run is done; else (1, one line naming the runs that are not)."""
    missing = not_done(runs)
    if not missing:
        return 0, ""
    return 1, (f"[gn-detect] sweep not complete: {len(missing)} of {len(runs)} run(s) not done: "
               + "; ".join(missing) + " (the report names them too; rerun the same command to resume)")
