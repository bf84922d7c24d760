"""VOC / YOLO -> COCO converters: round trips and pycocotools compatibility."""

from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO

from gn_detect.data import CocoDetection, voc_to_coco, write_coco, yolo_to_coco
from gn_detect.data.convert_dataset import ConversionError
from gn_detect.data.synthetic import SHAPES_LAYOUT


# ---------------------------------------------------------------- test helpers: COCO -> VOC / YOLO


def coco_to_voc(data: dict[str, Any], out_dir: Path, difficult_ids: set[int] = frozenset()) -> list[str]:
    """Write one VOC xml per image (1-based inclusive integer boxes); returns class names by id."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {c["id"]: c["name"] for c in data["categories"]}
    for im in data["images"]:
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = im["file_name"]
        size = ET.SubElement(root, "size")
        for k, v in (("width", im["width"]), ("height", im["height"]), ("depth", 3)):
            ET.SubElement(size, k).text = str(v)
        for a in data["annotations"]:
            if a["image_id"] != im["id"]:
                continue
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[a["category_id"]]
            ET.SubElement(obj, "difficult").text = "1" if a["id"] in difficult_ids else "0"
            x, y, w, h = a["bbox"]
            bb = ET.SubElement(obj, "bndbox")
            for k, v in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
                ET.SubElement(bb, k).text = str(int(v))
        ET.ElementTree(root).write(out_dir / (Path(im["file_name"]).stem + ".xml"))
    return [names[k] for k in sorted(names)]


def coco_to_yolo(data: dict[str, Any], out_dir: Path) -> list[str]:
    """Write YOLO txt labels (class index = position in sorted category ids)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cats = sorted(c["id"] for c in data["categories"])
    index = {c: i for i, c in enumerate(cats)}
    for im in data["images"]:
        W, H = im["width"], im["height"]
        lines = []
        for a in data["annotations"]:
            if a["image_id"] == im["id"]:
                x, y, w, h = a["bbox"]
                lines.append(f"{index[a['category_id']]} {(x + w / 2) / W:.10f} {(y + h / 2) / H:.10f} "
                             f"{w / W:.10f} {h / H:.10f}")
        if lines:
            (out_dir / (Path(im["file_name"]).stem + ".txt")).write_text("\n".join(lines) + "\n")
    names = {c["id"]: c["name"] for c in data["categories"]}
    return [names[c] for c in cats]


def load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def boxes_by_file(data: dict[str, Any]) -> dict[str, list[tuple[str, list[float]]]]:
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    out: dict[str, list] = {f: [] for f in files.values()}
    for a in data["annotations"]:
        out[files[a["image_id"]]].append((names[a["category_id"]], [float(v) for v in a["bbox"]]))
    return out


# ---------------------------------------------------------------- tests


def test_voc_round_trip_exact(shapes_root: Path, tmp_path: Path) -> None:
    src = json.loads((shapes_root / SHAPES_LAYOUT["train"]["ann"]).read_text())  # integer boxes
    names = coco_to_voc(src, tmp_path / "Annotations")
    data = voc_to_coco(tmp_path / "Annotations", class_names=names)
    assert boxes_by_file(data) == boxes_by_file(src)  # exact
    out = write_coco(data, tmp_path / "voc.json")
    coco = load_coco(out)
    assert len(coco.getAnnIds()) == len(src["annotations"])
    ds = CocoDetection(shapes_root / "train", out)
    assert len(ds) == len(src["images"]) and sum(ds.skipped.values()) == 0


def test_voc_difficult_policies(shapes_root: Path, tmp_path: Path) -> None:
    src = json.loads((shapes_root / SHAPES_LAYOUT["val"]["ann"]).read_text())
    hard = {src["annotations"][0]["id"]}
    coco_to_voc(src, tmp_path / "Annotations", difficult_ids=hard)
    keep = voc_to_coco(tmp_path / "Annotations")
    crowd = voc_to_coco(tmp_path / "Annotations", difficult="crowd")
    skip = voc_to_coco(tmp_path / "Annotations", difficult="skip")
    n = len(src["annotations"])
    assert len(keep["annotations"]) == len(crowd["annotations"]) == n and len(skip["annotations"]) == n - 1
    assert sum(a.get("difficult", 0) for a in keep["annotations"]) == 1
    assert sum(a["iscrowd"] for a in keep["annotations"]) == 0
    assert sum(a["iscrowd"] for a in crowd["annotations"]) == 1
    # default class order: sorted names
    assert [c["name"] for c in keep["categories"]] == sorted(c["name"] for c in keep["categories"])


def test_voc_errors(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text("<annotation><filename>a.jpg</filename>")
    with pytest.raises(ConversionError, match="a.xml"):
        voc_to_coco(tmp_path / "a.xml")
    (tmp_path / "a.xml").write_text("<annotation><filename>a.jpg</filename><object><name>x</name>"
                                    "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>4</ymax></bndbox>"
                                    "</object></annotation>")
    with pytest.raises(ConversionError, match="size"):
        voc_to_coco(tmp_path / "a.xml")
    text = (tmp_path / "a.xml").read_text()
    (tmp_path / "a.xml").write_text(text.replace("<object>", "<size><width>9</width><height>9</height></size><object>"))
    with pytest.raises(ConversionError, match="not in class_names"):
        voc_to_coco(tmp_path / "a.xml", class_names=["y"])
    assert voc_to_coco(tmp_path / "a.xml")["annotations"][0]["bbox"] == [0.0, 0.0, 3.0, 4.0]


def test_yolo_round_trip(coco128: Path, tmp_path: Path) -> None:
    src = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    src["annotations"] = [a for a in src["annotations"] if not a["iscrowd"]]  # YOLO has no crowd
    names = coco_to_yolo(src, tmp_path / "labels")
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    data = yolo_to_coco(coco128 / "train2017", tmp_path / "labels", class_names=tmp_path / "classes.txt")
    got, want = boxes_by_file(data), boxes_by_file(src)
    assert got.keys() == want.keys()
    for f in want:
        assert [n for n, _ in got[f]] == [n for n, _ in want[f]]
        if want[f]:
            g, w = np.array([b for _, b in got[f]]), np.array([b for _, b in want[f]])
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * 640)
    out = write_coco(data, tmp_path / "yolo.json")
    assert len(load_coco(out).getAnnIds()) == len(src["annotations"])
    assert sum(1 for v in got.values() if not v) == 2  # images without label files are kept


def test_yolo_segments_and_errors(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (100, 50)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.1 0.2 0.5 0.2 0.3 0.8\n\n")
    data = yolo_to_coco(tmp_path / "images", class_names=["p", "q"])  # labels/ found from images/
    assert data["annotations"][0]["bbox"] == pytest.approx([10, 10, 40, 30])
    assert data["annotations"][0]["category_id"] == 2
    (tmp_path / "labels" / "a.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ConversionError, match=r"a.txt:1: class 2"):
        yolo_to_coco(tmp_path / "images", class_names=["p", "q"])
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(ConversionError, match="fields"):
        yolo_to_coco(tmp_path / "images", class_names=["p", "q"])
    with pytest.raises(ConversionError, match="label folder not found"):
        yolo_to_coco(tmp_path / "images", tmp_path / "nope", class_names=["p", "q"])
