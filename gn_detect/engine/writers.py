"""Run-folder writers: metrics.jsonl, TensorBoard (HParams, per-class AP and the PR figure included),
progress display, and the run's curves figure from its records.

``MetricWriter`` writes on rank 0 only (on other ranks its methods do nothing), so the trainer
calls the same methods on every rank without ``if is_main_process()`` around each call;
status.json belongs to gn_detect/runs/status.py (``write_status``, called by whichever process owns the run folder).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from gn_detect.engine import dist as gdist
from gn_detect.io import to_jsonable, write_json_atomic  # re-exported: one writer for all packages
from gn_detect.image_io import read_rgb
from gn_detect.runs import RunFolder
from gn_detect.runs.links import no_follow
from gn_detect.runs.keys import flatten
from gn_detect.runs.records import read_records

logger = logging.getLogger(__name__)

__all__ = ["MetricWriter", "write_hparams", "write_json_atomic", "to_jsonable"]

_RESERVED = ("type", "iter", "time")


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _flatten(d: dict[str, Any]) -> dict[str, float]:
    """Numeric leaves of a nested dict as ``a/b/c`` -> float (what TensorBoard can plot)."""
    out: dict[str, float] = {}
    for key, v in flatten(d, sep="/").items():
        if torch.is_tensor(v) and v.numel() == 1:
            out[key] = float(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def write_hparams(log_dir: str | os.PathLike, hparams: dict[str, Any], metrics: dict[str, Any], step: int = 0,
                  trial_id: str | None = None) -> None:
    """One run's row in TensorBoard's HParams view (``tensorboard.plugins.hparams``): the hparams
    summary (session start) with ``hparams`` (``trial_id``: the row's name) and each finite metric
    as a scalar of its own name at ``step``, in ``log_dir`` (a folder of its own, so the metric
    columns are exactly these). No experiment summary: TensorBoard then builds the table from
    every run's hparams, their union when two commands into one sweep folder sweep different keys."""
    from tensorboard.plugins.hparams import summary_v2 as hp
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(log_dir=str(log_dir))
    try:
        tb._get_file_writer().add_summary(hp.hparams_pb(hparams, trial_id=trial_id), step)
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                tb.add_scalar(name, float(value), step)
    finally:
        tb.close()


class MetricWriter:
    """metrics.jsonl + TensorBoard + progress, on rank 0 only.

    Call :meth:`train` every iteration (or only on logging iterations; both work): scalars
    are averaged over the window since the last record, and a record is written when
    ``(iter + 1) % log_period == 0``, at the last iteration, or with ``flush=True``.
    ``iter`` is the 0-based index of the iteration just completed; records, TensorBoard steps
    and log lines all carry it (a log line also counts completed iterations: "iter 3 (4/5)").
    Timing (sec/iter, ims/s, ETA) is measured between records. ``progress``: "bar" (tqdm),
    "log" (one ``logging`` INFO line per record, for log files and cluster job output),
    "none", or "auto" (a bar when stdout is a terminal, else log lines).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        log_period: int = 20,
        ims_per_batch: int | None = None,
        use_tensorboard: bool = True,
        progress: Literal["auto", "bar", "log", "none"] = "auto",
        rank: int | None = None,
        hparams: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.hparams = dict(hparams or {})  # gn_detect/engine/launch.py: run_hparams
        self.log_period = max(int(log_period), 1)
        self.ims_per_batch = ims_per_batch
        self.enabled = (gdist.get_rank() if rank is None else rank) == 0
        self.tb: Any = None  # SummaryWriter, or None without TensorBoard
        self._bar: Any = None
        self._file = None
        self._window: dict[str, list[float]] = defaultdict(list)
        self._last_iter: int | None = None  # timing reference: iteration and clock of the
        self._last_time = 0.0  # last train record (or of the first call)
        self._seen_iter: int | None = None
        if not self.enabled:
            return
        if progress == "auto":
            progress = "bar" if sys.stdout.isatty() else "log"
        self.progress = progress
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Append: a resumed run continues the same file (readers dedupe by iter if needed).
        self._file = open(RunFolder(self.run_dir).metrics, "a", encoding="utf-8", opener=no_follow)
        if use_tensorboard:
            try:  # imported here: a missing or broken TensorBoard must not stop training
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(RunFolder(self.run_dir).tb))
            except Exception as exc:  # tensorboard not installed/broken: metrics.jsonl is enough
                warnings.warn(f"TensorBoard disabled ({exc}); metrics still go to metrics.jsonl", stacklevel=2)
                self.tb = None

    # ------------------------------------------------------------------ records
    def _write(self, record: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(to_jsonable(record), allow_nan=False) + "\n")
        self._file.flush()  # each line is durable on its own: a crash loses at most one

    def _tb_scalars(self, prefix: str, scalars: dict[str, Any], step: int) -> None:
        if self.tb is None:
            return
        for k, v in _flatten(scalars).items():
            if math.isfinite(v):
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
        self.tb.flush()

    @staticmethod
    def _check_keys(d: dict[str, Any]) -> None:
        clash = [k for k in _RESERVED if k in d]
        if clash:
            raise ValueError(f"metric names {clash} are reserved in metrics.jsonl records")

    def train(self, iter: int, max_iter: int, scalars: dict[str, Any], *, flush: bool | None = None) -> None:
        """Add one iteration's scalars (losses, lr...); write a record on logging iterations."""
        if not self.enabled:
            return
        self._check_keys(scalars)
        for k, v in scalars.items():
            self._window[k].append(float(v))
        if self._last_iter is None:
            # Timing starts at the end of the first iteration seen (also after a resume), so
            # start-up and the slow first iteration do not distort sec/iter, ims/s and ETA.
            self._last_iter, self._last_time = iter, time.perf_counter()
        self._seen_iter = iter
        self._update_bar(iter, max_iter)
        if flush is None:
            flush = (iter + 1) % self.log_period == 0 or iter + 1 >= max_iter
        if not flush:
            return

        now = time.perf_counter()
        # None until at least one iteration was timed (e.g. a record on the very first call).
        sec_per_iter = (now - self._last_time) / (iter - self._last_iter) if iter > self._last_iter else None
        if sec_per_iter is not None:
            self._last_iter, self._last_time = iter, now
        means = {k: sum(v) / len(v) for k, v in self._window.items() if v}
        self._window.clear()
        record: dict[str, Any] = {"type": "train", "iter": iter, "time": time.time(), **means}
        record["sec_per_iter"] = sec_per_iter
        if self.ims_per_batch:
            record["ims_per_s"] = self.ims_per_batch / sec_per_iter if sec_per_iter else None
        self._write(record)
        self._tb_scalars("train", {k: v for k, v in record.items() if k not in _RESERVED and v is not None}, iter)

        if self._bar is not None:
            self._bar.set_postfix_str(self._short(means), refresh=False)
        elif self.progress == "log":
            parts = [f"iter {iter} ({iter + 1}/{max_iter})", self._short(means)]
            if record.get("ims_per_s"):
                parts.append(f"{record['ims_per_s']:.1f} ims/s")
            if sec_per_iter is not None:
                parts.append(f"{sec_per_iter:.3f} s/it")
                parts.append(f"eta {_fmt_eta((max_iter - iter - 1) * sec_per_iter)}")
            logger.info("  ".join(p for p in parts if p))

    @staticmethod
    def _short(means: dict[str, float]) -> str:
        return "  ".join(f"{k}={v:.4g}" for k, v in means.items())

    def _update_bar(self, iter: int, max_iter: int) -> None:
        if self.progress != "bar":
            return
        if self._bar is None:
            # initial=iter so a resumed run shows the real position and a sane ETA
            self._bar = tqdm(total=max_iter, initial=iter, dynamic_ncols=True, desc="train")
        self._bar.update(iter + 1 - self._bar.n)

    def eval(self, iter: int, metrics: dict[str, Any]) -> None:
        """One evaluation: full (possibly nested) dict to JSONL, numeric leaves to TB ``eval/``."""
        if not self.enabled:
            return
        self._check_keys(metrics)
        self._write({"type": "eval", "iter": iter, "time": time.time(), **metrics})
        self._tb_scalars("eval", metrics, iter)
        if self.progress == "log":
            logger.info("eval @ iter %d: %s", iter, self._short(_flatten(metrics)))

    def final(self, metrics: dict[str, Any], iter: int | None = None) -> None:
        """The run's final numbers (last record of a finished run); ``iter`` defaults to the last seen."""
        if not self.enabled:
            return
        self._check_keys(metrics)
        it = self._seen_iter if iter is None else iter
        self._write({"type": "final", "iter": it, "time": time.time(), **metrics})
        self._tb_scalars("final", metrics, it or 0)
        if self.tb is not None:
            self._tb_hparams(metrics, it or 0)

    def report(self, report_dir: str | os.PathLike, step: int) -> None:
        """An evaluation's report files in TensorBoard at ``step``: each class's AP and AP50 from
        report.json (``eval/per_class/AP/<class>``, ``eval/per_class/AP50/<class>``) and pr_curves.png
        as the image ``eval/pr_curves``; what the folder does not hold is left out (a periodic
        evaluation without eval.full_reports writes no report)."""
        if not self.enabled or self.tb is None:
            return
        folder = RunFolder(report_dir)
        try:
            if folder.report.is_file():
                report = json.loads(folder.report.read_text(encoding="utf-8"))
                for c in report.get("per_class") or []:
                    for key in ("AP", "AP50"):
                        if isinstance(c.get(key), (int, float)) and math.isfinite(c[key]):
                            self.tb.add_scalar(f"eval/per_class/{key}/{c['name']}", float(c[key]), step)
            if folder.pr_curves.is_file():
                self.tb.add_image("eval/pr_curves", np.asarray(read_rgb(folder.pr_curves)), step, dataformats="HWC")
            self.tb.flush()
        except Exception as exc:  # noqa: BLE001 - a view of the report; the report itself is written
            warnings.warn(f"TensorBoard: the report in {report_dir} not shown ({type(exc).__name__}: {exc})",
                          stacklevel=2)

    def write_curves(self) -> None:
        """The run's curves figure (``curves.png``: loss terms, LR, AP over the iterations) from its
        metrics.jsonl, rewritten whole; a failure is a warning (the records are kept)."""
        if not self.enabled:
            return
        from gn_detect.evaluation.curves import plot_run_curves  # imported late: matplotlib

        folder = RunFolder(self.run_dir)
        try:
            plot_run_curves(folder.curves, read_records(folder.metrics)[0], title=str(self.run_dir))
        except Exception as exc:  # noqa: BLE001 - a figure must not turn a run's outcome into a failure
            warnings.warn(f"{folder.curves} not written ({type(exc).__name__}: {exc})", stacklevel=2)

    def _tb_hparams(self, metrics: dict[str, Any], step: int) -> None:
        """The run's hparams handed over (``hparams``: a sweep run's swept values, a single run's
        command-line overrides) and the sweep report's headline metrics for TensorBoard's HParams
        view, in ``tb/hparams/``; nothing without hparams."""
        if not self.hparams:
            return
        from gn_detect.sweeps.summary import PAPER_METRICS  # imported late: the report pulls matplotlib

        try:
            write_hparams(RunFolder(self.run_dir).hparams, self.hparams, {m: metrics.get(m) for m in PAPER_METRICS},
                          step=step, trial_id=self.run_dir.name)
        except Exception as exc:  # noqa: BLE001 - the run is done; its metrics are in metrics.jsonl
            warnings.warn(f"TensorBoard HParams not written ({type(exc).__name__}: {exc})", stacklevel=2)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
