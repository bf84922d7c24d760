"""Issue 10 E: COCO AP and every threshold-free number cover the WHOLE evaluation split; only
the numbers at the tuned thresholds are counted on the report half (thresholds tuned on the
other half). Before: the engine passed the report half as the ground truth, so report.json
said num_images 36 for a 72-image split and the headline AP was computed on half of it."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from gn_detect.evaluation import (
    build_report,
    evaluate_detections,
    filter_detections,
    prepare,
    split_coco,
    split_image_ids,
    subset_coco,
)

from .synthetic import jitter_detections, make_coco


def pycocotools_ap(gt, dets) -> float:
    """Independent reference: pycocotools' COCOeval, called directly."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def crafted(num_images: int = 72, seed: int = 0):
    """GT where the detector is perfect on the tuning half and poor on the report half: the AP
    of the report half alone (the old headline) is far from the AP of the whole split."""
    gt = make_coco(num_images, 4, crowd_fraction=0.0, seed=seed)
    tune_ids, _ = split_image_ids(gt.getImgIds(), 0.5, seed=0)
    good = set(tune_ids.tolist())
    dets = [d for d in jitter_detections(gt, seed=seed + 1, jitter=0.3) if d["image_id"] not in good]
    dets += [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.99}
             for a in gt.dataset["annotations"] if a["image_id"] in good]
    return gt, dets


def test_ap_covers_the_whole_split_and_report_json_says_so(tmp_path: Path) -> None:
    gt, dets = crafted(72)
    head = evaluate_detections(gt, dets, tmp_path, tune="half", tune_seed=0, figures=False)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["num_images"] == 72
    assert rep["coverage"]["ap"] == {"images": 72, "subset": "all"}
    assert rep["coverage"]["thresholded"] == {"images": 36, "subset": "report half", "tuned_on": 36,
                                              "tuned_on_subset": "tuning half", "tune": "half", "tune_seed": 0}
    full_ap = pycocotools_ap(gt, dets)
    tune_gt, report_gt = split_coco(gt, 0.5, seed=0)
    half_ap = pycocotools_ap(report_gt, filter_detections(dets, report_gt.getImgIds()))
    assert abs(full_ap - half_ap) > 0.2  # the crafted case: the two really differ
    assert head["AP"] == pytest.approx(full_ap, abs=1e-12) and rep["coco"]["AP"] == head["AP"]
    assert rep["thresholds"]["tuned_on_eval_split"] is False and rep["thresholds"]["overlap_images"] == 0
    md = (tmp_path / "report.md").read_text()
    assert "all 72 images of the split" in md and "report half, 36 images" in md
    assert "tuned on the other 36" in md


def test_thresholded_numbers_are_those_of_the_report_half(tiny_val) -> None:
    """On a real split (tiny_coco val): the numbers at the tuned thresholds equal an explicit
    tune-on-one-half / report-on-the-other evaluation; threshold-free ones equal the whole split's."""
    dets = jitter_detections(tiny_val, seed=3, round_scores=3)
    rep, parts, th, _ = build_report(tiny_val, dets, tune="half", tune_seed=5)
    n = len(tiny_val.getImgIds())
    tune_gt, report_gt = split_coco(tiny_val, 0.5, seed=5)
    ref, *_ = build_report(report_gt, filter_detections(dets, report_gt.getImgIds()), tune_gt=tune_gt,
                           tune_detections=filter_detections(dets, tune_gt.getImgIds()), tune="same")
    for lvl in ("box", "label"):
        for k in ("micro", "macro", "at_global_threshold"):
            assert rep[lvl][k] == ref[lvl][k], (lvl, k)
    assert [{k: c[k] for k in ("threshold", "box", "label")} for c in rep["per_class"]] == \
        [{k: c[k] for k in ("threshold", "box", "label")} for c in ref["per_class"]]
    same, *_ = build_report(tiny_val, dets, tune="same")
    assert rep["coco"] == same["coco"] and rep["num_images"] == n == same["num_images"]
    assert rep["box"]["all_detections"] == same["box"]["all_detections"]
    assert rep["label"]["all_detections"] == same["label"]["all_detections"]
    assert [c["AP"] for c in rep["per_class"]] == [c["AP"] for c in same["per_class"]]
    assert parts.report.gt.num_images + parts.tune.gt.num_images == n


def test_subset_equals_prepare_on_the_subset() -> None:
    gt = make_coco(40, 3, crowd_fraction=0.1, seed=21)
    dets = jitter_detections(gt, seed=22, max_per_image=12)
    full = prepare(gt, dets, max_dets=10)
    ids = split_image_ids(gt.getImgIds(), 0.5, seed=1)[1]
    a = full.subset(ids)
    b = prepare(subset_coco(gt, ids.tolist()), filter_detections(dets, ids.tolist()), max_dets=10)
    for x, y in ((a.gt, b.gt), (a.dets, b.dets), (a.box, b.box), (a.label, b.label)):
        for field in x.__dataclass_fields__:
            vx, vy = getattr(x, field), getattr(y, field)
            assert np.array_equal(np.asarray(vx), np.asarray(vy)), field
    for field in ("status", "gt_index", "iou", "num_pos"):
        assert np.array_equal(getattr(a.matches, field), getattr(b.matches, field)), field
    with pytest.raises(ValueError):
        full.subset(np.array([10_000]))


def test_split_image_ids_is_the_split_coco_split() -> None:
    gt = make_coco(31, 2, seed=4)
    t, r = split_image_ids(reversed(gt.getImgIds()), 0.5, seed=9)
    tune_gt, report_gt = split_coco(gt, 0.5, seed=9)
    assert sorted(tune_gt.getImgIds()) == t.tolist() and sorted(report_gt.getImgIds()) == r.tolist()
    assert len(t) == 16 and not set(t) & set(r)


def test_same_and_separate_and_too_small() -> None:
    gt = make_coco(10, 2, seed=1)
    dets = jitter_detections(gt, seed=1)
    rep, *_ = build_report(gt, dets, tune="same")  # tune="same"
    assert rep["coverage"]["thresholded"] == {"images": 10, "subset": "all", "tuned_on": 10,
                                              "tuned_on_subset": "all", "tune": "same", "tune_seed": None}
    other = make_coco(6, 2, seed=2)
    rep, *_ = build_report(gt, dets, tune_gt=other, tune_detections=jitter_detections(other, seed=3), tune="same")
    th = rep["coverage"]["thresholded"]
    assert (th["images"], th["tuned_on"], th["tuned_on_subset"], th["tune"]) == (10, 6, "separate tuning set", "separate")
    one = subset_coco(gt, [1])
    rep, *_ = build_report(one, filter_detections(dets, [1]), tune="half")
    assert rep["coverage"]["thresholded"]["tune"] == "same" and any("needs at least 2 images" in w for w in rep["warnings"])
    with pytest.raises(ValueError, match="tune must be one of"):
        build_report(gt, dets, tune="third")
    with pytest.raises(ValueError, match="leave tune='same'"):
        build_report(gt, dets, tune="half", tune_gt=other, tune_detections=[])


def test_no_detections_half_mode() -> None:
    gt = make_coco(8, 2, seed=6)
    rep, *_ = build_report(gt, [], tune="half")
    assert rep["headline"]["AP"] == 0 and rep["num_images"] == 8 and rep["coverage"]["thresholded"]["images"] == 4
    assert rep["headline"]["box_precision"] is None and not math.isnan(rep["headline"]["box_recall"])
