"""Evaluation shared by training (EvalHook) and tools/evaluate.py: inference, tuning split, report."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gn_detect.config.schema import EvalConfig
from gn_detect.data import build_dataset, build_test_loader
from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import load_checkpoint
from gn_detect.engine.inference import run_inference
from gn_detect.evaluation import evaluate_detections, filter_detections, split_coco
from gn_detect.modeling import build_model

log = logging.getLogger(__name__)


def evaluate_model(
    model: nn.Module,
    loader: Iterable,
    dataset: Any,
    out_dir: str | Path,
    eval_cfg: EvalConfig | DictConfig,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    full_report: bool = True,
) -> dict[str, Any]:
    """Runs inference on every rank; rank 0 returns the headline metrics ({} on the other
    ranks) and, with ``full_report``, writes the report files to ``out_dir``. ``eval_cfg`` is
    the ``eval`` section (schema EvalConfig)."""
    dets = run_inference(model, loader, dataset.label_to_cat_id, device=device, amp_dtype=amp_dtype,
                         channels_last=channels_last, progress=True)
    if not gdist.is_main_process():
        return {}
    if eval_cfg.tune not in ("half", "same"):
        raise ValueError(f"eval.tune={eval_cfg.tune!r}: use 'half' (tune thresholds on a seeded half of the split "
                         "and report on the other half) or 'same' (tune and report on the whole split)")
    # The whole split goes in: AP and every threshold-free number cover all of it; "half" tunes
    # the thresholds on a seeded half and counts the thresholded numbers on the other half.
    kwargs: dict[str, Any] = dict(
        tune=eval_cfg.tune, tune_seed=eval_cfg.tune_seed,
        iou_threshold=eval_cfg.iou_threshold, criterion=eval_cfg.criterion,
        target_precision=eval_cfg.target_precision, level=eval_cfg.level, max_dets=eval_cfg.max_dets,
        backend=eval_cfg.backend,
    )
    if full_report:
        kwargs["image_root"] = getattr(dataset, "image_dir", None)
        kwargs["num_vis_images"] = eval_cfg.num_vis_images
    return evaluate_detections(dataset.coco, dets, Path(out_dir) if full_report else None, **kwargs)


def _run_config(cfg: DictConfig, ckpt_path: Path) -> tuple[Path, DictConfig]:
    """The config.yaml of the run that wrote ``ckpt_path`` (or ``run_config``)."""
    path = Path(cfg.run_config) if cfg.run_config else ckpt_path.parent.parent / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluate: no run config at {path}; a checkpoint is evaluated with the model config of "
            "its run. Pass run_config=<path to that run's config.yaml>"
        )
    return path, OmegaConf.load(path)


def _load_model(run_cfg: DictConfig, run_cfg_path: Path, ckpt_path: Path, dataset: Any) -> nn.Module:
    model = build_model(run_cfg.model, len(dataset.label_to_cat_id))
    state = load_checkpoint(ckpt_path)
    weights = state["model"] if isinstance(state.get("model"), dict) else state
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise RuntimeError(
            f"evaluate: {ckpt_path} does not fit the model of {run_cfg_path} with {len(dataset.label_to_cat_id)} "
            f"classes ({e}). Evaluate on a dataset with the categories the model was trained on."
        ) from e
    return model


def evaluate_checkpoint(cfg: DictConfig, base_dir: str | Path | None = None) -> dict[str, Any]:
    """tools/evaluate.py (``cfg`` on the schema's EvaluateConfig): rebuild the run's model, load
    the checkpoint, evaluate, write the report. ``eval.*`` overrides that are not null replace
    the run's own settings; ``data`` null means the run's data section."""
    base = Path(base_dir or ".")
    ckpt_path = Path(cfg.checkpoint)
    if not ckpt_path.is_absolute():
        ckpt_path = base / ckpt_path
    run_cfg_path, run_cfg = _run_config(cfg, ckpt_path)
    data_cfg = cfg.data if cfg.data is not None else run_cfg.data
    overrides = {k: v for k, v in cfg.eval.items() if v is not None}
    eval_cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), run_cfg.eval, overrides)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = build_dataset(data_cfg, eval_cfg.split, base_dir=base)
    model = _load_model(run_cfg, run_cfg_path, ckpt_path, dataset).to(device)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(cfg.out_dir) if cfg.out_dir else ckpt_path.parent.parent / "evaluate" / stamp
    loader = build_test_loader(dataset, eval_cfg.ims_per_device, num_workers=data_cfg.num_workers)
    amp = torch.bfloat16 if device.type == "cuda" else None
    return evaluate_model(model, loader, dataset, out_dir, eval_cfg, device=device, amp_dtype=amp)
