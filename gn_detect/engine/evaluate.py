"""Evaluation hook shared by training and tools/evaluate.py: inference, tuning split, report."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import nn

from gn_detect.engine import dist as gdist
from gn_detect.engine.inference import run_inference

log = logging.getLogger(__name__)


def subset_coco(coco: COCO, image_ids: Iterable[int]) -> COCO:
    """A COCO object holding only ``image_ids`` (all categories kept, so ids stay comparable)."""
    keep = set(int(i) for i in image_ids)
    ds = coco.dataset
    sub = {
        "images": [im for im in ds["images"] if im["id"] in keep],
        "annotations": [a for a in ds.get("annotations", []) if a["image_id"] in keep],
        "categories": ds["categories"],
    }
    out = COCO()
    out.dataset = sub
    with contextlib.redirect_stdout(io.StringIO()):
        out.createIndex()
    return out


def tuning_split(coco: COCO, mode: str, seed: int) -> tuple[list[int], list[int]]:
    """-> (tune image ids, report image ids).

    ``half``: a seeded random half of the evaluation images tunes the thresholds and the other
    half is reported, so the operating point is never chosen on the images it is scored on.
    ``same``: both are the whole split (the report then says the tuning was not held out).
    """
    ids = sorted(coco.getImgIds())
    if mode == "same" or len(ids) < 2:
        return ids, ids
    if mode != "half":
        raise ValueError(f"eval.tune={mode!r}: use 'half' (tune on half of the split, report on the rest) or 'same'")
    perm = np.random.default_rng(seed).permutation(len(ids))
    cut = len(ids) // 2
    return sorted(ids[i] for i in perm[:cut]), sorted(ids[i] for i in perm[cut:])


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
    from gn_detect.evaluation import evaluate_detections

    dets = run_inference(model, loader, dataset.label_to_cat_id, device=device, amp_dtype=amp_dtype,
                         channels_last=channels_last, progress=True)
    if not gdist.is_main_process():
        return {}
    coco = dataset.coco
    tune_ids, report_ids = tuning_split(coco, str(eval_cfg.get("tune", "half")), int(eval_cfg.get("tune_seed", 0)))
    held_out = tune_ids != report_ids
    tune_set, report_set = set(tune_ids), set(report_ids)
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
        kwargs["image_root"] = getattr(dataset, "image_root", None)
        kwargs["num_vis_images"] = int(eval_cfg.get("num_vis_images", 4))
    if held_out:
        kwargs["tune_gt"] = subset_coco(coco, tune_ids)
        kwargs["tune_detections"] = [d for d in dets if d["image_id"] in tune_set]
        report_gt = subset_coco(coco, report_ids)
        report_dets = [d for d in dets if d["image_id"] in report_set]
    else:
        report_gt, report_dets = coco, dets
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = evaluate_detections(report_gt, report_dets, out_dir if full_report else None, **kwargs)
    headline = result.get("headline", result) if isinstance(result, dict) else {}
    return {k: v for k, v in headline.items() if isinstance(v, (int, float)) or v is None}
