"""Hydra entry points of tools/train.py and tools/evaluate.py: config pre-flight, run folders,
multirun skip/resume, failure isolation, exit status. The only engine module that touches Hydra.

Exit status of tools/train.py: 0 when every run ended done (or, in a sweep, done or failed:
failures are recorded and the sweep goes on); 2 after a one-line start-up refusal of a single
run (config error, refused resume, run folder in use, unusable checkpoint); 128 + the signal
number (143 SIGTERM, 130 SIGINT) when a run was stopped by a signal -- after its checkpoint and
status 'interrupted' are written and Hydra has finished the job. A stopped run also stops its
sweep: the remaining runs are skipped (the sweep report is still written) and the sweep exits
with that status; rerunning the same command resumes it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gn_detect.config import ConfigError, one_line, preflight, validate_evaluate_config, validate_train_config
from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import CheckpointError
from gn_detect.engine.evaluate import evaluate_checkpoint
from gn_detect.engine.trainer import ResumeRefusedError, RunFolderInUse, is_finished, train
from gn_detect.engine.writers import read_status, write_status

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
        if not (run_dir / "config.yaml").exists():
            try:
                text = OmegaConf.to_yaml(cfg, resolve=True)
            except Exception:  # noqa: BLE001 - an unresolvable config is itself a start-up failure
                text = OmegaConf.to_yaml(cfg, resolve=False)
            (run_dir / "config.yaml").write_text(text)
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
        _OUTCOME.reason = f"{run_dir} was interrupted"


def _single_run(cfg: DictConfig, run_dir: Path, base_dir: Path) -> Any:
    try:
        result = train(cfg, _rank0_run_dir(cfg, run_dir), base_dir)
    except _START_REFUSALS as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"gn-detect: {one_line(exc)}", file=sys.stderr)
        _OUTCOME.exit_code, _OUTCOME.reason = 2, "start-up refused"
        return None
    _note_interruption(result, run_dir)
    return result


def run_job(cfg: DictConfig) -> Any:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    base_dir = Path(hc.runtime.cwd)  # the launch folder: relative data paths resolve against it
    if hc.mode != RunMode.MULTIRUN:
        return _single_run(cfg, run_dir, base_dir)
    # A sweep: finished runs are skipped, others resume from their last checkpoint, and one
    # failure is reported at once without stopping the remaining runs; a signal stops the sweep.
    if _OUTCOME.exit_code:
        log.warning("skip (sweep stopped: %s): %s", _OUTCOME.reason, run_dir)
        return None
    if is_finished(run_dir):
        log.info("skip (already done): %s", run_dir)
        return None
    try:
        result = train(cfg, run_dir, base_dir)
    except Exception as exc:  # noqa: BLE001 - recorded in status.json, sweep goes on
        log.error("FAILED run %s: %s: %s\n%s", run_dir, type(exc).__name__, exc, traceback.format_exc())
        if not isinstance(exc, _NOT_OURS):
            _record_failure(cfg, run_dir, exc)
        print(f"[gn-detect] FAILED run {run_dir}: {type(exc).__name__}: {exc}", flush=True)
        return None
    _note_interruption(result, run_dir)
    return result


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _train_main(cfg: DictConfig) -> Any:
    return run_job(cfg)


@hydra.main(config_path=CONFIG_DIR, config_name="evaluate", version_base="1.3")
def _evaluate_main(cfg: DictConfig) -> Any:
    try:
        validate_evaluate_config(cfg)
        metrics = evaluate_checkpoint(cfg, base_dir=Path(HydraConfig.get().runtime.cwd))
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"gn-detect: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    return metrics


def main() -> Any:
    """tools/train.py: one-line config errors before Hydra starts, then the run or sweep, then
    the exit status (module docstring)."""
    preflight(CONFIG_DIR, "config", validate_train_config)
    result = _train_main()
    if _OUTCOME.exit_code:
        sys.exit(_OUTCOME.exit_code)
    return result


def evaluate_main() -> Any:
    """tools/evaluate.py."""
    preflight(CONFIG_DIR, "evaluate", validate_evaluate_config)
    return _evaluate_main()
