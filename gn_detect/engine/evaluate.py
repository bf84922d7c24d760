"""Evaluation hook shared by training and tools/evaluate.py: inference, tuning split, report."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from gn_detect.engine import dist as gdist
from gn_detect.engine.inference import run_inference

log = logging.getLogger(__name__)


def evaluate_model(
    model: nn.Module,
    loader: Iterable,
    dataset: Any,
    out_dir: str | Path,
    eval_cfg: Mapping[str, Any],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    writer: Any = None,
    step: int = 0,
    full_report: bool = True,
) -> dict[str, Any]:
    """Runs inference on every rank; rank 0 writes the report and returns headline metrics."""
    from gn_detect.evaluation import evaluate_detections, filter_detections, split_coco

    dets = run_inference(model, loader, dataset.label_to_cat_id, device=device, amp_dtype=amp_dtype,
                         channels_last=channels_last, progress=True)
    if not gdist.is_main_process():
        return {}
    coco = dataset.coco
    tune = str(eval_cfg.get("tune", "half"))
    if tune not in ("half", "same"):
        raise ValueError(f"eval.tune={tune!r}: use 'half' (tune thresholds on a seeded half of the split and "
                         "report on the other half) or 'same' (tune and report on the whole split)")
    # "half" keeps the operating point from being chosen on the images it is scored on.
    held_out = tune == "half" and len(coco.getImgIds()) >= 2
    kwargs: dict[str, Any] = dict(
        iou_threshold=float(eval_cfg.get("iou_threshold", 0.5)),
        criterion=str(eval_cfg.get("criterion", "f1")),
        target_precision=eval_cfg.get("target_precision"),
        level=str(eval_cfg.get("level", "label")),
        max_dets=int(eval_cfg.get("max_dets", 100)),
        backend=str(eval_cfg.get("backend", "pycocotools")),
        writer=writer,
        step=step,
    )
    if full_report:
        kwargs["image_root"] = getattr(dataset, "image_dir", None)
        kwargs["num_vis_images"] = int(eval_cfg.get("num_vis_images", 4))
    if held_out:
        tune_gt, report_gt = split_coco(coco, 0.5, int(eval_cfg.get("tune_seed", 0)))
        kwargs["tune_gt"] = tune_gt
        kwargs["tune_detections"] = filter_detections(dets, tune_gt.getImgIds())
        report_dets = filter_detections(dets, report_gt.getImgIds())
    else:
        report_gt, report_dets = coco, dets
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return evaluate_detections(report_gt, report_dets, out_dir if full_report else None, **kwargs)


def evaluate_checkpoint(cfg: Any, base_dir: str | Path | None = None) -> dict[str, Any]:
    """tools/evaluate.py: rebuild the run's model, load the checkpoint, evaluate, write the report."""
    import time

    from omegaconf import OmegaConf

    from gn_detect.data import build_dataset, build_test_loader
    from gn_detect.engine.checkpoint import load_checkpoint
    from gn_detect.modeling import build_model

    base = Path(base_dir or ".")
    ckpt_path = Path(cfg.checkpoint)
    if not ckpt_path.is_absolute():
        ckpt_path = base / ckpt_path
    run_cfg_path = Path(cfg.run_config) if cfg.get("run_config") else ckpt_path.parent.parent / "config.yaml"
    if not run_cfg_path.is_file():
        raise FileNotFoundError(
            f"evaluate: no run config at {run_cfg_path}; a checkpoint is evaluated with the model config of "
            "its run. Pass run_config=<path to that run's config.yaml>"
        )
    run_cfg = OmegaConf.load(run_cfg_path)
    data_cfg = cfg.data if cfg.get("data") is not None else run_cfg.data
    overrides = {k: v for k, v in (cfg.get("eval") or {}).items() if v is not None}
    eval_cfg = OmegaConf.merge(run_cfg.get("eval", {}), overrides)
    device = torch.device(cfg.device if cfg.get("device", "auto") != "auto"
                          else ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = build_dataset(data_cfg, str(eval_cfg.get("split", "val")), base_dir=base)
    names = [str(c["name"]) for c in sorted(dataset.coco.dataset["categories"], key=lambda c: c["id"])]
    model_cfg = OmegaConf.to_container(run_cfg.model, resolve=True)
    model = build_model(model_cfg, len(dataset.label_to_cat_id))
    state = load_checkpoint(ckpt_path)
    weights = state["model"] if isinstance(state.get("model"), dict) else state
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise RuntimeError(
            f"evaluate: {ckpt_path} does not fit the model of {run_cfg_path} with {len(names)} classes "
            f"({e}). Evaluate on a dataset with the categories the model was trained on."
        ) from e
    model.to(device)
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else ckpt_path.parent.parent / "evaluate" / time.strftime("%Y%m%d-%H%M%S")
    loader = build_test_loader(dataset, int(eval_cfg.get("ims_per_device", 1)),
                               num_workers=int(data_cfg.get("num_workers", 0)))
    amp = torch.bfloat16 if device.type == "cuda" else None
    return evaluate_model(model, loader, dataset, out_dir, eval_cfg, device=device, amp_dtype=amp)
