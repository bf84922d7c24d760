"""Seeded synthetic ground truth and detections: fixtures of the evaluation tests, also the
ground truth of scripts/bench_eval.py.

Detections imitate a detector: most GT boxes get a jittered copy (sometimes several, the
duplicates a missing NMS would leave), scored higher than the random false positives, with
a few class confusions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools.coco import COCO

from gn_detect.cocoapi import coco_from_dict

__all__ = ["make_coco", "jitter_detections"]


def make_coco(
    num_images: int = 100,
    num_classes: int = 5,
    boxes_per_image: float = 7.0,
    crowd_fraction: float = 0.01,
    size: tuple[int, int] = (480, 640),
    seed: int = 0,
) -> COCO:
    """Random GT: Poisson(boxes_per_image) boxes per image, Zipf-ish class frequencies."""
    rng = np.random.default_rng(seed)
    h, w = size
    images = [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "height": h, "width": w} for i in range(num_images)]
    cats = [{"id": k + 1, "name": f"class_{k + 1}", "supercategory": "x"} for k in range(num_classes)]
    freq = 1.0 / np.arange(1, num_classes + 1)
    freq /= freq.sum()
    n_per = rng.poisson(boxes_per_image, num_images)
    total = int(n_per.sum())
    img = np.repeat(np.arange(1, num_images + 1), n_per)
    cls = rng.choice(num_classes, total, p=freq) + 1
    bw = rng.uniform(8, w / 2, total)
    bh = rng.uniform(8, h / 2, total)
    x = rng.uniform(0, w - bw)
    y = rng.uniform(0, h - bh)
    crowd = rng.random(total) < crowd_fraction
    anns = [
        {
            "id": i + 1,
            "image_id": int(img[i]),
            "category_id": int(cls[i]),
            "bbox": [round(float(x[i]), 2), round(float(y[i]), 2), round(float(bw[i]), 2), round(float(bh[i]), 2)],
            "area": float(bw[i] * bh[i]),
            "iscrowd": int(crowd[i]),
        }
        for i in range(total)
    ]
    return coco_from_dict({"images": images, "categories": cats, "annotations": anns})


def jitter_detections(
    coco: COCO,
    seed: int = 0,
    recall: float = 0.8,
    jitter: float = 0.1,
    duplicates: float = 0.3,
    confusion: float = 0.05,
    fp_per_image: float = 5.0,
    max_per_image: int | None = None,
    round_scores: int | None = None,
) -> list[dict[str, Any]]:
    """Detections made from ``coco``'s GT: jittered true boxes (score ~ U(0.3, 1)), extra
    duplicates, class confusions and Poisson(fp_per_image) random boxes (score ~ U(0, 0.7)).
    ``max_per_image`` pads every image up to that many detections with low-score noise (for
    the benchmark); ``round_scores`` rounds scores to that many decimals (ties)."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(coco.getCatIds())
    dets: list[dict[str, Any]] = []
    for img_id in sorted(coco.getImgIds()):
        info = coco.imgs[img_id]
        W, H = float(info.get("width", 640)), float(info.get("height", 480))
        out = []
        for a in coco.imgToAnns.get(img_id, []):
            if rng.random() > recall:
                continue
            n = 1 + int(rng.random() < duplicates)
            for _ in range(n):
                x, y, w, h = a["bbox"]
                j = rng.normal(0, jitter, 4)
                box = [x + j[0] * w, y + j[1] * h, w * np.exp(j[2]), h * np.exp(j[3])]
                cat = a["category_id"]
                if rng.random() < confusion:
                    cat = int(rng.choice(cat_ids))
                out.append((box, cat, rng.uniform(0.3, 1.0)))
        n_fp = rng.poisson(fp_per_image)
        if max_per_image is not None:
            n_fp = max(n_fp, max_per_image - len(out))
        for _ in range(n_fp):
            w, h = rng.uniform(8, W / 2), rng.uniform(8, H / 2)
            box = [rng.uniform(0, W - w), rng.uniform(0, H - h), w, h]
            out.append((box, int(rng.choice(cat_ids)), rng.uniform(0.0, 0.7)))
        for box, cat, s in out:
            if round_scores is not None:
                s = round(float(s), round_scores)
            dets.append(
                {"image_id": int(img_id), "category_id": int(cat), "bbox": [float(v) for v in box], "score": float(s)}
            )
    return dets
