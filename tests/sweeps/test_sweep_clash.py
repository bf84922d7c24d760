"""A sweep job whose folder holds a finished run is skipped only if that run had the same config."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from gn_detect.engine.launch import CONFIG_DIR, finished_run_clash, run_job


def _job_cfg(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(run_dir.parent)
    return cfg


def _finished_run(run_dir: Path, cfg) -> None:
    """A finished run folder as the trainer leaves it: the resolved config without hydra."""
    run_dir.mkdir(parents=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra")
    resolved["solver"]["ims_per_batch"] = resolved["data"]["ims_per_device"]  # derived, as recorded
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    (run_dir / "status.json").write_text(json.dumps({"state": "done"}))


def _run_job(cfg) -> None:
    HydraConfig.instance().set_config(cfg)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    assert run_job(job) is None  # never trains: a skip or a refusal


def test_same_config_skips_differing_config_fails_naming_keys(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "norm=gn"
    done = _job_cfg(run_dir, "norm=gn", "seed=0")
    _finished_run(run_dir, done)
    # same results-relevant config (log, vis images, checkpoint period, workers may differ): skipped
    same = _job_cfg(run_dir, "norm=gn", "seed=0", "log.period=5", "eval.num_vis_images=0", "checkpoint.period=7",
                    "data.num_workers=0", "sweep_name=other")
    assert finished_run_clash(same, run_dir) is None
    _run_job(same)
    assert "FAILED" not in capsys.readouterr().out
    # a fixed value that differs (seed=1 into the folder named by norm only): the job fails, one line
    other = _job_cfg(run_dir, "norm=gn", "seed=1", "solver.base_lr=0.02")
    msg = finished_run_clash(other, run_dir)
    assert msg is not None and "\n" not in msg
    assert "seed (0 there, 1 now)" in msg and "solver.base_lr" in msg and "hydra.sweep.dir or sweep_name" in msg
    _run_job(other)
    out = capsys.readouterr().out
    assert f"[gn-detect] FAILED run {run_dir}: " in out and "seed (0 there, 1 now)" in out
    assert json.loads((run_dir / "status.json").read_text()) == {"state": "done"}  # the other run is untouched
