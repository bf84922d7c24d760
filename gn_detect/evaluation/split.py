"""Splitting one annotated set into a tuning and an evaluation part (honest thresholds)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools.coco import COCO

from gn_detect.cocoapi import coco_from_dict

__all__ = ["subset_coco", "split_coco", "filter_detections"]


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


def split_coco(coco: COCO, tune_fraction: float = 0.5, seed: int = 0) -> tuple[COCO, COCO]:
    """(tune, eval) split of the images, seeded and independent of annotation order."""
    if not 0 < tune_fraction < 1:
        raise ValueError("tune_fraction must be in (0, 1)")
    ids = np.array(sorted(coco.getImgIds()), dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_tune = int(round(tune_fraction * len(ids)))
    return subset_coco(coco, ids[perm[:n_tune]].tolist()), subset_coco(coco, ids[perm[n_tune:]].tolist())


def filter_detections(detections: Sequence[dict[str, Any]], image_ids: Iterable[int]) -> list[dict[str, Any]]:
    keep = set(int(i) for i in image_ids)
    return [d for d in detections if int(d["image_id"]) in keep]
