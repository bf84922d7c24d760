"""Hydra entry point for tools/train.py: run folders, multirun skip/resume, failure isolation."""
from __future__ import annotations

import logging
import traceback
import uuid
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
log = logging.getLogger("gn_detect")

# Cached, so the run folder name is computed once per process even if resolved twice.
if not OmegaConf.has_resolver("gn_uid"):
    OmegaConf.register_new_resolver("gn_uid", lambda: uuid.uuid4().hex[:6], use_cache=True)


def run_job(cfg: DictConfig) -> Any:
    from gn_detect.engine.trainer import is_finished, train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    base_dir = Path(hc.runtime.cwd)  # the launch folder: relative data paths resolve against it
    if hc.mode != RunMode.MULTIRUN:
        return train(cfg, run_dir, base_dir)
    # A sweep: finished runs are skipped, others resume from their last checkpoint, and one
    # failure is reported at once without stopping the remaining runs.
    if is_finished(run_dir):
        log.info("skip (already done): %s", run_dir)
        return None
    try:
        return train(cfg, run_dir, base_dir)
    except Exception as exc:  # noqa: BLE001 - recorded in status.json, sweep goes on
        log.error("FAILED run %s: %s: %s\n%s", run_dir, type(exc).__name__, exc, traceback.format_exc())
        print(f"[gn-detect] FAILED run {run_dir}: {type(exc).__name__}: {exc}", flush=True)
        return None


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    return run_job(cfg)
