"""Per-class threshold criteria (eval.class_criteria): each named class gets exactly the threshold
the global tuning gives it under that criterion; the recall-floor criterion against a brute-force
NumPy search over the candidate thresholds; misspelt classes and bad entries refused in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gn_detect.evaluation import evaluate_detections
from gn_detect.evaluation.thresholds import Criterion, class_criteria_of, tune_thresholds

from .synthetic import jitter_detections, make_coco
from .test_labels_thresholds import ev


def _brute_force_recall_floor(scores, tp, num_pos, floor):
    """The candidate (a distinct score) with recall >= floor and the highest precision; the lowest
    such on ties; None when none reaches the floor."""
    best = None
    for t in sorted(set(scores), reverse=True):
        sel = scores >= t
        ntp, nfp = int((tp & sel).sum()), int((~tp & sel).sum())
        if ntp < floor * num_pos or ntp + nfp == 0:
            continue
        prec = ntp / (ntp + nfp)
        if best is None or prec >= best[0]:
            best = (prec, t)
    return None if best is None else best[1]


@pytest.mark.parametrize("seed", range(20))
def test_recall_floor_equals_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    scores = np.round(rng.random(n), 1)  # ties on purpose
    tp = rng.random(n) < 0.5
    num_pos = int(tp.sum() + rng.integers(0, 3))
    for floor in (0.2, 0.5, 0.8, 1.0):
        th = tune_thresholds(ev([0] * n, scores, tp, [num_pos]), "recall", target_recall=floor)
        want = _brute_force_recall_floor(scores, tp, num_pos, floor) if num_pos else None
        if num_pos == 0:
            assert th.source == ["global"]
        elif want is None:
            assert th.source == ["disabled"] and th.per_class[0] == np.inf
        else:
            assert th.source == ["tuned"] and th.per_class[0] == want, (scores, tp, num_pos, floor)


def test_each_class_gets_the_threshold_its_own_criterion_gives_it():
    rng = np.random.default_rng(3)
    cls = rng.integers(0, 4, 200)
    e = ev(cls, rng.random(200), rng.random(200) < 0.4, [30, 25, 20, 28])
    own = {0: Criterion("precision", 0.6), 2: Criterion("recall", 0.7)}
    th = tune_thresholds(e, class_criteria=own)
    by = {"f1": tune_thresholds(e), "precision": tune_thresholds(e, "precision", 0.6),
          "recall": tune_thresholds(e, "recall", target_recall=0.7)}
    assert th.per_class[0] == by["precision"].per_class[0] and th.per_class[2] == by["recall"].per_class[2]
    assert th.per_class[1] == by["f1"].per_class[1] and th.per_class[3] == by["f1"].per_class[3]
    assert th.global_threshold == by["f1"].global_threshold  # the global one keeps the global criterion
    assert len({by[k].per_class[0] for k in by}) > 1  # the criteria do differ on this data


def test_the_report_applies_and_records_class_criteria(tmp_path):
    gt = make_coco(40, 3, seed=1)
    dets = jitter_detections(gt, seed=1)
    spec = {"class_2": {"criterion": "precision", "target_precision": 0.9},
            "class_3": {"criterion": "recall", "target_recall": 0.5}}
    evaluate_detections(gt, dets, tmp_path / "own", tune="same", figures=False, class_criteria=spec)
    rep = json.loads((tmp_path / "own" / "report.json").read_text())
    ref = {}
    for name, kwargs in (("f1", {}), ("precision", {"criterion": "precision", "target_precision": 0.9}),
                         ("recall", {"criterion": "recall", "target_recall": 0.5})):
        evaluate_detections(gt, dets, tmp_path / name, tune="same", figures=False, **kwargs)
        ref[name] = {c["name"]: c["threshold"] for c in json.loads((tmp_path / name / "report.json").read_text())["per_class"]}
    got = {c["name"]: c["threshold"] for c in rep["per_class"]}
    assert got == {"class_1": ref["f1"]["class_1"], "class_2": ref["precision"]["class_2"],
                   "class_3": ref["recall"]["class_3"]}
    assert rep["thresholds"]["class_criteria"] == {"class_2": {"criterion": "precision", "target_precision": 0.9},
                                                   "class_3": {"criterion": "recall", "target_recall": 0.5}}
    md = (tmp_path / "own" / "report.md").read_text()
    assert "class_2: lowest threshold with precision >= 0.9; class_3: highest precision at recall >= 0.5" in md


def test_misspelt_class_and_bad_entries_are_one_line():
    with pytest.raises(ValueError, match=r"^eval\.class_criteria: \['Rbc'\] are not classes of the data") as e:
        class_criteria_of({"Rbc": {"criterion": "f1"}}, ["RBC", "WBC"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"eval\.class_criteria\.RBC: 'prec' is not one of f1, precision, recall"):
        class_criteria_of({"RBC": {"criterion": "prec"}}, ["RBC"])
    with pytest.raises(ValueError, match=r"needs 0 < target_recall <= 1"):
        class_criteria_of({"RBC": {"criterion": "recall"}}, ["RBC"])
