"""Splitting one annotated set into a tuning and an evaluation part (honest thresholds)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools.coco import COCO

from gn_detect.cocoapi import coco_from_dict

__all__ = ["subset_coco", "split_coco", "split_image_ids", "filter_detections"]


def subset_coco(coco: COCO, image_ids: Iterable[int]) -> COCO:
    """A new COCO object with only these images and their annotations (all categories kept,
    so class indices stay the same on both sides)."""
    keep = set(int(i) for i in image_ids)
    ds = coco.dataset
    sub = {k: v for k, v in ds.items() if k not in ("images", "annotations")}
    sub["images"] = [im for im in ds.get("images", []) if im["id"] in keep]
    sub["annotations"] = [a for a in ds.get("annotations", []) if a["image_id"] in keep]
    sub.setdefault("categories", [])
    return coco_from_dict(sub)


def split_image_ids(
    image_ids: Iterable[int], tune_fraction: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(tune, report) image ids: a seeded permutation of the sorted ids, the first
    ``round(tune_fraction * n)`` for tuning. Depends only on the set of ids and the seed."""
    if not 0 < tune_fraction < 1:
        raise ValueError("tune_fraction must be in (0, 1)")
    ids = np.unique(np.fromiter(image_ids, np.int64))
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_tune = int(round(tune_fraction * len(ids)))
    return ids[np.sort(perm[:n_tune])], ids[np.sort(perm[n_tune:])]


def split_coco(coco: COCO, tune_fraction: float = 0.5, seed: int = 0) -> tuple[COCO, COCO]:
    """(tune, eval) split of the images, seeded and independent of annotation order (the
    halves of ``split_image_ids``, which ``evaluate_detections(tune='half')`` uses too)."""
    tune_ids, eval_ids = split_image_ids(coco.getImgIds(), tune_fraction, seed)
    return subset_coco(coco, tune_ids.tolist()), subset_coco(coco, eval_ids.tolist())


def filter_detections(detections: Sequence[dict[str, Any]], image_ids: Iterable[int]) -> list[dict[str, Any]]:
    keep = set(int(i) for i in image_ids)
    return [d for d in detections if int(d["image_id"]) in keep]
