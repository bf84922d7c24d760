"""The "predict everything" warning (docs/metrics.md, "Degenerate thresholds") on crafted cases
whose counts are worked out by hand in each test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gn_detect.evaluation import evaluate_detections
from gn_detect.evaluation.console import format_results
from gn_detect.evaluation.degenerate import NOISE_SE, predict_everything, predict_everything_warning
from gn_detect.evaluation.events import Counts
from gn_detect.evaluation.report import build_report

from .conftest import det, make_gt
from .test_worked_example import example

BOX = [10, 10, 20, 20]


def _report(tmp_path: Path, gt, dets) -> dict:
    evaluate_detections(gt, dets, tmp_path, tune="same", figures=False)
    return json.loads((tmp_path / "report.json").read_text())


def test_a_class_predicted_in_every_image(tmp_path: Path) -> None:
    # 40 images; cat (id 1) in images 1-16 and detected in all 40 with one score, so its only
    # threshold keeps all 40 (F1 = 32/56 > 0); dog (id 2) in images 1-20, detected exactly there.
    anns = [(i, 1, BOX) for i in range(1, 17)] + [(i, 2, BOX) for i in range(1, 21)]
    gt = make_gt(anns, num_images=40)
    dets = [det(i, 1, BOX, 0.5) for i in range(1, 41)] + [det(i, 2, BOX, 0.9) for i in range(1, 21)]
    rep = _report(tmp_path, gt, dets)
    block = rep["thresholds"]["predict_everything"]
    assert block["classes_predicted_everywhere"] == ["cat"]
    cat = rep["per_class"][0]["label"]
    assert cat["num_pred"] == 40 and cat["precision"] == pytest.approx(16 / 40)  # = cat's frequency
    # micro: TP 36, FP 24 -> 0.6; baseline 36 / 80 = 0.45; margin 2 sqrt(0.45 * 0.55 / 60) = 0.128
    assert block["label_precision"] == pytest.approx(0.6) and block["baseline_precision"] == pytest.approx(0.45)
    assert block["margin"] == pytest.approx(2 * math.sqrt(0.45 * 0.55 / 60))
    assert not block["precision_no_better_than_baseline"] and block["degenerate"]
    (w,) = [w for w in rep["warnings"] if "predict everything" in w]
    assert "in every image" in w and w.endswith("check the data") and "cat" in w and "dog" not in w
    assert f"> **Warning:** {w}" in (tmp_path / "report.md").read_text()


def test_precision_no_better_than_every_class_everywhere(tmp_path: Path) -> None:
    # 20 images, each class in 10 of them (baseline 0.5); per class the detections rank the images
    # P N P N ... P N (one per image), so the best F1 keeps 10 P + 9 N (20/29) and drops the
    # lowest N: no class is predicted in every image, but 38 of the 40 pairs are, and micro
    # precision 20 / 38 = 0.526 is within 2 SE (2 sqrt(0.25 / 38) = 0.162) of 0.5.
    anns, dets = [], []
    for cat in (1, 2):
        pos = list(range(1, 11)) if cat == 1 else list(range(11, 21))
        neg = [i for i in range(1, 21) if i not in pos]
        anns += [(i, cat, BOX) for i in pos]
        for r, (p, n) in enumerate(zip(pos, neg)):
            dets += [det(p, cat, BOX, 0.9 - 0.04 * r), det(n, cat, BOX, 0.88 - 0.04 * r)]
    rep = _report(tmp_path, make_gt(anns, num_images=20), dets)
    block = rep["thresholds"]["predict_everything"]
    assert [c["label"]["num_pred"] for c in rep["per_class"]] == [19, 19]
    assert block["classes_predicted_everywhere"] == []
    assert block["label_precision"] == pytest.approx(20 / 38) and block["baseline_precision"] == 0.5
    assert block["precision_no_better_than_baseline"] and block["degenerate"]
    (w,) = [w for w in rep["warnings"] if "predict everything" in w]
    assert "predict 95% of all (image, class) pairs" in w and "(0.526) is not above 0.500" in w and "(0.162)" in w


def test_a_detector_that_separates_the_classes_gets_no_warning(tmp_path: Path) -> None:
    anns = [(i, 1 + i % 2, BOX) for i in range(1, 21)]
    dets = [det(i, 1 + i % 2, BOX, 0.9) for i in range(1, 21)] + [det(i, 2 - i % 2, BOX, 0.2) for i in range(1, 21)]
    rep = _report(tmp_path, make_gt(anns, num_images=20), dets)
    block = rep["thresholds"]["predict_everything"]
    assert block["label_precision"] == 1.0 and not block["degenerate"]
    assert not any("predict everything" in w for w in rep["warnings"])


def test_rule_edges() -> None:
    names = ["a", "b"]
    # nothing predicted: precision undefined, no rule applies
    none = predict_everything(Counts(np.array([0, 0]), np.array([0, 0]), np.array([3, 1])), np.array([10, 10]), names)
    assert not none["degenerate"] and none["label_precision"] is None and none["margin"] is None
    # every pair positive (baseline 1): predicting everywhere is perfect, so nothing is learnt
    full = predict_everything(Counts(np.array([10, 10]), np.array([0, 0]), np.array([10, 10])), np.array([10, 10]),
                              names)
    assert full["degenerate"] and full["classes_no_better_than_baseline"] == ["a", "b"]
    assert "already perfect at label level" in predict_everything_warning(full)
    # the boundary: p0 = 0.5, n = 80 of 100 pairs, so the rule fires up to
    # P = 0.5 + 2 sqrt(0.25 / 80) = 0.6118: P = 48 / 80 = 0.6 fires, 49 / 80 does not
    assert NOISE_SE == 2.0
    pairs, npos = np.array([50, 50]), np.array([25, 25])
    at = predict_everything(Counts(np.array([24, 24]), np.array([16, 16]), npos), pairs, names)
    above = predict_everything(Counts(np.array([25, 24]), np.array([15, 16]), npos), pairs, names)
    assert at["coverage"] == 0.8 and at["margin"] == pytest.approx(2 * math.sqrt(0.25 / 80))
    assert at["precision_no_better_than_baseline"] and not above["precision_no_better_than_baseline"]
    assert predict_everything_warning(above) is None
    # per class: a = 25 / 40 = 0.625 > 0.5 + 2 sqrt(0.25 / 40) = 0.658? no: within, flagged; b = 24 / 40 too
    assert above["classes_no_better_than_baseline"] == ["a", "b"]
    # the same precision on fewer pairs (79 of 100) fires too: the rule does not depend on coverage
    few = predict_everything(Counts(np.array([24, 24]), np.array([15, 16]), npos), pairs, names)
    assert few["coverage"] < 0.8 and few["precision_no_better_than_baseline"] and few["degenerate"]
    assert predict_everything_warning(at, short=True) == (
        "tuned thresholds degenerate to 'predict everything' (label precision 0.600 vs 0.500 for every class "
        "in every image); see report.md")
    assert at["baseline"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 * 0.5 / 1.5)}


def test_every_class_in_most_images(tmp_path: Path) -> None:
    # The case, fabricated: 3 classes, 30 images, each image holds 2 of them (so every
    # class is in 20 of 30 images; baseline P = 60 / 90 = 2/3, R = 1, F1 = 0.8). The detector
    # predicts the right classes in the first 10 images only (score 0.9) and, for the rest, the
    # wrong one at 0.9 and the right ones at 0.5: tuned on F1, it keeps a third of the pairs
    # with label P near the baseline, so it is flagged; a second detector that is right
    # everywhere is not.
    anns, bad, good = [], [], []
    for i in range(1, 31):
        present = [(i + k) % 3 + 1 for k in (0, 1)]
        absent = ({1, 2, 3} - set(present)).pop()
        anns += [(i, c, BOX) for c in present]
        good += [det(i, c, BOX, 0.9) for c in present] + [det(i, absent, BOX, 0.1)]
        if i <= 10:
            bad += [det(i, c, BOX, 0.9) for c in present]
        else:
            bad += [det(i, absent, BOX, 0.9)] + [det(i, c, BOX, 0.5) for c in present]
    gt = make_gt(anns, num_images=30, cats=("WBC", "RBC", "Platelets"))
    # numpy reference for the baseline: positive pairs / all pairs
    pos = np.zeros((30, 3), bool)
    for i, c, _ in anns:
        pos[i - 1, c - 1] = True
    rep = _report(tmp_path / "bad", gt, bad)
    block = rep["thresholds"]["predict_everything"]
    assert rep["label"]["baseline"]["precision"] == pytest.approx(pos.mean())
    assert rep["label"]["baseline"]["f1"] == pytest.approx(2 * pos.mean() / (1 + pos.mean()))
    for c, row in enumerate(rep["per_class"]):
        assert row["label"]["baseline"]["precision"] == pytest.approx(pos[:, c].mean())
    p, n = block["label_precision"], block["num_pred"]
    assert p <= pos.mean() + 2 * math.sqrt(pos.mean() * (1 - pos.mean()) / n)
    assert block["degenerate"] and rep["headline"]["label_degenerate"]
    md = (tmp_path / "bad" / "report.md").read_text()
    assert "| label | baseline: every class in every image | 0.667 | 1.000 | 0.800 |" in md
    assert "**Label level is degenerate**" in md
    text = format_results(rep["headline"], run_dir=tmp_path, report_path=tmp_path / "bad" / "report.md")
    (lab,) = [ln for ln in text.splitlines() if "label @ tuned thr" in ln]
    (base,) = [ln for ln in text.splitlines() if "label baseline" in ln]
    assert "DEGENERATE" in lab and base.split()[2:5] == ["0.667", "1.000", "0.800"]

    rep = _report(tmp_path / "good", gt, good)
    assert rep["label"]["micro"]["precision"] == 1.0 and not rep["thresholds"]["predict_everything"]["degenerate"]
    assert not any(row["label"]["no_better_than_baseline"] for row in rep["per_class"])
    text = format_results(rep["headline"], run_dir=tmp_path, report_path=tmp_path / "good" / "report.md")
    assert "DEGENERATE" not in text and "label baseline" in text


def test_the_worked_example_is_within_noise_of_its_baseline() -> None:
    # docs/metrics.md: 5 counted pairs ((3, dog) is crowd-only), 3 positive (p0 = 0.6); at the
    # tuned thresholds 3 predicted, all TP: P = 1.0 is not above 0.6 + 2 sqrt(0.24 / 3) = 1.166,
    # so three predictions cannot show the model beats "every class everywhere"
    gt, dets = example()
    rep = build_report(gt, dets, tune="same")[0]
    block = rep["thresholds"]["predict_everything"]
    assert block["coverage"] == pytest.approx(3 / 5) and block["baseline_precision"] == pytest.approx(3 / 5)
    assert block["margin"] == pytest.approx(2 * math.sqrt(0.24 / 3))
    assert block["label_precision"] == 1.0 and block["degenerate"] and block["classes_predicted_everywhere"] == []
