"""Where everything of a run folder lives: the one place its file and folder names are spelled.

::

    run_dir/
      .lock  config.yaml  env.json  status.json  metrics.jsonl  data_skipped.json  launch.log  tb/
      weights_loaded.json                                 what a model.weights file gave the model
      checkpoints/  last.pth (+ last.rank<k>.rng.pth under DDP), model_final.pth, nonfinite_debug.pth
      report.json, report.md, per_class.csv, pr_curves.png, examples.png   the final evaluation
      curves.png                                          loss, LR and AP over the run (written at its end)
      eval/iter_<iter>/                                   periodic evaluations
      evaluate/<time>/                                    tools/evaluate.py
      export/                                             tools/export.py
"""
from __future__ import annotations

import os
from pathlib import Path

LOCK = ".lock"
CONFIG = "config.yaml"
ENV = "env.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
SKIPPED = "data_skipped.json"
WEIGHTS_LOADED = "weights_loaded.json"  # what a model.weights file gave the model
LAUNCH_LOG = "launch.log"
HYDRA = ".hydra"  # Hydra's records of a job (its config.yaml is the unresolved composition)
REPORT = "report.json"
REPORT_MD = "report.md"
PR_CURVES = "pr_curves.png"
CURVES = "curves.png"
TB = "tb"
HPARAMS = "hparams"  # under tb/
CHECKPOINTS = "checkpoints"
LAST = "last"          # checkpoint names, without the .pth suffix
FINAL = "model_final"
NONFINITE_DEBUG = "nonfinite_debug"
CHECKPOINT_SUFFIX = ".pth"
EVAL = "eval"
EVALUATE = "evaluate"
EXPORT = "export"


class RunFolder:
    """The paths of one run folder (nothing is read or made)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    lock = property(lambda self: self.path / LOCK)
    config = property(lambda self: self.path / CONFIG)
    env = property(lambda self: self.path / ENV)
    status = property(lambda self: self.path / STATUS)
    metrics = property(lambda self: self.path / METRICS)
    skipped = property(lambda self: self.path / SKIPPED)
    weights_loaded = property(lambda self: self.path / WEIGHTS_LOADED)
    report = property(lambda self: self.path / REPORT)
    report_md = property(lambda self: self.path / REPORT_MD)
    pr_curves = property(lambda self: self.path / PR_CURVES)
    curves = property(lambda self: self.path / CURVES)
    tb = property(lambda self: self.path / TB)
    hparams = property(lambda self: self.path / TB / HPARAMS)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    last = property(lambda self: self.checkpoint(LAST))
    final = property(lambda self: self.checkpoint(FINAL))

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.pth``."""
        return self.path / CHECKPOINTS / f"{name}{CHECKPOINT_SUFFIX}"

    def rank_rng(self, name: str, rank: int) -> Path:
        """Rank ``rank``'s RNG side file of checkpoint ``name`` (DDP)."""
        return self.path / CHECKPOINTS / f"{name}.rank{rank}.rng{CHECKPOINT_SUFFIX}"

    def eval_folder(self, iteration: int) -> Path:
        """A periodic evaluation's folder, ``eval/iter_<iteration>``."""
        return self.path / EVAL / f"iter_{iteration:07d}"


def run_folder_of(ckpt_path: str | os.PathLike) -> Path:
    """The run folder of a checkpoint ``<run folder>/checkpoints/<file>``."""
    return Path(ckpt_path).parent.parent


def run_subfolder(ckpt_path: str | os.PathLike, name: str) -> Path:
    """``<run folder>/<name>`` of a run's checkpoint: where evaluate (:data:`EVALUATE`) and export
    (:data:`EXPORT`) write when no output folder is given."""
    return run_folder_of(ckpt_path) / name


def final_checkpoint_example(run: str = "outputs/<run>") -> str:
    """``<run>/checkpoints/model_final.pth``: how a message's fix names a run's final checkpoint."""
    return f"{run}/{CHECKPOINTS}/{FINAL}{CHECKPOINT_SUFFIX}"
