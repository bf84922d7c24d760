"""COCOeval wrapper: empty input, per-class AP, silence, and the two backends (faster-coco-eval,
the default, and pycocotools, the reference)."""

from __future__ import annotations

import copy
import inspect
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from gn_detect.evaluation import build_report, evaluate_detections
from gn_detect.evaluation.coco_eval import STAT_NAMES, available_backends, coco_metrics

from .conftest import det, make_gt
from .synthetic import jitter_detections, make_coco


def test_empty_detections_zero_where_gt_nan_elsewhere(capsys):
    gt = make_gt([(1, 1, [0, 0, 10, 10])], cats=("cat", "dog"))
    r = coco_metrics(gt, [])
    assert r.stats["AP"] == 0 and r.stats["AP50"] == 0 and r.stats["AR100"] == 0
    assert math.isnan(r.stats["APl"])  # no large GT: COCO's -1 becomes NaN
    assert r.per_class_ap[1] == 0 and math.isnan(r.per_class_ap[2])
    assert "Average Precision" in r.summary
    assert capsys.readouterr().out == ""  # COCOeval's printing is captured, not shown


def test_perfect_detections_and_per_class_ap_formula():
    gt = make_gt([(1, 1, [0, 0, 10, 10]), (2, 2, [0, 0, 20, 20])])
    r = coco_metrics(gt, [det(1, 1, [0, 0, 10, 10], 0.9), det(2, 2, [30, 30, 20, 20], 0.9)])
    assert r.per_class_ap[1] == pytest.approx(1.0) and r.per_class_ap[2] == 0.0
    # detectron2's per-class AP: mean of precision[:, :, k, area all, maxDets 100] over valid entries
    p = r.precision[:, :, 0, 0, -1]
    assert r.per_class_ap[1] == p[p > -1].mean()
    assert r.stats["AP"] == pytest.approx(0.5)
    assert set(r.stats) == set(STAT_NAMES)


def test_input_dicts_not_mutated():
    gt = make_gt([(1, 1, [0, 0, 10, 10])])
    dets = [det(1, 1, [0, 0, 10, 10], 0.9)]
    before = copy.deepcopy(dets)
    coco_metrics(gt, dets)
    assert dets == before


def test_bad_backend():
    with pytest.raises(ValueError):
        coco_metrics(make_gt([]), [], backend="nope")


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_unknown_image_id_is_an_error(backend):
    gt = make_gt([(1, 1, [0, 0, 10, 10])])
    with pytest.raises(ValueError, match="1 detection image_id"):
        coco_metrics(gt, [det(1, 1, [0, 0, 10, 10], 0.9), det(99, 1, [0, 0, 10, 10], 0.5)], backend=backend)


def test_faster_coco_eval_is_a_dependency_and_the_default():
    """Issue 10 D. Before: an optional extra, and pycocotools (6.5x slower) was the default."""
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert any(d.replace(" ", "").startswith("faster-coco-eval>=") for d in project["dependencies"])
    assert "faster_coco_eval" in available_backends()
    for fn in (coco_metrics, build_report):  # evaluate_detections passes its report options on
        assert inspect.signature(fn).parameters["backend"].default == "faster_coco_eval", fn.__name__
    assert coco_metrics(make_gt([(1, 1, [0, 0, 10, 10])]), []).backend == "faster_coco_eval"


@pytest.mark.parametrize("case", ["synthetic", "empty", "tiny"])
def test_faster_backend_gives_the_same_numbers(case, request):
    if case == "tiny":
        gt = request.getfixturevalue("tiny_val")
        dets = jitter_detections(gt, seed=5, round_scores=2)
    else:
        gt = make_coco(60, 4, crowd_fraction=0.05, seed=7)
        dets = [] if case == "empty" else jitter_detections(gt, seed=8)
    a = coco_metrics(gt, dets, backend="pycocotools")
    b = coco_metrics(gt, dets, backend="faster_coco_eval")
    # same algorithm in C++: equal up to float summation order (last bit)
    for k in STAT_NAMES:
        assert (math.isnan(a.stats[k]) and math.isnan(b.stats[k])) or abs(a.stats[k] - b.stats[k]) < 1e-12, k
    pa = np.array([a.per_class_ap[c] for c in sorted(a.per_class_ap)])
    pb = np.array([b.per_class_ap[c] for c in sorted(b.per_class_ap)])
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-12)
    assert np.array_equal(np.isnan(pa), np.isnan(pb))
    assert a.summary.splitlines()[:12] == b.summary.splitlines()[:12]


def test_both_backends_give_the_same_report_on_a_real_split(tiny_val):
    """tiny_coco val (50 real COCO images, 80 classes, crowd regions) with jittered ground truth
    as detections, halves tuned/reported: the whole report agrees between the backends."""
    dets = jitter_detections(tiny_val, seed=11, fp_per_image=20, round_scores=3)
    a, *_ = build_report(tiny_val, dets, tune="half", backend="pycocotools")
    b, *_ = build_report(tiny_val, dets, tune="half", backend="faster_coco_eval")
    assert a["params"].pop("backend") == "pycocotools" and b["params"].pop("backend") == "faster_coco_eval"
    for k in STAT_NAMES:
        x, y = a["coco"].pop(k), b["coco"].pop(k)
        assert (x is None and y is None) or abs(x - y) < 1e-12, k
        x, y = a["headline"].pop(k, 0.0), b["headline"].pop(k, 0.0)
        assert (x is None and y is None) or abs(x - y) < 1e-12, k
    for ca, cb in zip(a["per_class"], b["per_class"]):
        for k in ("AP", "AP50"):
            x, y = ca.pop(k), cb.pop(k)
            assert (x is None and y is None) or abs(x - y) < 1e-12, (ca["name"], k)
    assert a["coco_summary"].splitlines()[:12] == b["coco_summary"].splitlines()[:12]
    a.pop("coco_summary"), b.pop("coco_summary")
    assert a == b  # thresholds, tables, coverage: independent of the backend
    assert a["coverage"]["ap"]["images"] == 50
