"""Runs a model over a test loader and returns COCO-format detections in original pixels."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable

import torch
from torch import nn
from tqdm import tqdm

from gn_detect.data import boxes_to_original
from gn_detect.engine import dist as gdist

log = logging.getLogger(__name__)


def to_coco_results(
    outputs: list[dict[str, torch.Tensor]],
    targets: list[dict[str, Any]],
    label_to_cat_id: list[int],
) -> list[dict[str, Any]]:
    """Maps boxes back to original image pixels and contiguous labels back to category ids."""
    results = []
    for out, tgt in zip(outputs, targets):
        if len(out["boxes"]) == 0:
            continue
        boxes = boxes_to_original(out["boxes"].float().cpu(), tgt["size"], tgt["orig_size"])
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        image_id = int(tgt["image_id"])
        for box, score, label in zip(xywh, out["scores"].tolist(), out["labels"].tolist()):
            results.append({
                "image_id": image_id,
                "category_id": int(label_to_cat_id[int(label)]),
                "bbox": [round(v, 2) for v in box],
                "score": round(float(score), 5),
            })
    return results


@torch.no_grad()
def run_inference(
    model: nn.Module,
    loader: Iterable,
    label_to_cat_id: list[int],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    skipped: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every rank runs its shard; the gathered list is returned on every rank. Images the dataset
    could not read (their target says ``skipped``, gn_detect/data/coco.py) give no detections and
    are appended to ``skipped`` as ``{"image_id", "reason"}`` (gathered from every rank)."""
    missed: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    n_images = 0
    iterator = loader
    if progress and gdist.is_main_process() and sys.stderr.isatty():
        iterator = tqdm(loader, desc="inference", leave=False, dynamic_ncols=True)
    for images, targets, image_sizes in iterator:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(images, image_sizes)
        read = [i for i, t in enumerate(targets) if not t.get("skipped")]
        missed += [{"image_id": int(t["image_id"]), "reason": t["skipped"]} for t in targets if t.get("skipped")]
        results.extend(to_coco_results([outputs[i] for i in read], [targets[i] for i in read], label_to_cat_id))
        n_images += len(read)
    model.train(was_training)
    if gdist.get_world_size() > 1:
        results = [r for part in gdist.all_gather_object(results) for r in part]
        missed = [m for part in gdist.all_gather_object(missed) for m in part]
    if skipped is not None:
        skipped.extend(missed)
    if missed:
        log.warning("inference: %d images could not be read and are left out of the evaluation, e.g. %s",
                    len(missed), missed[:3])
    log.info("inference: %d images, %d detections in %.1fs", n_images, len(results), time.perf_counter() - start)
    return results
