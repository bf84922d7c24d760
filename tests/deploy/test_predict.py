"""tools/predict.py: COCO results that pycocotools' loadRes accepts, boxes in original pixels for
images of any size and mode, one drawn image per input, and the run's tuned per-class
thresholds (a crafted report.json) deciding what is written."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from pycocotools.coco import COCO

from gn_detect.deploy.predict import predict_run
from gn_detect.deploy.options import PredictConfig
from tests.engine._train_utils import REPO, child_env, tail

from ._runs import make_run, write_report

NAMES = {1: "circle", 2: "square", 3: "triangle", 4: "star", 5: "cross"}


def _images(shapes_root: Path, folder: Path) -> Path:
    """Two shapes val images, a grayscale and an RGBA image of odd sizes, a broken file, a text file."""
    folder.mkdir()
    for name in ("000001.jpg", "000003.jpg"):
        shutil.copy(shapes_root / "val" / name, folder / name)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (77, 130), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (150, 61, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    (folder / "broken.jpg").write_text("not an image")
    (folder / "notes.txt").write_text("not an image either")
    return folder


def _predict(tmp_path: Path, ckpt: Path, images: Path, out: str, **extra) -> dict:
    cfg = OmegaConf.merge(OmegaConf.structured(PredictConfig),
                          {"checkpoint": str(ckpt), "input": str(images), "output": str(tmp_path / out), **extra})
    return predict_run(cfg, base_dir=tmp_path)


def test_predict_writes_coco_results_loadres_accepts(shapes_root, tmp_path):
    ckpt = make_run(tmp_path / "run", shapes_root, **{"model.backbone.norm": "bn", "model.head.norm": "gn"})
    images = _images(shapes_root, tmp_path / "images")
    cmd = [sys.executable, str(REPO / "tools" / "predict.py"), f"checkpoint={ckpt}", f"input={images}",
           "output=preds", "score_thresh=0.3", "batch_size=3"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=child_env(), timeout=120,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, tail(proc)
    out = tmp_path / "preds"
    meta = json.loads((out / "images.json").read_text())
    assert [im["file_name"] for im in meta["images"]] == ["000001.jpg", "000003.jpg", "gray.png", "rgba.png"]
    assert {c["id"]: c["name"] for c in meta["categories"]} == NAMES
    assert [s["file"] for s in meta["info"]["skipped"]] == ["broken.jpg"]
    results = json.loads((out / "detections.json").read_text())
    assert results and all(r["score"] >= 0.3 for r in results)
    coco = COCO(str(out / "images.json")).loadRes(str(out / "detections.json"))
    assert len(coco.getAnnIds()) == len(results)
    for r in results:  # xywh in the original image's pixels
        im = coco.imgs[r["image_id"]]
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= im["width"] + 0.01 and y + h <= im["height"] + 0.01
    for name in ("000001.jpg", "000003.jpg", "gray.png", "rgba.png"):
        with Image.open(out / "drawn" / name) as drawn, Image.open(images / name) as orig:
            assert drawn.size == orig.size and drawn.mode == "RGB"


def _everything(tmp_path: Path, ckpt: Path, images: Path) -> tuple[list, dict, int, int, float]:
    """Every detection (score_thresh 0), the count per class, the two most detected classes and
    the median score of the first."""
    _predict(tmp_path, ckpt, images, "all", score_thresh=0.0, draw=False)
    everything = json.loads((tmp_path / "all" / "detections.json").read_text())
    counts = {cid: sum(r["category_id"] == cid for r in everything) for cid in NAMES}
    first, second = sorted((c for c in NAMES if counts[c]), key=lambda c: -counts[c])[:2]
    middle = float(np.median([r["score"] for r in everything if r["category_id"] == first]))
    return everything, counts, first, second, middle


def test_tuned_thresholds_decide_what_is_written(shapes_root, tmp_path, one_thread):
    ckpt = make_run(tmp_path / "run", shapes_root, **{"model.backbone.norm": "bn"})
    images = _images(shapes_root, tmp_path / "images")
    everything, counts, cut, kept, middle = _everything(tmp_path, ckpt, images)
    thresholds = {cid: None for cid in NAMES} | {kept: 0.0, cut: middle}
    write_report(tmp_path / "run", thresholds, NAMES)
    summary = _predict(tmp_path, ckpt, images, "tuned", draw=False)
    tuned = json.loads((tmp_path / "tuned" / "detections.json").read_text())
    expected = [r for r in everything if r["category_id"] == kept or (r["category_id"] == cut and r["score"] >= middle)]
    assert summary["thresholds"] == "report" and tuned == expected
    assert 0 < sum(r["category_id"] == cut for r in tuned) < counts[cut]  # the tuned threshold cut the class
    assert len({r["category_id"] for r in everything}) > 2  # and the disabled classes were there to drop
    record = json.loads((tmp_path / "tuned" / "images.json").read_text())["info"]["thresholds"]
    assert record["source"] == "report" and {c["id"]: c["threshold"] for c in record["per_class"]} == thresholds


def test_predict_refuses_in_one_line_before_loading(shapes_root, tmp_path):
    ckpt = make_run(tmp_path / "run", shapes_root)
    images = _images(shapes_root, tmp_path / "images")
    base = [sys.executable, str(REPO / "tools" / "predict.py"), f"checkpoint={ckpt}", "output=o"]
    cases = {"input=missing_folder": "input: missing_folder does not exist", f"input={images}": "score_thresh="}
    for arg, expected in cases.items():
        proc = subprocess.run(base + [arg], cwd=str(tmp_path), env=child_env(HYDRA_FULL_ERROR="0"), timeout=120,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gn-detect:")]
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], tail(proc)
    assert not (tmp_path / "o").exists()


def test_a_threshold_file_sets_the_classes_it_lists(shapes_root, tmp_path, one_thread):
    """thresholds=<json {class name: threshold}>: the listed classes at theirs (null: never), the
    others at score_thresh; a report.json given there reads as its per-class thresholds; a class the
    model does not have is refused in one line, exit status 2, before anything is written."""
    ckpt = make_run(tmp_path / "run", shapes_root, **{"model.backbone.norm": "bn"})
    images = _images(shapes_root, tmp_path / "images")
    everything, counts, cut, gone, middle = _everything(tmp_path, ckpt, images)
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({NAMES[cut]: middle, NAMES[gone]: None}))
    summary = _predict(tmp_path, ckpt, images, "mine", score_thresh=0.0, thresholds=str(own), draw=False)
    got = json.loads((tmp_path / "mine" / "detections.json").read_text())
    expected = [r for r in everything if r["category_id"] not in (cut, gone) or
                (r["category_id"] == cut and r["score"] >= middle)]
    assert summary["thresholds"] == "file+score_thresh" and got == expected
    assert 0 < sum(r["category_id"] == cut for r in got) < counts[cut]

    # the tuned thresholds a report writes, given as the threshold file (no report= needed)
    (tmp_path / "elsewhere").mkdir()
    report = write_report(tmp_path / "elsewhere", {cid: None for cid in NAMES} | {cut: middle}, NAMES)
    _predict(tmp_path, ckpt, images, "report_file", thresholds=str(report), draw=False)
    got = json.loads((tmp_path / "report_file" / "detections.json").read_text())
    assert got == [r for r in everything if r["category_id"] == cut and r["score"] >= middle]

    own.write_text(json.dumps({"circel": 0.5}))
    cmd = [sys.executable, str(REPO / "tools" / "predict.py"), f"checkpoint={ckpt}", f"input={images}",
           "output=bad", "score_thresh=0.3", f"thresholds={own}"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=child_env(HYDRA_FULL_ERROR="0"), timeout=120,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gn-detect:")]
    assert proc.returncode == 2 and len(lines) == 1 and "['circel'] are not classes of the model" in lines[0], tail(proc)
    assert not (tmp_path / "bad" / "detections.json").exists()
