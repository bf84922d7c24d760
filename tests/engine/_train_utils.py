"""Helpers for the end-to-end training tests (tests/engine/test_train_*.py).

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

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "tools" / "train.py"
CONFIG_DIR = REPO / "configs"

# must match the data.synthetic overrides below, so the children find the dataset up to date
SHAPES = {"num_train": 13, "num_val": 7, "image_size": 96, "seed": 0, "num_classes": 5}


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes dataset generated once per session (idempotent: a fixed folder under basetemp)."""
    from gn_detect.data.synthetic import ensure_shapes_dataset

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
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import gn_detect.engine.launch  # noqa: F401  (registers the gn_uid resolver)

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def tail(proc: subprocess.CompletedProcess[str], n: int = 4000) -> str:
    return (proc.stdout or "")[-n:]


@pytest.fixture
def one_thread():
    """In-process runs use one intra-op thread like the children (OMP_NUM_THREADS=1): on two shared
    cores, two OpenMP threads fighting other processes are much slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
