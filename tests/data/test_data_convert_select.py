"""Issue 30: point/line boxes dropped and counted by the converters and by the dataset's
checks; a class selection (--keep) that drops and counts the other classes' boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from gn_detect.data import CocoDetection, voc_to_coco, yolo_to_coco
from gn_detect.data.convert_dataset import ConversionError, select_classes

from .test_data_build import load_tool

# three classes, one image: a WBC box, an RBC box, a Platelets point (xmin == xmax, ymin == ymax)
# and an RBC line (ymin == ymax); VOC is 1-based inclusive
OBJECTS = [("WBC", (11, 6, 30, 15)), ("RBC", (2, 2, 8, 9)), ("Platelets", (20, 10, 20, 10)), ("RBC", (3, 4, 9, 4))]


def _voc(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, (a, b, c, d) in OBJECTS)
    (folder / "a.xml").write_text(f"<annotation><filename>a.jpg</filename><size><width>40</width>"
                                  f"<height>20</height></size>{objs}</annotation>")
    return folder


def test_voc_point_and_line_boxes_are_counted_drops(tmp_path: Path) -> None:
    data = voc_to_coco(_voc(tmp_path / "Ann"))
    kept = [(next(c["name"] for c in data["categories"] if c["id"] == a["category_id"]), a["bbox"])
            for a in data["annotations"]]
    # 1-based inclusive -> [x - 1, y - 1, x2 - x1 + 1, ...] for the two boxes with an extent
    assert kept == [("WBC", [10.0, 5.0, 20.0, 10.0]), ("RBC", [1.0, 1.0, 7.0, 8.0])]
    assert data["info"]["dropped"] == {"degenerate_box": 2}


def test_yolo_zero_size_boxes_are_counted_drops(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (40, 20)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.2 0.2 0 0\n1 0.2 0.2 0.1 0\n")
    data = yolo_to_coco(tmp_path / "images", class_names=["p", "q"])
    assert [a["bbox"] for a in data["annotations"]] == [[10.0, 5.0, 20.0, 10.0]]
    assert data["info"]["dropped"] == {"degenerate_box": 2}


def test_keep_selects_classes_and_counts_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = voc_to_coco(_voc(tmp_path / "Ann"))
    sub = select_classes(data, ["WBC", "RBC"])
    assert [(c["id"], c["name"]) for c in sub["categories"]] == [(1, "WBC"), (2, "RBC")]
    assert [(a["id"], a["category_id"]) for a in sub["annotations"]] == [(1, 1), (2, 2)]
    assert sub["info"]["dropped"] == {"degenerate_box": 2}  # the Platelets point was dropped before
    only = select_classes(data, ["RBC"])
    assert [a["category_id"] for a in only["annotations"]] == [1]
    assert only["info"]["dropped"] == {"degenerate_box": 2, "other_class": 1}  # the WBC box
    assert len(only["images"]) == 1
    with pytest.raises(ConversionError, match=r"\['Neutrophil'\] are not classes"):
        select_classes(data, ["Neutrophil"])

    # the command line: convert a subset, then the dataset loads it as training would
    tool = load_tool("convert_dataset")
    Image.new("RGB", (40, 20)).save(tmp_path / "a.jpg")
    assert tool.main(["voc", "--ann-dir", str(tmp_path / "Ann"), "--keep", "RBC", "WBC",
                      "--out", str(tmp_path / "sub.json")]) == 0
    out = capsys.readouterr().out
    assert "2 annotations, 2 categories" in out and "2 degenerate_box" in out
    ds = CocoDetection(tmp_path, tmp_path / "sub.json")
    assert ds.num_classes == 2 and [c["name"] for c in ds.categories] == ["RBC", "WBC"]
    assert tool.main(["voc", "--ann-dir", str(tmp_path / "Ann"), "--keep", "WBC", "Neutrophil",
                      "--out", str(tmp_path / "bad.json")]) == 2
    assert "Neutrophil" in capsys.readouterr().err


def test_the_dataset_drops_point_boxes_of_a_coco_json(tmp_path: Path) -> None:
    Image.new("RGB", (40, 20)).save(tmp_path / "a.jpg")
    anns = [[10, 5, 20, 10], [20, 10, 0, 0], [3, 4, 6, 0]]  # a box, a point, a line
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 20}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for i, b in enumerate(anns)],
    }))
    ds = CocoDetection(tmp_path, tmp_path / "ann.json")
    assert ds.skipped["degenerate_box"] == 2
    _, target = ds[0]
    assert len(target["boxes"]) == 1  # only the box with an extent is a training target


def test_data_classes_keeps_the_named_categories_of_a_coco_json(coco128: Path) -> None:
    from gn_detect.data import build_dataset
    from gn_detect.data.build import split_categories
    from gn_detect.data.checks import DataError

    ann = coco128 / "annotations" / "instances_train2017.json"
    src = json.loads(ann.read_text())
    cfg = {"name": "coco", "root": str(coco128), "train": {"images": "train2017",
           "ann": "annotations/instances_train2017.json"}, "classes": ["dog", "person"]}
    full = build_dataset({k: v for k, v in cfg.items() if k != "classes"}, "train")
    ds = build_dataset(cfg, "train")
    ids = {c["name"]: c["id"] for c in src["categories"]}
    # reference: the json's own annotations of those two categories, crowd and all
    want = sum(1 for a in src["annotations"] if a["category_id"] in (ids["dog"], ids["person"]))
    assert sorted(ds.class_names) == ["dog", "person"] and ds.num_classes == 2
    assert len(ds.coco.getAnnIds()) <= want and ds.skipped["other_class"] == len(src["annotations"]) - want
    assert len(ds.coco.getAnnIds(catIds=[ids["dog"]])) == len(full.coco.getAnnIds(catIds=[ids["dog"]]))
    assert [c["name"] for c in split_categories(cfg, "train")] == sorted(["dog", "person"], key=lambda n: ids[n])
    with pytest.raises(DataError, match="unicorn"):
        build_dataset({**cfg, "classes": ["unicorn"]}, "train")


def test_a_misspelt_data_class_of_not_yet_generated_shapes_is_refused_at_start(tmp_path: Path) -> None:
    """data.classes against the categories a shapes dataset will have (data/synthetic.py:
    shapes_categories) before it is generated: one line per split, exit status 2, nothing made
    (it used to generate the data and fail the run, exit status 1)."""
    import subprocess

    from tests.engine._train_utils import child_env, train_cmd, tiny_overrides

    cmd = train_cmd([*tiny_overrides(tmp_path / "fresh"), "data.classes=[circle,sqare]", "hydra.run.dir=run"])
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=child_env(HYDRA_FULL_ERROR="0"), timeout=120,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gn-detect:")]
    assert proc.returncode == 2 and len(lines) == 2, proc.stdout[-3000:]
    assert all("data.classes names ['sqare'] are not categories" in ln and "'square'" in ln for ln in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, no generated data
