"""A sweep run's row in TensorBoard's HParams view: the values of the keys its sweep varies, and
the metrics the sweep report leads with (written by ``writers.write_hparams`` at the end of a run).

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

from gn_detect.engine.launch import swept_keys


def _metrics() -> tuple[str, ...]:
    """The metrics of the HParams table, named as the sweep report's paper table names them."""
    from gn_detect.sweeps.summary import PAPER_METRICS  # imported late: the report pulls matplotlib

    return PAPER_METRICS


def _split(override: str) -> tuple[str, Any]:
    """``"+seed=2" -> ("seed", 2)``: the key as Hydra's ``key_or_group`` names it and the value as
    YAML reads it (numbers and booleans typed; anything that is not a scalar kept as written)."""
    key, _, text = override.lstrip("+~").partition("=")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:  # Hydra syntax YAML does not read (e.g. interpolations): as written
        value = None
    return key.split("@")[0], value if isinstance(value, (bool, int, float, str)) else text


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
    excluded = set(job["job"]["config"]["override_dirname"]["exclude_keys"])
    swept = swept_keys((sweep.get("sweeper") or {}).get("params") or {}, sweep["overrides"]["task"]) - excluded
    return {key: value for key, value in map(_split, job["overrides"]["task"]) if key in swept}


def run_hparams(run_dir: str | os.PathLike, final: dict[str, Any]) -> tuple[dict, dict] | None:
    """(swept values, the final record's headline metrics) of a run; None outside a sweep."""
    values = swept_values(run_dir)
    if not values:
        return None
    return values, {m: final.get(m) for m in _metrics()}
