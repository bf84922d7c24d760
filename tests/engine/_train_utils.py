"""Helpers for the training tests (tests/engine/test_train_*.py, test_hooks.py, test_evaluate_tool.py).

Every run is tiny: the retinanet_tiny model on a shapes dataset of 13 train / 7 val images
of 96 px (odd sizes, so the last training batches and the inference shards are uneven under
DDP), generated once per test session and shared by all runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gn_detect.engine.launch  # noqa: F401  (registers the gn_uid resolver compose() needs)
from gn_detect.config.schema import TrainConfig
from gn_detect.data.synthetic import ensure_shapes_dataset

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "tools" / "train.py"
CONFIG_DIR = REPO / "configs"

# must match the data.synthetic overrides below, so the children find the dataset up to date
# the generator style of configs/data/shapes.yaml (the demo data), so runs composed with data=shapes
# find the session's dataset up to date; only the size of the dataset differs
_PRESET = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / "shapes.yaml").synthetic)
SHAPES = {**_PRESET, "num_train": 13, "num_val": 7, "image_size": 96, "seed": 0, "num_classes": 5}


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes dataset generated once per session (idempotent: a fixed folder under basetemp)."""
    return ensure_shapes_dataset(tmp_path_factory.getbasetemp() / "gn_shapes_13_7_96", **SHAPES)


def tiny_overrides(data_root: Path | str | None, *, shapes: bool = True, **extra: Any) -> list[str]:
    """Hydra overrides for a few-second run of the tiny model; ``extra`` holds dotted keys, e.g.
    ``**{"solver.max_iter": 12}`` (they win over the defaults here). ``shapes=False`` for data=coco."""
    ov: dict[str, Any] = {}
    if shapes:
        ov.update({f"data.synthetic.{k}": SHAPES[k] for k in ("num_train", "num_val", "image_size")})
    ov.update({
        "data.min_size_train": "[96]",
        "data.min_size_test": 96,
        "data.max_size": 128,
        "data.ims_per_device": 2,
        "data.num_workers": 0,
        "solver.max_iter": 4,
        "solver.warmup_iters": 2,
        "checkpoint.period": 1000,
        "log.progress": "log",
        "log.period": 1,
        "eval.num_vis_images": 1,
    })
    if data_root is not None:
        ov["data.root"] = str(data_root)
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]


# configs/model/retinanet_tiny.yaml, for configs built without Hydra (tiny_cfg)
TINY_MODEL = {
    "name": "retinanet_tiny", "norm_opts": {"num_groups": 8},
    "backbone": {"depth": "tiny", "freeze_at": 0, "zero_init_residual": True},
    "fpn": {"out_channels": 64}, "head": {"num_convs": 2}, "anchors": {"sizes": [16, 32, 64, 128, 256]},
}


def tiny_cfg(data_root: Path | str, **overrides: Any) -> DictConfig:
    """The config of a tiny in-process run, straight from the schema (no Hydra, no configs/):
    the retinanet_tiny model with the schema's norms (affine backbone, no norm in FPN and head),
    the session's shapes data at 96 px, 4 iterations, no workers. ``overrides`` are dotted keys
    with Python values, e.g. ``**{"model.fpn.norm": "bn", "solver.max_iter": 6}``; a key the
    schema does not have fails."""
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {
        "model": TINY_MODEL,
        "data": {"name": "shapes", "root": str(data_root), "synthetic": {k: SHAPES[k] for k in SHAPES},
                 "min_size_train": [96], "min_size_test": 96, "max_size": 128, "ims_per_device": 2,
                 "num_workers": 0},
        "solver": {"base_lr": 0.01, "max_iter": 4, "warmup_iters": 2},
        "checkpoint": {"period": 1000},
        "log": {"progress": "log", "period": 1},
        "eval": {"num_vis_images": 1},
    })
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env.update(extra)
    return env


def train_cmd(overrides: list[str]) -> list[str]:
    return [sys.executable, str(TRAIN_PY), *overrides]


def run_train(overrides: list[str], *, cwd: Path | str, timeout: float = 120,
              cmd: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """tools/train.py in a child process (stdout and stderr together in ``.stdout``)."""
    return subprocess.run(cmd or train_cmd(overrides), cwd=str(cwd), env=child_env(), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_status(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "status.json").read_text())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run_dir) if r.get("type") == kind]


def compose(overrides: list[str]):
    """The config tools/train.py would see, through Hydra's compose API (for in-process train())."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def tail(proc: subprocess.CompletedProcess[str], n: int = 4000) -> str:
    return (proc.stdout or "")[-n:]


@pytest.fixture
def one_thread():
    """In-process runs use one intra-op thread like the children (OMP_NUM_THREADS=1): on two shared
    cores, two OpenMP threads fighting other processes are much slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tb_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every TensorBoard scalar ``tag`` under ``run_dir/tb``, in write order."""
    acc = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]
