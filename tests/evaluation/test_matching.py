"""Box-level matching: rules, edge cases, and agreement with pycocotools' own matching."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from gn_detect.evaluation.matching import (
    FP,
    IGNORED,
    TP,
    DetArrays,
    GroundTruth,
    cap_per_image,
    iou_xywh,
    match_boxes,
)

from .conftest import det, make_gt
from .synthetic import jitter_detections, make_coco


def run(gt, dets, thr=0.5):
    G = GroundTruth.from_coco(gt)
    return match_boxes(G, DetArrays.from_results(dets, G), thr)


def test_iou_matches_pycocotools_formula():
    from pycocotools import mask as mu

    rng = np.random.default_rng(0)
    d = rng.uniform(0, 50, (200, 4))
    g = rng.uniform(0, 50, (200, 4))
    crowd = rng.random(200) < 0.3
    ref = np.array([mu.iou([d[i].tolist()], [g[i].tolist()], [int(crowd[i])])[0, 0] for i in range(200)])
    assert np.array_equal(iou_xywh(d, g, crowd), ref)  # bit-exact: threshold decisions agree


def test_greedy_by_score_duplicate_is_fp():
    gt = make_gt([(1, 1, [0, 0, 10, 10])])
    m = run(gt, [det(1, 1, [1, 0, 10, 10], 0.5), det(1, 1, [0, 0, 10, 10], 0.9)])
    assert m.status.tolist() == [FP, TP]  # the higher score takes the GT, whatever the input order


def test_equal_scores_keep_input_order():
    gt = make_gt([(1, 1, [0, 0, 10, 10])])
    m = run(gt, [det(1, 1, [1, 0, 10, 10], 0.5), det(1, 1, [0, 0, 10, 10], 0.5)])
    assert m.status.tolist() == [TP, FP]  # stable tie-break, as pycocotools' mergesort


def test_detection_takes_best_free_gt():
    gt = make_gt([(1, 1, [0, 0, 10, 10]), (1, 1, [2, 0, 10, 10])])
    m = run(gt, [det(1, 1, [2, 0, 10, 10], 0.9), det(1, 1, [0, 0, 10, 10], 0.8)])
    assert m.status.tolist() == [TP, TP]
    assert m.gt_index.tolist() == [1, 0]


def test_iou_threshold_inclusive_and_configurable():
    gt = make_gt([(1, 1, [0, 0, 10, 10])])
    dets = [det(1, 1, [0, 0, 10, 5], 0.9)]  # IoU exactly 0.5
    assert run(gt, dets, 0.5).status.tolist() == [TP]
    assert run(gt, dets, 0.55).status.tolist() == [FP]


def test_class_and_image_must_agree():
    gt = make_gt([(1, 1, [0, 0, 10, 10])])
    m = run(gt, [det(1, 2, [0, 0, 10, 10], 0.9), det(2, 1, [0, 0, 10, 10], 0.9)])
    assert m.status.tolist() == [FP, FP]


def test_crowd_region_ignores_detections_inside():
    # crowd IoU = intersection / detection area: a small box inside a big crowd region is 1.0
    gt = make_gt([(1, 1, [0, 0, 100, 100], 1)])
    m = run(gt, [det(1, 1, [10, 10, 5, 5], 0.9), det(1, 1, [20, 20, 5, 5], 0.8), det(1, 1, [95, 95, 20, 20], 0.7)])
    assert m.status.tolist() == [IGNORED, IGNORED, FP]
    ev = m.events()
    assert len(ev.score) == 1 and ev.num_pos.tolist() == [0, 0]


def test_non_crowd_gt_preferred_over_crowd():
    gt = make_gt([(1, 1, [0, 0, 100, 100], 1), (1, 1, [0, 0, 10, 10])])
    m = run(gt, [det(1, 1, [0, 0, 10, 10], 0.9), det(1, 1, [0, 0, 10, 10], 0.8)])
    assert m.status.tolist() == [TP, IGNORED]  # the duplicate falls on the crowd: not an FP


def test_empty_inputs():
    gt = make_gt([(1, 1, [0, 0, 10, 10])])
    m = run(gt, [])
    assert len(m.status) == 0 and m.num_pos.tolist() == [1, 0]
    gt0 = make_gt([])
    m = run(gt0, [det(1, 1, [0, 0, 10, 10], 0.9)])
    assert m.status.tolist() == [FP]


def test_unknown_ids_raise():
    gt = make_gt([(1, 1, [0, 0, 10, 10])])
    with pytest.raises(ValueError, match="image_id"):
        run(gt, [det(99, 1, [0, 0, 10, 10], 0.9)])
    with pytest.raises(ValueError, match="category_id"):
        run(gt, [det(1, 7, [0, 0, 10, 10], 0.9)])


def test_cap_per_image_keeps_top_scores_stable():
    img = np.array([0, 0, 0, 1, 0, 1])
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.5, 0.2])
    assert cap_per_image(img, scores, 2).tolist() == [1, 2, 3, 5]  # tie 0.5: earlier kept
    assert cap_per_image(img, scores, None).tolist() == list(range(6))


def test_threshold_prefix_property():
    """Matching once and thresholding == matching only the detections above the threshold."""
    gt = make_coco(40, 3, crowd_fraction=0.1, seed=1)
    dets = jitter_detections(gt, seed=2, duplicates=0.6, round_scores=1)
    full = run(gt, dets)
    scores = np.array([d["score"] for d in dets])
    for t in (0.3, 0.5, 0.8):
        keep = np.flatnonzero(scores >= t)
        sub = run(gt, [dets[i] for i in keep])
        assert np.array_equal(sub.status, full.status[keep])


def _pycocotools_status(gt, dets, iou=0.5):
    """Per-detection TP/FP/ignored and per-class (tp, npos) from COCOeval.evalImgs
    (area 'all', maxDet 100) at IoU ``iou``."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(d) for d in dets])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
    t = int(np.flatnonzero(np.isclose(ev.params.iouThrs, iou))[0])
    status = np.full(len(dets), FP)
    tp, npos = {}, {}
    for e in ev.evalImgs:
        if e is None or e["aRng"] != ev.params.areaRng[0] or e["maxDet"] != 100:
            continue
        c = e["category_id"]
        match, ign = e["dtMatches"][t], e["dtIgnore"][t].astype(bool)
        tp[c] = tp.get(c, 0) + int(((match > 0) & ~ign).sum())
        npos[c] = npos.get(c, 0) + int((~np.asarray(e["gtIgnore"], bool)).sum())
        for did, mt, ig in zip(e["dtIds"], match, ign):
            status[did - 1] = IGNORED if ig else (TP if mt > 0 else FP)  # loadRes ids are 1-based
    return status, tp, npos


@pytest.mark.parametrize("iou", [0.5, 0.75])
def test_agrees_with_pycocotools_synthetic(iou):
    gt = make_coco(120, 4, crowd_fraction=0.08, seed=3)
    dets = jitter_detections(gt, seed=4, duplicates=0.5, jitter=0.15, round_scores=1)  # many ties
    status, _, _ = _pycocotools_status(gt, dets, iou)
    assert np.array_equal(run(gt, dets, iou).status, status)


def test_recall_at_zero_equals_pycocotools_on_tiny_coco(tiny_val):
    """Brief item 6: per-class box recall at threshold 0 (<= 100 dets/image) equals
    pycocotools' own matching at IoU 0.5 on real annotations (with crowd regions)."""
    assert any(a["iscrowd"] for a in tiny_val.dataset["annotations"])
    dets = jitter_detections(tiny_val, seed=0, duplicates=0.4, jitter=0.12, fp_per_image=6)
    status, tp, npos = _pycocotools_status(tiny_val, dets)
    G = GroundTruth.from_coco(tiny_val)
    D = DetArrays.from_results(dets, G)
    assert np.bincount(D.img).max() <= 100
    m = match_boxes(G, D, 0.5)
    assert np.array_equal(m.status, status)
    counts = m.events().counts_at(np.zeros(G.num_classes))
    recall = counts.recall
    for k, cid in enumerate(G.cat_ids.tolist()):
        n = npos.get(cid, 0)
        assert counts.num_pos[k] == n
        if n == 0:
            assert np.isnan(recall[k])
        else:
            assert recall[k] == tp.get(cid, 0) / n
