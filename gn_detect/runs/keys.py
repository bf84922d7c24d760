"""Which config keys of a run matter, side by side, over one flattener.

* :data:`RESUME_MAY_CHANGE`: keys a resume may change (how progress is shown and saved; the
  batches depend only on seed and iteration, not on the workers). ``solver.max_iter`` has its own
  rule (gn_detect/engine/description.py).
* :data:`RESULT_NEUTRAL`: keys that do not change a run's results: a finished run whose config
  differs from a new sweep job's only in these is that job (it is skipped).
* :func:`setting_neutral`: keys that may differ between the runs of one setting of a sweep
  report (the seed, where files are and what they are called); ``model.name`` and ``data.name``
  are not among them: they name what was trained on what.
* :data:`FROM_THE_WEIGHTS`: keys a config leaves null to be resolved from the weights file.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

RESUME_MAY_CHANGE: tuple[str, ...] = (
    "log.period", "log.progress", "eval.period", "eval.full_reports", "eval.num_vis_images",
    "checkpoint.period", "data.num_workers",
)
RESULT_NEUTRAL = re.compile(
    r"^(log\..*|eval\.num_vis_images|checkpoint\.period|data\.num_workers|sweep_name|hydra(\..*)?)$")
_SETTING_NEUTRAL = re.compile(
    r"(^|\.)(seed|hydra|name|run_name|out|output|output_dir|out_dir|dir|run_dir|path|root|"
    r"timestamp|time|date|job|job_id|job_num|id|resume|tag|tags|notes|wandb|experiment)$"
)
_NAMES_THAT_MATTER = ("model.name", "data.name")


def setting_neutral(key: str) -> bool:
    """Whether a flattened key may differ between the runs of one setting ."""
    return key not in _NAMES_THAT_MATTER and bool(_SETTING_NEUTRAL.search(key))


FROM_THE_WEIGHTS: tuple[str, ...] = ("model.input.format", "model.input.pixel_mean", "model.input.pixel_std",
                                     "model.backbone.stride_in_1x1")


def flatten(d: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Leaves of nested mappings as ``{"a.b.c": value}``; an empty mapping is a leaf, and a value
    that is not a mapping at the top is ``{prefix: value}``."""
    if not isinstance(d, Mapping) or (prefix and not d):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{sep}{k}" if prefix else str(k), sep))
    return out
