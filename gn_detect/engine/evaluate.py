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
from gn_detect.data import build_dataset, build_test_loader, check_same_categories
from gn_detect.data.json_checks import ParsedFiles
from gn_detect.engine import dist as gdist
from gn_detect.engine.description import check_same_model
from gn_detect.engine.device import amp_dtype as autocast_dtype, resolve_device
from gn_detect.engine.inference import run_inference
from gn_detect.engine.signals import ignore_stop_signals
from gn_detect.engine.restore import model_from_checkpoint, read_described_checkpoint, user_file
from gn_detect.runs import run_folder_of, run_subfolder
from gn_detect.runs.layout import EVALUATE, REPORT_MD
from gn_detect.evaluation import evaluate_detections, format_results, subset_coco

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
    skipped: list[dict[str, Any]] = []
    dets = run_inference(model, loader, dataset.label_to_cat_id, device=device, amp_dtype=amp_dtype,
                         channels_last=channels_last, progress=True, skipped=skipped)
    if not gdist.is_main_process():
        return {}
    coco = dataset.coco
    if skipped:  # images unreadable at run time: scored on the others, counted in the metrics
        gone = {s["image_id"] for s in skipped}
        coco = subset_coco(coco, [i for i in coco.getImgIds() if i not in gone])
    if eval_cfg.tune not in ("half", "same"):
        raise ValueError(f"eval.tune={eval_cfg.tune!r}: use 'half' (tune thresholds on a seeded half of the split "
                         "and report on the other half) or 'same' (tune and report on the whole split)")
    # The whole split goes in: AP and every threshold-free number cover all of it; "half" tunes
    # the thresholds on a seeded half and counts the thresholded numbers on the other half.
    kwargs: dict[str, Any] = dict(
        tune=eval_cfg.tune, tune_seed=eval_cfg.tune_seed,
        iou_threshold=eval_cfg.iou_threshold, criterion=eval_cfg.criterion,
        target_precision=eval_cfg.target_precision, target_recall=eval_cfg.target_recall,
        class_criteria=OmegaConf.to_container(eval_cfg.class_criteria), level=eval_cfg.level, max_dets=eval_cfg.max_dets,
        backend=eval_cfg.backend,
    )
    if full_report:
        kwargs["image_root"] = getattr(dataset, "image_dir", None)
        kwargs["num_vis_images"] = eval_cfg.num_vis_images
    metrics = evaluate_detections(coco, dets, Path(out_dir) if full_report else None, **kwargs)
    return {**metrics, "skipped_images": len(skipped)} if skipped else metrics


def _run_config(cfg: DictConfig, base: Path, ckpt_path: Path, description: dict[str, Any]) -> DictConfig:
    """The config whose data and eval sections apply: the checkpoint's own, or ``run_config``
    when it describes the same model (gn_detect/engine/description.py: check_same_model)."""
    own = OmegaConf.create(description["config"])
    if not cfg.run_config:
        return own
    path = user_file(cfg.run_config, base, "run_config",
                     "leave run_config unset to evaluate with the checkpoint's own config")
    other = OmegaConf.load(path)
    if not isinstance(other.get("model"), DictConfig):
        raise ValueError(f"run_config: {path} has no model section; give a run's config.yaml, or leave run_config "
                         "unset to evaluate with the checkpoint's own config")
    check_same_model(own.model, other.model, ckpt_path, path)
    return other


def evaluate_checkpoint(cfg: DictConfig, base_dir: str | Path | None = None,
                        parsed: ParsedFiles | None = None) -> dict[str, Any]:
    """tools/evaluate.py (``cfg`` on the schema's EvaluateConfig): build the model the checkpoint
    describes (its config and signature, gn_detect/engine/description.py), load its weights,
    evaluate on a split with the same categories, write the report. ``eval.*`` overrides that
    are not null replace the run's own settings; ``data`` null means the run's data section;
    ``run_config`` (optional) supplies data and eval settings, and must describe the same model.
    ``parsed``: the annotation files the pre-flight parsed."""
    base = Path(base_dir or ".")
    ckpt_path, state, description = read_described_checkpoint(cfg, base)
    run_cfg = _run_config(cfg, base, ckpt_path, description)
    model = model_from_checkpoint(description, state, ckpt_path)
    data_cfg = cfg.data if cfg.data is not None else run_cfg.data
    overrides = {k: v for k, v in cfg.eval.items() if v is not None}
    eval_cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), run_cfg.eval, overrides)
    device = resolve_device(cfg.device)
    dataset = build_dataset(data_cfg, eval_cfg.split, base_dir=base, parsed=parsed)
    check_same_categories(description["model"]["categories"], dataset)
    model = model.to(device)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(cfg.out_dir) if cfg.out_dir else run_subfolder(ckpt_path, EVALUATE) / stamp
    loader = build_test_loader(dataset, eval_cfg.ims_per_device, num_workers=data_cfg.num_workers,
                               size_divisibility=model.size_divisibility,
                               worker_init_fn=ignore_stop_signals)
    metrics = evaluate_model(model, loader, dataset, out_dir, eval_cfg, device=device,
                             amp_dtype=autocast_dtype("auto", device))
    if gdist.is_main_process():
        print(format_results(metrics, run_dir=run_folder_of(ckpt_path), report_path=out_dir / REPORT_MD), flush=True)
        if len(dataset) and metrics.get("skipped_images", 0) >= len(dataset):
            raise NothingEvaluated(f"none of the {len(dataset)} images of split {eval_cfg.split!r} could be read at "
                                   f"evaluation time (images folder {getattr(dataset, 'image_dir', '?')}), so there "
                                   f"are no numbers (report in {out_dir}); fix: check the images, or set "
                                   f"data.verify_images=true to drop unreadable ones before inference")
    return metrics


class NothingEvaluated(RuntimeError):
    """tools/evaluate.py ran, but no image of the split could be read: exit status 1."""
