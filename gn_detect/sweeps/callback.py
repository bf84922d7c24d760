"""Hydra callback: write the sweep report when a multirun ends."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gn_detect.sweeps.sweep_report import write_sweep_report

log = logging.getLogger(__name__)


class SweepReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_absolute():
            sweep_dir = Path(config.hydra.runtime.cwd) / sweep_dir
        try:
            write_sweep_report(sweep_dir)
        except Exception as exc:  # noqa: BLE001 - the runs are safe on disk; the report can be redone
            log.error("sweep report failed (%s); rerun: python tools/sweep_report.py %s", exc, sweep_dir)
