"""Hydra entry points of tools/train.py and tools/evaluate.py: config pre-flight, run folders,
multirun skip/resume, failure isolation, exit status. The only engine module that touches Hydra.

Exit status of tools/train.py (README.md: Exit statuses). A single run: 0 done; 1 failed after
the start (one line for a failure its message explains: data, non-finite loss, out of memory,
disk full; status.json 'failed' with it); 2 refused at start (the pre-flight's lines, a refused
resume, run folder in use, unusable checkpoint); 128 + the signal number (143 SIGTERM, 130
SIGINT) when stopped by a signal at any stage, the final evaluation included -- after status
'interrupted' is written and Hydra has finished the job; the last line says what is kept. A
sweep: 0 when every run ended done; 1 when any run of the command failed or did not finish
(failures are recorded, the sweep goes on, the report and a last line name them;
gn_detect/sweeps/outcome.py); 2 refused at start. A stopped run also stops its
sweep: the remaining runs are skipped (the sweep report is still written) and the sweep exits
with that status; rerunning the same command resumes it.

Under a submitit launcher (``hydra/launcher=submitit_local|submitit_slurm|slurm_1gpu|slurm_8gpu``)
every run is its own process (or Slurm job): the torchrun variables come from the scheduler
(dist.env_from_scheduler), and a run stopped by the pre-emption signal (SIGUSR2) after saving
``last.pth`` is handed to submitit, which re-submits it; the new job resumes from the checkpoint.
A run stopped by another signal ends its job without a result; the Slurm launcher
(gn_detect/sweeps/slurm_jobs.py) asks Slurm whether it was requeued or cancelled.

Multirun folders (``hydra.sweep.subdir: ${gn_sweep_subdir:}``) are named by the swept keys only
(:func:`sweep_subdir`); the fixed overrides are in the sweep folder's ``multirun.yaml``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gn_detect.config import ConfigError, exit_failed, exit_with_one_line, one_line, validate_evaluate_config, \
    validate_train_config
from gn_detect.data.json_checks import ParsedFiles
from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import CheckpointError
from gn_detect.engine.signals import STOP_SIGNALS, StopRequested, exit_code, hand_over_preemption, preempt_signal
from gn_detect.engine.evaluate import NothingEvaluated, evaluate_checkpoint
from gn_detect.engine.hydra_writes import disk_full_in_one_line
from gn_detect.engine.train_loop import BatchTooLargeError, NonFiniteLossError
from gn_detect.engine.trainer import ResumeRefusedError, RunFolderInUse, train
from gn_detect.io import DiskFullError, is_disk_full, write_text_atomic
from gn_detect.runs import RunFolder, finished, flatten, read_status, write_status
from gn_detect.runs.keys import FROM_THE_WEIGHTS, RESULT_NEUTRAL
from gn_detect.preflight import evaluate_problems, preflight, train_problems
from gn_detect.sweeps.outcome import record_run, recorded_runs, sweep_exit_status

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
log = logging.getLogger("gn_detect")

# Refusals at the start of a single run: one line and exit status 2, no traceback.
_START_REFUSALS = (ConfigError, RunFolderInUse, CheckpointError)
# Failures that leave a run folder as they found it (it belongs to another process or run).
_NOT_OURS = (RunFolderInUse, ResumeRefusedError)


@dataclass
class _Outcome:
    """The exit status tools/train.py ends with once Hydra has finished (module docstring)."""

    exit_code: int = 0
    reason: str = ""


_OUTCOME = _Outcome()

# Cached, so the run folder name is computed once per process even if resolved twice.
if not OmegaConf.has_resolver("gn_uid"):
    OmegaConf.register_new_resolver("gn_uid", lambda: uuid.uuid4().hex[:6], use_cache=True)

# The longest run-folder name (one path component; most file systems allow 255 bytes).
MAX_DIRNAME = 240


def safe_dirname(name: str, max_len: int = MAX_DIRNAME) -> str:
    """A multirun subdir name that is one deterministic folder: ``/`` (from path-valued
    overrides such as ``data.root=/data/coco``) becomes ``%2F``, and a name longer than
    ``max_len`` is cut and suffixed with a hash of the whole name. The same overrides always
    give the same name, so re-running a sweep still finds (and skips or resumes) its runs."""
    name = str(name).replace("%", "%25").replace(os.sep, "%2F")
    if os.altsep:
        name = name.replace(os.altsep, "%2F")
    name = re.sub(r"[\x00-\x1f]", "_", name) or "default"
    if name in (".", ".."):
        name = name.replace(".", "%2E")
    if len(name.encode("utf-8")) > max_len:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]
        head = name.encode("utf-8")[: max_len - 12].decode("utf-8", "ignore")
        name = f"{head}--{digest}"
    return name


if not OmegaConf.has_resolver("gn_dirname"):
    OmegaConf.register_new_resolver("gn_dirname", safe_dirname)


def _parse(lines: list[str]) -> list[Any]:
    return OverridesParser.create().parse_overrides([str(x) for x in lines])


def swept_keys(params: dict[str, Any], command_line: list[str]) -> set[str]:
    """The keys a sweep varies, decided as Hydra's BasicSweeper does: ``hydra.sweeper.params``
    (a study's) first, then the command line; a key is swept when its last value is a sweep
    (``a,b``, ``range(..)``, ``choice(..)``). ``seed=0`` on the command line un-sweeps a study's seed."""
    final: dict[str, bool] = {}
    for ov in _parse([f"{k}={v}" for k, v in params.items()] + list(command_line)):
        final[ov.key_or_group] = ov.is_sweep_override()
    return {k for k, swept in final.items() if swept}


def _sweep_record(hc: Any) -> tuple[dict[str, Any], list[str]]:
    """(sweeper params, command-line overrides) of the whole sweep: from ``multirun.yaml``, which
    the sweeper writes into the sweep folder before any job starts (a job sees only its own values);
    without it (a config composed outside a sweep), the job's own sweeper params and no command line."""
    sweep_dir = Path(str(hc.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(str(hc.runtime.cwd)) / sweep_dir
    record = sweep_dir / "multirun.yaml"
    source = OmegaConf.load(record).hydra if record.is_file() else None
    params = (source or hc).sweeper.get("params") or {}
    command_line = list(source.overrides.task) if source is not None else []
    return OmegaConf.to_container(params) if OmegaConf.is_config(params) else dict(params), command_line


def sweep_subdir(_root_: Any) -> str:
    """``${gn_sweep_subdir:}``: a run folder named by the job's values of the swept keys only,
    sorted by key (``norm=gn,seed=1``); keys in ``hydra.job.config.override_dirname.exclude_keys``
    are left out. The same command gives the same names (re-running skips finished runs), and the
    names of one sweep differ in some swept value. A multirun with nothing swept is named by its job
    number (``0``). Made one safe path component by :func:`safe_dirname`."""
    hc = _root_.hydra
    params, command_line = _sweep_record(hc)
    swept = swept_keys(params, command_line)
    excluded = set(hc.job.config.override_dirname.exclude_keys)
    parts = sorted((ov.key_or_group, f"{ov.key_or_group}={ov.get_value_element_as_str()}")
                   for ov in _parse(list(hc.overrides.task))
                   if ov.key_or_group in swept and ov.key_or_group not in excluded)
    # hydra.job.num is unset in a config composed outside a sweep (a sweep's own number, 0, then)
    name = ",".join(p for _, p in parts) if parts else str(OmegaConf.select(hc, "job.num", default=0))
    return safe_dirname(name)


if not OmegaConf.has_resolver("gn_sweep_subdir"):
    OmegaConf.register_new_resolver("gn_sweep_subdir", sweep_subdir)


def _split(override: str) -> tuple[str, Any]:
    """``"+seed=2" -> ("seed", 2)``: the key as Hydra's ``key_or_group`` names it and the value as
    YAML reads it (numbers and booleans typed; anything that is not a scalar kept as written)."""
    key, _, text = override.lstrip("+~").partition("=")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:  # Hydra syntax YAML does not read (e.g. interpolations): as written
        value = None
    return key.split("@")[0], value if isinstance(value, (bool, int, float, str)) else text


def _hparams_of(run_dir: Path) -> dict[str, Any]:
    """:func:`run_hparams`, or {} with a warning when Hydra's records cannot be read: the HParams
    row is a view, never a reason for a run not to train."""
    try:
        return run_hparams(run_dir)
    except Exception as exc:  # noqa: BLE001 - a hand-edited or foreign multirun.yaml
        log.warning("TensorBoard HParams of %s not written (%s: %s)", run_dir, type(exc).__name__, exc)
        return {}


def _job_record(run_dir: Path) -> dict[str, Any]:
    """The ``hydra`` section Hydra wrote for a job into ``<run>/.hydra/hydra.yaml`` ({} without one)."""
    job_file = run_dir / ".hydra" / "hydra.yaml"
    if not job_file.is_file():
        return {}
    return (yaml.safe_load(job_file.read_text(encoding="utf-8")) or {}).get("hydra") or {}


def run_hparams(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's row in TensorBoard's HParams view: a sweep run's :func:`swept_values`; a single run's
    command-line overrides (``hydra.overrides.task``, less the keys folder names leave out:
    ``hydra.job.config.override_dirname.exclude_keys``), so single runs side by side under one
    ``--logdir`` differ in the columns their commands set; {} without Hydra's records."""
    run_dir = Path(run_dir)
    job = _job_record(run_dir)
    if job.get("mode") == "MULTIRUN":
        return swept_values(run_dir)
    if not job:
        return {}
    excluded = set(job["job"]["config"]["override_dirname"]["exclude_keys"])
    return {key: value for key, value in map(_split, job["overrides"]["task"]) if key not in excluded}


def swept_values(run_dir: str | os.PathLike) -> dict[str, Any]:
    """{swept key: this run's value} of a run of a Hydra multirun (numbers and booleans typed,
    anything else as written), for its row in TensorBoard's HParams view (the trainer hands them to
    the metric writer); {} for a run outside a multirun or without Hydra's records. Read from what
    Hydra leaves on disk (``<run>/.hydra/hydra.yaml``, ``<sweep>/multirun.yaml``), so any process
    that trains a run of a sweep finds them; the keys are :func:`swept_keys`, the words of the
    folder names."""
    run_dir = Path(run_dir)
    job = _job_record(run_dir)
    record = next((p / "multirun.yaml" for p in run_dir.parents if (p / "multirun.yaml").is_file()), None)
    if not job or record is None or job.get("mode") != "MULTIRUN":
        return {}
    sweep = (yaml.safe_load(record.read_text(encoding="utf-8")) or {}).get("hydra") or {}
    excluded = set(job["job"]["config"]["override_dirname"]["exclude_keys"])
    swept = swept_keys((sweep.get("sweeper") or {}).get("params") or {}, sweep["overrides"]["task"]) - excluded
    return {key: value for key, value in map(_split, job["overrides"]["task"]) if key in swept}


def _required(hint: str) -> Any:
    """``${gn_required:'key=example'}``: a value a config cannot default (e.g. a checkpoint
    path). Overriding the key replaces the interpolation; resolving it unset fails the run at
    start-up with this message. (A plain ``???`` would not do: merging ``???`` into a config
    keeps the value already there.)"""
    raise ValueError(f"this config needs a value that has no default: give {hint} on the command line")


if not OmegaConf.has_resolver("gn_required"):
    OmegaConf.register_new_resolver("gn_required", _required)


def _record_failure(cfg: DictConfig, run_dir: Path, exc: BaseException) -> None:
    """Make a run that failed before the trainer wrote its folder (e.g. a config check at
    start-up) visible to the sweep report: config.yaml and status.json ``failed``."""
    if not gdist.is_main_process():
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not RunFolder(run_dir).config.exists():
            try:
                text = OmegaConf.to_yaml(cfg, resolve=True)
            except Exception:  # noqa: BLE001 - an unresolvable config is itself a start-up failure
                text = OmegaConf.to_yaml(cfg, resolve=False)
            write_text_atomic(RunFolder(run_dir).config, text)
        if read_status(run_dir).get("state") != "failed":
            write_status(run_dir, "failed", iteration=0, error=f"{type(exc).__name__}: {exc}")
    except Exception as rec_exc:  # noqa: BLE001 - the failure itself is already logged
        log.error("could not record the failure in %s: %s", run_dir, rec_exc)


def _rank0_run_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """Under torchrun every rank composes its own config, so the default run folder pattern (a
    time stamp and a random suffix) names a different folder on each rank. All ranks use rank 0's;
    the folder Hydra made for this rank alone is removed, its log kept as <run dir>/<name>.rank<k>.log.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return run_dir
    gdist.init_distributed(cfg.get("dist_backend"))  # train() reuses the group
    shared = Path(gdist.all_gather_object(str(run_dir.resolve()))[0])
    if shared == run_dir.resolve():
        return run_dir
    rank = gdist.get_rank()
    for log_file in run_dir.glob("*.log"):  # still open by the logging handler: rename keeps it going
        os.replace(log_file, shared / f"{log_file.stem}.rank{rank}.log")
    if {p.name for p in run_dir.iterdir()} <= {".hydra"}:
        shutil.rmtree(run_dir, ignore_errors=True)
    return shared


def _note_interruption(result: Any, run_dir: Path) -> None:
    """A run stopped early (a signal): the command exits with its status, a sweep stops."""
    if isinstance(result, dict) and result.get("interrupted"):
        _OUTCOME.exit_code = int(result.get("exit_code") or 1)
        _OUTCOME.reason = f"{run_dir} was interrupted" + (f": {result['message']}" if result.get("message") else "")


def _handed_to_scheduler(result: Any) -> bool:
    """A run stopped by the pre-emption signal, checkpoint saved: submitit's handler (installed
    before training) re-submits the job and exits on rank 0 (other ranks return). False outside
    submitit, where the stop counts as an ordinary interruption (exit status 140)."""
    if not (isinstance(result, dict) and result.get("interrupted")):
        return False
    signum = preempt_signal()
    if result.get("exit_code") != exit_code(signum):
        return False
    log.warning("pre-empted: checkpoint saved, handing the job back to the scheduler to re-submit it")
    return hand_over_preemption(signum)


# Failures after a single run started that the run's own message explains: one line and exit
# status 1 (status.json says failed with the same message); anything else keeps its traceback.
_RUN_FAILURES = (ValueError, NonFiniteLossError, BatchTooLargeError, DiskFullError)


@contextlib.contextmanager
def _stop_signals_raise() -> Any:
    """Until the trainer's SignalHandler takes over (and after it gives the signals back), SIGTERM
    and SIGINT raise :class:`StopRequested`: a run stopped while its data are checked or its model
    built ends 'interrupted' with 128 + the signal number, never killed with status 'running'."""
    def handle(signum: int, frame: Any) -> None:
        raise StopRequested(f"signal {signal.Signals(signum).name}", exit_code(signum))

    try:
        old = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread: signals cannot be caught here
        old = {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _single_run(cfg: DictConfig, run_dir: Path, base_dir: Path, parsed: ParsedFiles | None) -> Any:
    """One run; its exit status (README: Exit statuses) is left in _OUTCOME: 2 refused at start,
    1 failed after the start (one line for the failures of _RUN_FAILURES), 128 + signal when
    stopped, and the last output line says what is kept."""
    try:
        with _stop_signals_raise():
            run_dir = _rank0_run_dir(cfg, run_dir)
            result = train(cfg, run_dir, base_dir, parsed=parsed, hparams=_hparams_of(run_dir))
    except _START_REFUSALS as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"gn-detect: {one_line(exc)}", file=sys.stderr)
        _OUTCOME.exit_code, _OUTCOME.reason = 2, "start-up refused"
        return None
    except StopRequested as stop:  # after train() returned: its status is written
        _OUTCOME.exit_code, _OUTCOME.reason = stop.exit_code, f"{run_dir}: stopped by {stop.reason}"
        return None
    except Exception as exc:  # noqa: BLE001 - status.json already says failed, with this error
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (isinstance(exc, _RUN_FAILURES) or is_disk_full(exc)):
            raise
        last = RunFolder(run_dir).last
        kept = f"; {last} is kept" if last.is_file() else ""
        state = read_status(run_dir).get("state")  # what is on disk: writing "failed" may itself have failed
        said = "says failed" if state == "failed" else f"could not be updated and says {state or 'nothing'}"
        _OUTCOME.exit_code = 1
        _OUTCOME.reason = f"run failed: {one_line(exc)} (status.json in {run_dir} {said}{kept})"
        return None
    if not _handed_to_scheduler(result):
        _note_interruption(result, run_dir)
    return result


def finished_run_clash(cfg: DictConfig, run_dir: Path) -> str | None:
    """None when the finished run in ``run_dir`` was made by this job's config (its config.yaml
    equals the resolved ``cfg`` up to gn_detect/runs/keys.py's ``RESULT_NEUTRAL`` keys; ``solver.ims_per_batch`` left
    null here is derived there); else a one-line error naming the differing keys and the fix.
    Folder names come from the swept keys only, so two commands into one sweep folder that
    differ in a fixed value land in the same folders."""
    try:
        old = OmegaConf.to_container(OmegaConf.load(RunFolder(run_dir).config), resolve=False)
        new = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable record cannot be taken for this job
        return f"{run_dir} holds a finished run whose config.yaml cannot be compared ({type(exc).__name__}: {exc})"
    a, b = flatten(old), flatten(new)
    for key in FROM_THE_WEIGHTS:  # null now: resolved from the same weights file into config.yaml then
        if b.get(key) is None:
            a.pop(key, None), b.pop(key, None)
    if b.get("solver.ims_per_batch") is None:
        a.pop("solver.ims_per_batch", None)
        b.pop("solver.ims_per_batch", None)
    keys = sorted(k for k in set(a) | set(b)
                  if not RESULT_NEUTRAL.match(k) and a.get(k, "<missing>") != b.get(k, "<missing>"))
    if not keys:
        return None
    shown = ", ".join(f"{k} ({a.get(k, '<missing>')!r} there, {b.get(k, '<missing>')!r} now)" for k in keys[:5])
    more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
    return (f"the folder holds a finished run of another config: {shown}{more}; folder names come from the swept "
            "keys only, so use another hydra.sweep.dir or sweep_name for this command (or sweep the differing key)")


def run_job(cfg: DictConfig, parsed: ParsedFiles | None = None) -> Any:
    """One job of tools/train.py (a single run, or one run of a sweep); ``parsed``: the annotation
    files the pre-flight parsed for a single run."""
    gdist.env_from_scheduler()  # a submitit / srun task: torchrun's variables from the scheduler
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    base_dir = Path(hc.runtime.cwd)  # the launch folder: relative data paths resolve against it
    if hc.mode != RunMode.MULTIRUN:
        return _single_run(cfg, run_dir, base_dir, parsed)
    # A sweep: finished runs are skipped, others resume from their last checkpoint, and one
    # failure is reported at once without stopping the remaining runs; a signal stops the sweep.
    if _OUTCOME.exit_code:
        log.warning("skip (sweep stopped: %s): %s", _OUTCOME.reason, run_dir)
        record_run(run_dir, failure=f"not started: {_OUTCOME.reason}")
        return None
    if finished(run_dir):
        clash = finished_run_clash(cfg, run_dir)
        record_run(run_dir, failure=clash or "")
        if clash is None:
            log.info("skip (already done): %s", run_dir)
        else:
            log.error("FAILED run %s: %s", run_dir, clash)
            print(f"[gn-detect] FAILED run {run_dir}: {clash}", flush=True)
        return None
    record_run(run_dir)
    try:
        result = train(cfg, run_dir, base_dir, hparams=_hparams_of(run_dir))
    except Exception as exc:  # noqa: BLE001 - recorded in status.json, sweep goes on
        known = isinstance(exc, _NOT_OURS) or is_disk_full(exc)  # one-line causes: no traceback
        log.error("FAILED run %s: %s: %s%s", run_dir, type(exc).__name__, exc,
                  "" if known else "\n" + traceback.format_exc())
        if not isinstance(exc, _NOT_OURS):
            _record_failure(cfg, run_dir, exc)
        else:  # not this command's run (another holds or owns it): not done by this command, whatever it says
            record_run(run_dir, failure=f"{type(exc).__name__}: {exc}")
        print(f"[gn-detect] FAILED run {run_dir}: {type(exc).__name__}: {exc}", flush=True)
        return None
    if not _handed_to_scheduler(result):
        _leave_scheduler_job_unfinished(result)
        _note_interruption(result, run_dir)
    return result


def _leave_scheduler_job_unfinished(result: Any) -> None:
    """In a submitit Slurm job (a job of a sweep), a run stopped by a signal other than the
    pre-emption one (``scancel``, ``scontrol requeue``, Slurm's REQUEUE pre-emption: SIGTERM) ends
    the job process with 128 + the signal, before submitit could record success: the sweep command
    then asks Slurm what became of the job (gn_detect/sweeps/slurm_jobs.py). A requeued job
    resumes from last.pth."""
    in_slurm_job = "SUBMITIT_FOLDER" in os.environ and "SLURM_JOB_ID" in os.environ  # not submitit_local
    if in_slurm_job and isinstance(result, dict) and result.get("interrupted"):
        log.warning("stopped by a signal: ending the job without a result (exit %s)", result.get("exit_code"))
        raise SystemExit(int(result.get("exit_code") or 1))


def _sweep_exit_status() -> int:
    """The exit status of a sweep command whose runs all ended without a signal to the command:
    0 when every run is done, else 1 and one line naming the others (gn_detect/sweeps/outcome.py)."""
    code, line = sweep_exit_status(recorded_runs())
    if line:
        print(line, flush=True)
    return code


def _evaluate(cfg: DictConfig, parsed: ParsedFiles | None) -> Any:
    try:
        validate_evaluate_config(cfg)
        metrics = evaluate_checkpoint(cfg, base_dir=Path(HydraConfig.get().runtime.cwd), parsed=parsed)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        exit_with_one_line(exc)
    except (NothingEvaluated, OSError) as exc:  # no image readable, or a write failing after the start
        exit_failed(exc, "evaluation failed")  # (full disk, a folder gone): one line, exit status 1
    return metrics


def main() -> Any:
    """tools/train.py: one-line config errors before Hydra starts, then the run or sweep, then
    the exit status (module docstring)."""
    parsed = preflight(CONFIG_DIR, "config", validate_train_config, train_problems).files
    with disk_full_in_one_line():  # Hydra's own multirun.yaml and .hydra/ writes
        result = hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")(
            lambda cfg: run_job(cfg, parsed))()
    if _OUTCOME.exit_code:
        if _OUTCOME.exit_code != 2:  # a refusal has printed its line; otherwise say what happened last
            print(f"gn-detect: {_OUTCOME.reason}", file=sys.stderr, flush=True)
        sys.exit(_OUTCOME.exit_code)
    if _sweep_exit_status():
        sys.exit(1)
    return result


def evaluate_main() -> Any:
    """tools/evaluate.py."""
    parsed = preflight(CONFIG_DIR, "evaluate", validate_evaluate_config, evaluate_problems).files
    with disk_full_in_one_line():
        return hydra.main(config_path=CONFIG_DIR, config_name="evaluate", version_base="1.3")(
            lambda cfg: _evaluate(cfg, parsed))()
