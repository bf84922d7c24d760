"""evaluate_detections end to end: files, schema, honest tuning flag, edge cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gn_detect.evaluation import HEADLINE_KEYS, evaluate_detections, filter_detections, split_coco
from gn_detect.evaluation.report import build_report

from .conftest import det, make_gt
from .synthetic import jitter_detections, make_coco

PER_CLASS_KEYS = {"name", "cat_id", "AP", "AP50", "threshold", "threshold_source", "box", "label"}
BOX_KEYS = {"precision", "recall", "f1", "num_gt", "num_det", "tp", "fp", "num_ignored", "num_det_all"}
LABEL_KEYS = {"precision", "recall", "f1", "num_pos", "num_pred", "tp", "fp"}


class Recorder:
    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, value, step))


def check_schema(rep: dict) -> None:
    for k in ("coco", "per_class", "label", "box", "thresholds", "num_images", "num_detections", "headline",
              "warnings", "params", "schema_version", "coco_summary"):
        assert k in rep, k
    assert set(rep["coco"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"}
    for lvl in ("label", "box"):
        assert set(rep[lvl]["micro"]) >= {"precision", "recall", "f1"}
        assert set(rep[lvl]["macro"]) >= {"precision", "recall", "f1"}
    assert set(rep["thresholds"]) >= {"criterion", "level", "tuned_on_eval_split", "global_threshold"}
    for c in rep["per_class"]:
        assert set(c) >= PER_CLASS_KEYS and set(c["box"]) >= BOX_KEYS and set(c["label"]) >= LABEL_KEYS
    assert set(rep["headline"]) == set(HEADLINE_KEYS)


def test_full_report_files_and_writer(tmp_path: Path):
    gt = make_coco(30, 4, crowd_fraction=0.05, seed=11)
    # one class without GT: keep its category, drop its annotations
    gt.dataset["annotations"] = [a for a in gt.dataset["annotations"] if a["category_id"] != 4]
    gt.createIndex()
    dets = jitter_detections(gt, seed=12)
    assert any(d["category_id"] == 4 for d in dets)
    # images for examples.png
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    for im in gt.dataset["images"][:10]:
        Image.new("RGB", (im["width"], im["height"]), (90, 90, 90)).save(root / im["file_name"])
    w = Recorder()
    out = tmp_path / "run"
    head = evaluate_detections(gt, dets, out, image_root=root, writer=w, step=7, num_vis_images=2, tune="same")

    for f in ("report.json", "report.md", "per_class.csv", "pr_curves.png", "examples.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    text = (out / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    rep = json.loads(text)
    check_schema(rep)
    assert head == rep["headline"]
    assert all(v is None or 0 <= v <= 1 for v in head.values())
    assert {t for t, _, s in w.calls} == {f"eval/{k}" for k, v in head.items() if v is not None}
    assert all(s == 7 for _, _, s in w.calls)

    # class without GT: recall undefined (null / n/a), its detections are FPs
    c4 = next(c for c in rep["per_class"] if c["cat_id"] == 4)
    assert c4["box"]["num_gt"] == 0 and c4["box"]["recall"] is None and c4["label"]["recall"] is None
    assert c4["AP"] is None and c4["threshold_source"] == "global"
    if c4["box"]["num_det"]:
        assert c4["box"]["precision"] == 0 and c4["box"]["fp"] == c4["box"]["num_det"] - c4["box"]["num_ignored"]
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith(f"| {c4['name']} |"))
    assert "n/a" in row

    # tuned on the evaluation split: flagged in JSON and as a warning line in the markdown
    assert rep["thresholds"]["tuned_on_eval_split"] is True
    assert any("Warning:** thresholds were tuned on the evaluation split" in line for line in md.splitlines())

    rows = list(csv.DictReader(open(out / "per_class.csv")))
    assert len(rows) == 4 and rows[3]["box_recall"] == ""
    assert float(rows[0]["box_precision"]) == pytest.approx(rep["per_class"][0]["box"]["precision"])


def test_separate_tuning_split_is_honest():
    gt = make_coco(40, 3, seed=13)
    dets = jitter_detections(gt, seed=14)
    tune, ev = split_coco(gt, 0.5, seed=0)
    rep, *_ = build_report(
        ev, filter_detections(dets, ev.getImgIds()), tune_gt=tune,
        tune_detections=filter_detections(dets, tune.getImgIds()), tune="same"
    )  # fmt: skip
    t = rep["thresholds"]
    assert t["tuned_on_eval_split"] is False and t["overlap_images"] == 0
    assert t["num_tune_images"] == 20 and rep["num_images"] == 20
    assert not any("tuned on the evaluation split" in w for w in rep["warnings"])
    # the same thresholds applied to the eval split: recompute one class by hand
    c = rep["per_class"][0]
    ev_dets = [d for d in filter_detections(dets, ev.getImgIds()) if d["category_id"] == c["cat_id"]]
    assert c["box"]["num_det"] == sum(d["score"] >= c["threshold"] for d in ev_dets)


def test_tune_split_passing_same_coco_is_flagged():
    gt = make_coco(10, 2, seed=1)
    dets = jitter_detections(gt, seed=1)
    rep, *_ = build_report(gt, dets, tune_gt=gt, tune_detections=dets, tune="same")
    assert rep["thresholds"]["tuned_on_eval_split"] is True
    with pytest.raises(ValueError):
        build_report(gt, dets, tune_gt=gt, tune="same")


def test_no_detections_at_all(tmp_path: Path):
    gt = make_gt([(1, 1, [0, 0, 10, 10]), (2, 2, [0, 0, 10, 10])])
    head = evaluate_detections(gt, [], tmp_path, tune="same")
    assert head["AP"] == 0 and head["AP50"] == 0
    assert head["box_precision"] is None and head["label_precision"] is None  # nothing predicted
    assert head["box_recall"] == 0 and head["label_recall"] == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["num_detections"] == 0 and any("no detections" in w for w in rep["warnings"])
    assert all(c["threshold"] is None and c["threshold_source"] == "disabled" for c in rep["per_class"])
    assert "off" in (tmp_path / "report.md").read_text()


def test_images_without_detections_and_crowd_only_image():
    gt = make_gt(
        [(1, 1, [0, 0, 10, 10]), (2, 1, [0, 0, 10, 10]), (3, 2, [0, 0, 60, 60], 1)],  # image 3: crowd only
        num_images=4,  # image 4: no GT at all
    )
    dets = [det(1, 1, [0, 0, 10, 10], 0.9), det(3, 2, [5, 5, 10, 10], 0.8), det(4, 2, [0, 0, 5, 5], 0.1)]
    rep, *_ = build_report(gt, dets, criterion="precision", target_precision=0.5, tune="same")
    cat, dog = rep["per_class"]
    assert cat["box"]["recall"] == 0.5 and cat["label"]["recall"] == 0.5  # image 2 has no detection
    # dog: the detection on the crowd region is ignored; the one in image 4 is a (label/box) FP
    assert dog["box"]["num_gt"] == 0 and dog["label"]["num_pos"] == 0
    assert dog["box"]["num_det_all"] == 2
    assert rep["num_images"] == 4


def test_all_scores_equal():
    gt = make_gt([(1, 1, [0, 0, 10, 10]), (2, 1, [0, 0, 10, 10])])
    dets = [det(1, 1, [0, 0, 10, 10], 0.5), det(2, 1, [50, 50, 10, 10], 0.5), det(3, 1, [0, 0, 10, 10], 0.5)]
    rep, *_ = build_report(gt, dets, tune="same")
    cat = rep["per_class"][0]
    assert cat["threshold"] == 0.5  # the only candidate: every detection or none
    assert cat["box"]["tp"] == 1 and cat["box"]["fp"] == 2
    # label level: image 2 has a cat and a cat detection (a box FP), so the pair is a label TP
    assert cat["label"]["tp"] == 2 and cat["label"]["fp"] == 1


def test_max_dets_cap_applies_everywhere():
    gt = make_gt([(1, 1, [0, 0, 10, 10])], num_images=1)
    dets = [det(1, 1, [50, 50, 10, 10], 0.9), det(1, 1, [0, 0, 10, 10], 0.1)]
    rep, *_ = build_report(gt, dets, max_dets=1, tune="same")
    assert rep["num_detections"] == 2 and rep["num_detections_evaluated"] == 1
    assert rep["coco"]["AP50"] == 0 and rep["box"]["all_detections"]["recall"] == 0


def test_box_level_tuning_and_bad_args():
    gt = make_coco(15, 2, seed=2)
    dets = jitter_detections(gt, seed=3)
    rep, *_ = build_report(gt, dets, level="box", tune="same")
    assert rep["thresholds"]["level"] == "box"
    with pytest.raises(ValueError):
        build_report(gt, dets, level="pixel", tune="same")
    with pytest.raises(ValueError):
        build_report(gt, dets, iou_threshold=0, tune="same")



def test_numpy_typed_detections_give_the_same_report():
    import numpy as np

    gt = make_coco(12, 3, seed=5)
    dets = jitter_detections(gt, seed=6)
    np_dets = [
        {"image_id": np.int64(d["image_id"]), "category_id": np.int32(d["category_id"]),
         "bbox": np.array(d["bbox"], np.float64), "score": np.float64(d["score"])}
        for d in dets
    ]  # fmt: skip
    a, *_ = build_report(gt, dets, tune="same")
    b, *_ = build_report(gt, np_dets, tune="same")
    assert a["headline"] == b["headline"] and a["per_class"] == b["per_class"]
