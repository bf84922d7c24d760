"""Loading the real shared COCO subsets: counts, label mapping, item contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gn_detect.data import CocoDetection, DetectionTransform


def coco128_ds(root: Path, **kw) -> CocoDetection:
    return CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json",
                         transform=kw.pop("transform", DetectionTransform(320, 512)), **kw)


def test_coco128_counts_and_contiguous_ids(coco128: Path) -> None:
    ds = coco128_ds(coco128)
    assert len(ds) == 128 and ds.num_classes == 80
    assert ds.skipped["crowd"] == 10 and ds.skipped["empty_image"] == 2
    assert ds.skipped["converted_mode"] == 1  # one grayscale JPEG
    lost = {k: v for k, v in ds.skipped.items() if k not in ("crowd", "empty_image", "converted_mode") and v}
    assert lost == {}
    # ids 1..90 (80 listed) -> 0..79 in sorted order, both ways
    assert ds.label_to_cat_id[0] == 1 and ds.label_to_cat_id[-1] == 90
    assert ds.label_to_cat_id == sorted(ds.label_to_cat_id) and len(set(ds.label_to_cat_id)) == 80
    assert all(ds.label_to_cat_id[ds.cat_id_to_label[c]] == c for c in ds.label_to_cat_id)
    assert all(ds.cat_id_to_label[ds.label_to_cat_id[k]] == k for k in range(80))
    assert ds.class_names[0] == "person" and ds.class_names[ds.cat_id_to_label[90]] == "toothbrush"
    # boxes: 939 - 10 crowd; 71 categories present
    n = sum(len(ds.annotations(i)[0]) for i in range(len(ds)))
    assert n == 929
    present = {int(l) for i in range(len(ds)) for l in ds.annotations(i)[1]}
    assert len(present) == 71
    # .coco keeps crowd for evaluation
    assert len(ds.coco.getAnnIds()) == 939 and len(ds.coco.getImgIds()) == 128
    raw = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    assert np.allclose(ds.aspect_ratios, [im["width"] / im["height"] for im in raw["images"]])


def test_coco128_filter_empty(coco128: Path) -> None:
    ds = coco128_ds(coco128, filter_empty=True, verify_images=False)
    assert len(ds) == 126 and ds.skipped["filtered_empty"] == 2


def test_item_contract(coco128: Path) -> None:
    ds = coco128_ds(coco128, verify_images=False)
    i = ds.image_ids.index(9)
    image, t = ds[i]
    info = ds.image_info(i)
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    assert t["image_id"] == 9 and t["orig_size"] == (info["height"], info["width"]) == (480, 640)
    assert t["size"] == tuple(image.shape[-2:]) == (320, 427)
    assert t["scale"] == pytest.approx(320 / 480)
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1] == 4 and t["labels"].dtype == torch.int64
    boxes, labels = ds.annotations(i)
    sx, sy = 427 / 640, 320 / 480
    torch.testing.assert_close(t["boxes"], torch.from_numpy(boxes) * torch.tensor([sx, sy, sx, sy]))
    # 0-255 RGB as decoded (the model normalizes)
    x = image.float() / 255
    assert 0.1 < x.mean() < 0.9
    # the json's (unnormalized) boxes come back through the mapping
    cat_ids = {ds.label_to_cat_id[l] for l in labels}
    json_cats = {a["category_id"] for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[9], iscrowd=False))}
    assert cat_ids == json_cats


def test_tiny_coco_val_keeps_empty_images(tiny_coco: Path) -> None:
    ds = CocoDetection(tiny_coco / "val2017", tiny_coco / "annotations" / "instances_val2017.json",
                       transform=DetectionTransform(256, 400))
    assert len(ds) == 50 and ds.skipped["empty_image"] == 2 and ds.skipped["crowd"] == 5
    empty = [i for i in range(len(ds)) if len(ds.annotations(i)[0]) == 0]
    assert len(empty) == 2
    _, t = ds[empty[0]]
    assert t["boxes"].shape == (0, 4)
    # same category mapping as coco128 (all 80 listed categories, every split)
    assert ds.label_to_cat_id[-1] == 90 and ds.num_classes == 80
