"""Hydra entry points of tools/export.py and tools/predict.py: pre-flight of the command line
(one line and exit status 2 for a bad key or value), then the job; a refusal found while loading
(missing checkpoint, unreadable file, bad input) is one line and exit status 2 as well."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gn_detect.config import exit_failed, exit_with_one_line
from gn_detect.preflight import preflight
from gn_detect.engine.checkpoint import CheckpointError
from gn_detect.engine.signals import STOP_SIGNALS, StopRequested, exit_code

from .export import export_run
from .predict import predict_run
from .options import validate_export_config, validate_predict_config

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
_REFUSALS = (ValueError, FileNotFoundError, CheckpointError, RuntimeError)


def _job(validate: Callable[[DictConfig], None], run: Callable[..., Any], cfg: DictConfig) -> Any:
    """``run(cfg)`` after ``validate(cfg)``, from the folder the command was started in; a
    refusal is one line and exit status 2, a write failing while working one line and status 1."""
    def stop(signum: int, frame: Any) -> None:
        raise StopRequested(f"signal {signal.Signals(signum).name}", exit_code(signum))

    old = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        validate(cfg)
        return run(cfg, base_dir=Path(HydraConfig.get().runtime.cwd))
    except StopRequested as exc:  # as tools/evaluate.py: one line, 128 + the signal; results are written
        print(f"gn-detect: {run.__name__.removesuffix('_run')} interrupted ({exc.reason}): no result file was "
              "written (each is written whole, at the end; images drawn so far are complete files). Fix: run the "
              "command again", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except _REFUSALS as exc:
        exit_with_one_line(exc)
    except OSError as exc:  # a write that failed while working (disk full, a folder gone): exit status 1
        exit_failed(exc, f"{run.__name__.removesuffix('_run')} failed")
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@hydra.main(config_path=CONFIG_DIR, config_name="export", version_base="1.3")
def _export_main(cfg: DictConfig) -> Any:
    check = _job(validate_export_config, export_run, cfg)
    worst = max((d["max_rel"] for pair in check["head_outputs"].values() for d in pair.values()), default=0.0)
    print(f"export: {check['checkpoint']} -> {check['out_dir']}; "
          f"folded {check['fold']['folded']} norms, {len(check['fold']['kept'])} kept; "
          f"max relative head difference {worst:.2e}; check {'passed' if check['passed'] else 'FAILED'}")
    if not check["passed"]:
        print("gn-detect: export check failed (see export_check.json)", file=sys.stderr)
        sys.exit(1)
    return check


@hydra.main(config_path=CONFIG_DIR, config_name="predict", version_base="1.3")
def _predict_main(cfg: DictConfig) -> Any:
    summary = _job(validate_predict_config, predict_run, cfg)
    print(f"predict: {summary['images']} images, {summary['detections']} detections "
          f"({summary['thresholds']}), {summary['skipped']} files skipped (see images.json) -> {summary['output']}")
    return summary


def export_main() -> Any:
    """tools/export.py."""
    preflight(CONFIG_DIR, "export", validate_export_config)
    return _export_main()


def predict_main() -> Any:
    """tools/predict.py."""
    preflight(CONFIG_DIR, "predict", validate_predict_config)
    return _predict_main()
