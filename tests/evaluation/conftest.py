"""Fixtures for evaluation tests: tiny COCO sets built in memory, and the shared tiny_coco."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from pycocotools.coco import COCO

from gn_detect.cocoapi import coco_from_dict

REPO = Path(__file__).resolve().parents[2]


def shared_root() -> Path:
    return Path(os.environ.get("GN_DETECT_SHARED_DATA", REPO.parent / "shared" / "data"))


def make_gt(
    anns: list[tuple[int, int, list[float]] | tuple[int, int, list[float], int]],
    num_images: int = 3,
    cats: tuple[str, ...] = ("cat", "dog"),
) -> COCO:
    """GT from (image_id, category_id, xywh[, iscrowd]) tuples; images 1..num_images."""
    images = [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 100} for i in range(1, num_images + 1)]
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(cats)]
    annotations = []
    for j, a in enumerate(anns):
        img, cat, box = a[0], a[1], a[2]
        crowd = a[3] if len(a) > 3 else 0
        annotations.append(
            {"id": j + 1, "image_id": img, "category_id": cat, "bbox": list(map(float, box)),
             "area": float(box[2] * box[3]), "iscrowd": crowd}
        )
    return coco_from_dict({"images": images, "categories": categories, "annotations": annotations})


def det(img: int, cat: int, box: list[float], score: float) -> dict[str, Any]:
    return {"image_id": img, "category_id": cat, "bbox": list(map(float, box)), "score": float(score)}


@pytest.fixture(scope="session")
def tiny_val_path() -> Path:
    p = shared_root() / "tiny_coco" / "annotations" / "instances_val2017.json"
    if not p.is_file():
        pytest.skip(f"tiny_coco not found at {p} (set GN_DETECT_SHARED_DATA)")
    return p


@pytest.fixture(scope="session")
def tiny_val(tiny_val_path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(tiny_val_path))
