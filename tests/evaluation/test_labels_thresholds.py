"""Label-level pairs, PR curves and threshold tuning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gn_detect.evaluation.events import Events, f1_from_counts, safe_div
from gn_detect.evaluation.labels import label_pairs
from gn_detect.evaluation.matching import DetArrays, GroundTruth
from gn_detect.evaluation.thresholds import Thresholds, tune_thresholds

from .conftest import det, make_gt


def label_events(gt, dets) -> Events:
    G = GroundTruth.from_coco(gt)
    return label_pairs(G, DetArrays.from_results(dets, G)).events()


def ev(cls, score, tp, num_pos) -> Events:
    return Events(np.array(cls, np.int64), np.array(score, float), np.array(tp, bool), np.array(num_pos, np.int64))


def test_label_pairs_max_score_positive_negative_ignored():
    gt = make_gt(
        [(1, 1, [0, 0, 10, 10]), (1, 1, [20, 0, 10, 10]), (2, 2, [0, 0, 50, 50], 1), (2, 1, [0, 0, 5, 5])],
        num_images=3,
    )
    dets = [
        det(1, 1, [50, 50, 5, 5], 0.3),  # cat in 1: positive, far from the boxes (label level ignores boxes)
        det(1, 1, [0, 0, 10, 10], 0.8),  # same pair, max score 0.8
        det(2, 2, [0, 0, 5, 5], 0.9),  # dog in 2: crowd only -> ignored pair
        det(3, 2, [0, 0, 5, 5], 0.4),  # dog in 3: negative
    ]
    e = label_events(gt, dets)
    order = np.argsort(e.cls)
    assert e.cls[order].tolist() == [0, 1]
    assert e.score[order].tolist() == [0.8, 0.4]
    assert e.is_tp[order].tolist() == [True, False]
    assert e.num_pos.tolist() == [2, 0]  # cat present in images 1 and 2; dog never (crowd only)


def test_crowd_only_image_is_neither_positive_nor_negative():
    gt = make_gt([(1, 1, [0, 0, 50, 50], 1)], num_images=1)
    e = label_events(gt, [det(1, 1, [0, 0, 5, 5], 0.9)])
    assert len(e.score) == 0 and e.num_pos.tolist() == [0, 0]
    c = e.counts_at(np.zeros(2))
    assert c.tp.sum() == 0 and c.fp.sum() == 0


def test_images_without_detections_are_false_negatives():
    gt = make_gt([(1, 1, [0, 0, 10, 10]), (2, 1, [0, 0, 10, 10])], num_images=2)
    c = label_events(gt, [det(1, 1, [0, 0, 10, 10], 0.9)]).counts_at(np.zeros(2))
    assert c.tp.tolist() == [1, 0] and c.recall[0] == 0.5


def test_undefined_ratios_are_nan_not_zero():
    assert math.isnan(float(safe_div(0, 0)))
    assert float(f1_from_counts(0, 3, 0)) == 0.0  # FPs on a class without GT: F1 0
    assert math.isnan(float(f1_from_counts(0, 0, 0)))  # nothing at all: undefined
    c = ev([1], [0.5], [False], [2, 0]).counts_at(np.zeros(2))
    assert math.isnan(c.precision[0]) and c.recall[0] == 0 and c.f1[0] == 0  # class 0: no predictions
    assert c.precision[1] == 0 and math.isnan(c.recall[1]) and c.f1[1] == 0  # class 1: no GT


def test_curve_one_point_per_distinct_score():
    e = ev([0] * 5, [0.9, 0.7, 0.7, 0.7, 0.2], [1, 1, 0, 0, 1], [4])
    c = e.curve(0)
    assert c.thresholds.tolist() == [0.9, 0.7, 0.2]
    assert c.tp.tolist() == [1, 2, 3] and c.fp.tolist() == [0, 2, 2]
    assert np.allclose(c.precision, [1, 0.5, 0.6]) and np.allclose(c.recall, [0.25, 0.5, 0.75])


def test_curves_flat_matches_per_class_curves():
    rng = np.random.default_rng(0)
    n = 300
    e = ev(rng.integers(0, 4, n), rng.integers(0, 20, n) / 20, rng.random(n) < 0.5, [30, 0, 10, 5])
    cls, thr, ctp, cfp = e.curves_flat()
    for k in range(4):
        c = e.curve(k)
        m = cls == k
        assert np.array_equal(thr[m], c.thresholds) and np.array_equal(ctp[m], c.tp) and np.array_equal(cfp[m], c.fp)


def test_tune_f1_picks_max_and_lowest_on_ties():
    # thresholds 0.9 -> TP1 (F1 2/3 with 2 pos), 0.5 -> +FP (F1 1/2), 0.3 -> +TP (F1 4/5)
    th = tune_thresholds(ev([0, 0, 0], [0.9, 0.5, 0.3], [1, 0, 1], [2]))
    assert th.per_class.tolist() == [0.3] and th.source == ["tuned"]
    # F1 tie: 0.8 -> TP1 of 1 (F1 1); 0.6 -> FP (2/3); no lower beats 1 -> 0.8
    th = tune_thresholds(ev([0, 0], [0.8, 0.6], [1, 0], [1]))
    assert th.per_class.tolist() == [0.8]
    # exact tie: TP at .9 (F1 2/3 with 2 pos) and TP,FP,FP... -> equal F1 picks the lower threshold
    th = tune_thresholds(ev([0, 0, 0, 0], [0.9, 0.6, 0.5, 0.4], [1, 0, 0, 1], [2]))
    # .9: 2/(1+2)=2/3 ; .6: 2/4 ; .5: 2/5 ; .4: 4/(4+2)=2/3 -> tie -> 0.4
    assert th.per_class.tolist() == [0.4]


def test_tune_all_scores_equal():
    th = tune_thresholds(ev([0] * 4, [0.5] * 4, [1, 0, 1, 0], [3]))
    assert th.per_class.tolist() == [0.5]
    c = ev([0] * 4, [0.5] * 4, [1, 0, 1, 0], [3]).counts_at(th.per_class)
    assert c.tp.tolist() == [2] and c.fp.tolist() == [2]


def test_tune_precision_target_lowest_threshold():
    e = ev([0] * 5, [0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 0, 1, 0], [4])
    # precision: .9 1.0 | .8 1.0 | .7 .667 | .6 .75 | .5 .6
    assert tune_thresholds(e, "precision", 0.75).per_class.tolist() == [0.6]
    assert tune_thresholds(e, "precision", 0.9).per_class.tolist() == [0.8]
    th = tune_thresholds(ev([0], [0.9], [0], [1]), "precision", 0.5)
    assert th.source == ["disabled"] and th.per_class[0] == np.inf
    with pytest.raises(ValueError):
        tune_thresholds(e, "precision", None)
    with pytest.raises(ValueError):
        tune_thresholds(e, "bogus")


def test_no_gt_class_falls_back_to_global_and_never_found_is_disabled():
    # class 0: normal; class 1: no positives in tuning (-> global); class 2: only FPs (-> disabled)
    e = ev([0, 0, 1, 2, 2], [0.9, 0.4, 0.95, 0.8, 0.7], [1, 1, 0, 0, 0], [2, 0, 3])
    th = tune_thresholds(e)
    assert th.source == ["tuned", "global", "disabled"]
    assert th.per_class[1] == th.global_threshold
    assert th.per_class[2] == np.inf
    c = e.counts_at(th.per_class)
    assert c.tp[2] == 0 and c.fp[2] == 0 and math.isnan(c.precision[2]) and c.recall[2] == 0


def test_no_events_at_all():
    th = tune_thresholds(ev([], [], [], [3, 0]))
    assert th.source == ["disabled", "global"] and th.global_threshold == np.inf
    assert isinstance(Thresholds.fixed(0.0, 2).per_class, np.ndarray)
