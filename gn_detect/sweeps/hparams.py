"""A sweep run's row in TensorBoard's HParams view: the values of the keys its sweep varies.

Read from what Hydra leaves on disk, so any process that trains a run of a sweep finds them (the
default launcher, submitit jobs): ``<run>/.hydra/hydra.yaml`` (the job's overrides, the keys left
out of folder names) and ``<sweep>/multirun.yaml`` (the whole sweep's parameters and command
line). Which keys are swept is :func:`gn_detect.engine.launch.swept_keys`, the rule that names the
run folders, so the HParams columns are the words of the folder names.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .summary import PAPER_METRICS

# The metrics of the HParams table, named as the report names them.
HPARAM_METRICS = PAPER_METRICS


def swept_values(run_dir: str | os.PathLike) -> dict[str, Any]:
    """{swept key: this run's value} of a run of a Hydra multirun (numbers and booleans typed,
    anything else as written); {} for a run outside a multirun or without Hydra's records."""
    run_dir = Path(run_dir)
    job_file = run_dir / ".hydra" / "hydra.yaml"
    record = next((p / "multirun.yaml" for p in run_dir.parents if (p / "multirun.yaml").is_file()), None)
    if not job_file.is_file() or record is None:
        return {}
    job = (yaml.safe_load(job_file.read_text(encoding="utf-8")) or {}).get("hydra") or {}
    if job.get("mode") != "MULTIRUN":
        return {}
    sweep = (yaml.safe_load(record.read_text(encoding="utf-8")) or {}).get("hydra") or {}
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gn_detect.engine.launch import swept_keys  # the folder-naming rule (imports Hydra)

    excluded = set(job["job"]["config"]["override_dirname"]["exclude_keys"])
    swept = swept_keys((sweep.get("sweeper") or {}).get("params") or {}, sweep["overrides"]["task"]) - excluded
    values: dict[str, Any] = {}
    for ov in OverridesParser.create().parse_overrides(list(job["overrides"]["task"])):
        if ov.key_or_group in swept:
            value = ov.value()
            values[ov.key_or_group] = value if isinstance(value, (bool, int, float, str)) \
                else ov.get_value_element_as_str()
    return values


def run_hparams(run_dir: str | os.PathLike, final: dict[str, Any]) -> tuple[dict, dict] | None:
    """(swept values, the final record's HPARAM_METRICS) of a run; None outside a sweep."""
    values = swept_values(run_dir)
    if not values:
        return None
    return values, {m: final.get(m) for m in HPARAM_METRICS}
