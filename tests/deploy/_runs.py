"""Helpers for the deploy tests: models whose norms are not the identity (random affine
parameters and running statistics), and run folders holding a checkpoint written the way the
trainer writes one (engine's describe_run + save_checkpoint), without training."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gn_detect.data import split_categories
from gn_detect.engine.checkpoint import FORMAT, save_checkpoint
from gn_detect.engine.description import describe_run
from gn_detect.layers import AffineChannel
from gn_detect.modeling import build_model
from tests.engine._train_utils import tiny_cfg as tiny_run_cfg


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 1, detections: bool = True) -> nn.Module:
    """Random gamma/beta of every BN/GN/affine and random BN running statistics, so folding is
    not a no-op; with ``detections``, the class prior bias is zeroed so that an untrained model
    scores around 0.5 and post-processing has detections to compare."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 2 + 0.2)
        if isinstance(m, (_BatchNorm, nn.GroupNorm, AffineChannel)) and m.weight is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    if detections and hasattr(model, "head"):
        model.head.cls_score.bias.zero_()
    return model


def make_run(run_dir: Path, data_root: Path, categories: list[dict] | None = None, **overrides: Any) -> Path:
    """A run folder with ``config.yaml`` and ``checkpoints/model_final.pth`` for the tiny model on
    the shapes data (``overrides``: dotted config keys, as tests/engine/_train_utils.tiny_cfg;
    ``categories``: when the config's data cannot be read)."""
    cfg = tiny_run_cfg(data_root, **overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    categories = split_categories(cfg.data, "train") if categories is None else categories
    torch.manual_seed(0)
    model = randomize_norms(build_model(cfg.model, len(categories)))
    state = {"format": FORMAT, "iteration": 4, "model": model.state_dict(), "world_size": 1, "time": 0.0,
             "extra": {}, "description": describe_run(resolved, categories)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    save_checkpoint(run_dir / "checkpoints" / "model_final.pth", state)
    return run_dir / "checkpoints" / "model_final.pth"


def write_report(run_dir: Path, thresholds: dict[int, float | None], names: dict[int, str]) -> Path:
    """A report.json with only what predict reads: per_class name, cat_id and threshold."""
    per_class = [{"name": names[cid], "cat_id": cid, "threshold": thr,
                  "threshold_source": "disabled" if thr is None else "tuned"} for cid, thr in thresholds.items()]
    path = run_dir / "report.json"
    path.write_text(json.dumps({"schema_version": 1, "per_class": per_class}))
    return path
