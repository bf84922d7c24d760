"""The worked example of docs/metrics.md, number for number. Change both together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gn_detect.evaluation.matching import FP, IGNORED, TP
from gn_detect.evaluation.report import build_report, evaluate_detections

from .conftest import REPO, det, make_gt

approx = pytest.approx


def example():
    gt = make_gt(
        [
            (1, 1, [0, 0, 10, 10]),  # A
            (1, 1, [20, 0, 10, 10]),  # B
            (2, 2, [0, 0, 10, 10]),  # C
            (3, 1, [0, 0, 10, 10]),  # D
            (3, 2, [50, 50, 40, 40], 1),  # E, crowd
        ],
        num_images=3,
        cats=("cat", "dog"),
    )
    dets = [
        det(1, 1, [0, 0, 10, 10], 0.9),
        det(1, 1, [1, 0, 10, 10], 0.8),
        det(1, 2, [20, 0, 10, 10], 0.6),
        det(2, 2, [0, 0, 10, 5], 0.7),
        det(3, 1, [5, 0, 10, 10], 0.4),
        det(3, 2, [60, 60, 10, 10], 0.5),
    ]
    return gt, dets


def by_name(rep):
    return {c["name"]: c for c in rep["per_class"]}


def test_box_outcomes_and_ious():
    rep, parts, _, _ = build_report(*example(), tune="same")
    ev = parts.full
    assert parts.tune is ev and parts.report is ev  # tune="same": one set of images for everything
    assert ev.matches.status.tolist() == [TP, FP, FP, TP, FP, IGNORED]
    assert ev.matches.iou.tolist() == approx([1.0, 0.0, 0.0, 0.5, 0.0, 1.0])
    assert ev.box.num_pos.tolist() == [3, 1] and ev.label.num_pos.tolist() == [2, 1]
    order = np.lexsort((-ev.label.score, ev.label.cls))
    assert list(zip(ev.label.cls[order].tolist(), ev.label.score[order].tolist(), ev.label.is_tp[order].tolist())) == [
        (0, 0.9, True), (0, 0.4, True), (1, 0.7, True), (1, 0.6, False)
    ]  # fmt: skip


def test_label_level_tuning_and_tables():
    rep, *_ = build_report(*example(), tune="same")
    t = rep["thresholds"]
    assert t["tuned_on_eval_split"] is True and t["level"] == "label" and t["criterion"] == "f1"
    assert t["global_threshold"] == 0.4
    c = by_name(rep)
    assert c["cat"]["threshold"] == 0.4 and c["dog"]["threshold"] == 0.7

    assert (c["cat"]["label"]["tp"], c["cat"]["label"]["fp"], c["cat"]["label"]["num_pos"]) == (2, 0, 2)
    assert (c["dog"]["label"]["tp"], c["dog"]["label"]["fp"], c["dog"]["label"]["num_pos"]) == (1, 0, 1)
    lm = rep["label"]["micro"]
    assert (lm["tp"], lm["fp"], lm["num_pos"]) == (3, 0, 3)
    assert (lm["precision"], lm["recall"], lm["f1"]) == (1, 1, 1)

    cb, db = c["cat"]["box"], c["dog"]["box"]
    assert (cb["tp"], cb["fp"], cb["num_gt"], cb["num_det"]) == (1, 2, 3, 3)
    assert (cb["precision"], cb["recall"], cb["f1"]) == approx((1 / 3, 1 / 3, 1 / 3))
    assert (db["tp"], db["fp"], db["num_gt"], db["num_det"]) == (1, 0, 1, 1)
    assert (db["precision"], db["recall"], db["f1"]) == (1, 1, 1)
    bm, bM = rep["box"]["micro"], rep["box"]["macro"]
    assert (bm["tp"], bm["fp"], bm["num_pos"]) == (2, 2, 4)
    assert (bm["precision"], bm["recall"], bm["f1"]) == approx((0.5, 0.5, 0.5))
    assert (bM["precision"], bM["recall"], bM["f1"]) == approx((2 / 3, 2 / 3, 2 / 3))

    # every detection
    ba, la = rep["box"]["all_detections"], rep["label"]["all_detections"]
    assert (ba["tp"], ba["fp"]) == (2, 3) and (ba["precision"], ba["recall"], ba["f1"]) == approx((0.4, 0.5, 4 / 9))
    assert (la["tp"], la["fp"]) == (3, 1) and (la["precision"], la["recall"]) == approx((0.75, 1.0))


def test_box_level_tuning():
    rep, *_ = build_report(*example(), level="box", tune="same")
    c = by_name(rep)
    assert c["cat"]["threshold"] == 0.9 and c["dog"]["threshold"] == 0.7
    assert rep["thresholds"]["global_threshold"] == 0.7
    bm, lm = rep["box"]["micro"], rep["label"]["micro"]
    assert (bm["tp"], bm["fp"]) == (2, 0) and (bm["precision"], bm["recall"], bm["f1"]) == approx((1, 0.5, 2 / 3))
    assert (lm["tp"], lm["fp"]) == (2, 0) and (lm["precision"], lm["recall"], lm["f1"]) == approx((1, 2 / 3, 0.8))
    assert rep["box"]["at_global_threshold"]["f1"] == approx(4 / 7)


def test_coco_ap():
    rep, *_ = build_report(*example(), tune="same")
    c = by_name(rep)
    assert c["cat"]["AP"] == approx(34 / 101) and c["cat"]["AP50"] == approx(34 / 101)
    assert c["dog"]["AP"] == approx(0.1) and c["dog"]["AP50"] == approx(1.0)
    assert rep["coco"]["AP50"] == approx((34 / 101 + 1) / 2)
    assert rep["coco"]["AP"] == approx((34 / 101 + 0.1) / 2)


def test_headline_and_markdown(tmp_path: Path):
    head = evaluate_detections(*example(), tmp_path, num_vis_images=0, tune="same")
    assert head["label_f1"] == 1 and head["box_f1"] == approx(0.5) and head["AP50"] == approx(0.668, abs=5e-4)
    md = (tmp_path / "report.md").read_text()
    # base P: cat in 2 of 3 images, F1 2 (2/3) / (1 + 2/3); "~": 2 TP of 2 cannot beat 2/3 by 2 SE
    assert "| cat | 0.337 | 0.337 | 0.400 | 0.333 | 0.333 | 0.333 | 3 | 3 | 1.000 ~ | 1.000 | 1.000 | 0.667 | 0.800 | 2 |" in md
    assert "> **Warning:** thresholds were tuned on the evaluation split itself" in md


def test_doc_mentions_the_same_numbers():
    doc = (REPO / "docs" / "metrics.md").read_text()
    for s in ("34/101 = 0.337", "6/(4+3) = **0.857**", "4/(4+2+2) = 0.5", "(1/3+1)/2 = 0.667", "F1 4/9 = 0.444",
              "F1 4/7 = 0.571", "AP = (0.337 + 0.1)/2 = 0.218"):
        assert s in doc, s
