"""Every bad-input case: a clear error at load time, or a counted skip (never a mid-epoch crash)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from gn_detect.data import AnnotationFileError, CocoDetection, EmptyDatasetError, write_skip_summary
from gn_detect import image_io
from gn_detect.data import checks
from gn_detect.data.checks import SKIP_REASONS, check_box, file_name_problem
from gn_detect.data.transforms import DetectionTransform

from .conftest import save_image

# small test-time transform: keeps images at their size (short side 32 -> images below are 32+)
T = DetectionTransform(32, 10_000)


def ann(i: int, image_id: int, bbox: Any, cat: int = 1, crowd: int = 0) -> dict[str, Any]:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": 1.0, "iscrowd": crowd}


def img(i: int, w: int = 40, h: int = 32, **kw: Any) -> dict[str, Any]:
    return {"id": i, "file_name": f"{i}.{kw.pop('ext', 'jpg')}", "width": w, "height": h, **kw}


def load(image_dir: Path, ann_file: Path, **kw: Any) -> CocoDetection:
    return CocoDetection(image_dir, ann_file, transform=kw.pop("transform", T), **kw)


def test_malformed_json_names_file_position_and_fix(tmp_path: Path) -> None:
    f = tmp_path / "broken.json"
    f.write_text('{"images": [{"id": 1,}], "categories": []}')
    with pytest.raises(AnnotationFileError) as e:
        load(tmp_path, f)
    msg = str(e.value)
    assert str(f) in msg and "line 1 column" in msg and "Fix" in msg


def test_truncated_json(tmp_path: Path) -> None:
    f = tmp_path / "trunc.json"
    f.write_text('{"images": [], "annotations": [')
    with pytest.raises(AnnotationFileError, match="not valid JSON"):
        load(tmp_path, f)


def test_missing_json_and_not_coco(tmp_path: Path) -> None:
    with pytest.raises(AnnotationFileError, match="not found"):
        load(tmp_path, tmp_path / "nope.json")
    f = tmp_path / "list.json"
    f.write_text("[1, 2]")
    with pytest.raises(AnnotationFileError, match="top level"):
        load(tmp_path, f)
    f.write_text('{"annotations": []}')
    with pytest.raises(AnnotationFileError, match="not a COCO instances file"):
        load(tmp_path, f)
    f.write_text('{"images": [], "annotations": [], "categories": []}')
    with pytest.raises(AnnotationFileError, match="'categories' is empty"):
        load(tmp_path, f)


def test_missing_image_skipped(make_coco) -> None:
    d, f = make_coco([img(1), img(2, write=False)], [ann(1, 1, [1, 1, 5, 5]), ann(2, 2, [1, 1, 5, 5])])
    ds = load(d, f)
    assert ds.image_ids == [1] and ds.skipped["missing_image"] == 1
    assert 2 not in ds.coco.imgs and all(a["image_id"] == 1 for a in ds.coco.dataset["annotations"])


def test_all_images_missing_is_clear_error(make_coco) -> None:
    d, f = make_coco([img(1, write=False), img(2, write=False)], [])
    with pytest.raises(EmptyDatasetError, match="'images' folder"):
        load(d, f)


def test_unreadable_and_truncated_images_skipped(make_coco) -> None:
    d, f = make_coco([img(1), img(2), img(3), img(4, ext="png", format="PNG")],
                     [ann(k, k, [1, 1, 5, 5]) for k in (1, 2, 3, 4)])
    raw = (d / "2.jpg").read_bytes()
    (d / "2.jpg").write_bytes(raw[: len(raw) // 2])  # truncated JPEG
    (d / "3.jpg").write_text("this is not an image")
    raw = (d / "4.png").read_bytes()
    (d / "4.png").write_bytes(raw[: len(raw) // 2])  # truncated PNG
    ds = load(d, f)
    assert ds.image_ids == [1]
    assert ds.skipped["unreadable_image"] == 3
    ds[0]  # the survivor loads


def test_runtime_fallback_without_verification(make_coco, caplog: pytest.LogCaptureFixture) -> None:
    d, f = make_coco([img(1), img(2)], [ann(1, 1, [1, 1, 5, 5]), ann(2, 2, [2, 2, 5, 5])])
    raw = (d / "1.jpg").read_bytes()
    (d / "1.jpg").write_bytes(raw[: len(raw) // 2])
    ds = load(d, f, verify_images=False)
    assert len(ds) == 2  # not caught at load time when verification is off ...
    with caplog.at_level(logging.WARNING):
        _, target = ds[0, 7]  # ... but a bad image never crashes a training epoch: the next one is used
    assert target["image_id"] == 2 and "cannot read" in caplog.text
    _, target = ds[0]  # evaluation order: the image is marked (inference leaves it out), never replaced
    assert target["image_id"] == 1 and target["skipped"] == "unreadable_image"


@pytest.mark.parametrize("mode,fmt,ext", [("L", "JPEG", "jpg"), ("CMYK", "JPEG", "jpg"), ("RGBA", "PNG", "png"),
                                          ("P", "PNG", "png"), ("LA", "PNG", "png"), ("I;16", "PNG", "png"),
                                          ("RGB", "PNG", "png")])
def test_image_modes_converted_to_rgb(make_coco, mode: str, fmt: str, ext: str) -> None:
    d, f = make_coco([img(1, ext=ext, mode=mode, format=fmt)], [ann(1, 1, [1, 1, 5, 5])])
    ds = load(d, f)
    image, target = ds[0]
    assert image.shape == (3, 32, 40) and image.dtype == torch.uint8  # 0-255 RGB: the model normalizes
    assert target["size"] == (32, 40)
    assert ds.skipped["converted_mode"] == (0 if mode == "RGB" else 1)


def test_size_mismatch_skipped(make_coco) -> None:
    d, f = make_coco([img(1), img(2)], [ann(1, 1, [1, 1, 5, 5]), ann(2, 2, [1, 1, 5, 5])])
    data = json.loads(f.read_text())
    data["images"][1]["width"] = 41
    f.write_text(json.dumps(data))
    ds = load(d, f)
    assert ds.image_ids == [1] and ds.skipped["size_mismatch"] == 1


def test_missing_image_size_filled_from_file(make_coco) -> None:
    d, f = make_coco([img(1)], [ann(1, 1, [1, 1, 5, 5])])
    data = json.loads(f.read_text())
    del data["images"][0]["width"], data["images"][0]["height"]
    f.write_text(json.dumps(data))
    ds = load(d, f)
    assert ds.image_info(0)["width"] == 40 and ds.aspect_ratios[0] == pytest.approx(40 / 32)


def test_bad_boxes(make_coco) -> None:
    anns = [
        ann(1, 1, [2, 3, 10, 8]),  # fine
        ann(2, 1, [5, 5, 0, 4]),  # zero width
        ann(3, 1, [5, 5, 4, -2]),  # negative height
        ann(4, 1, [5, 5, 4]),  # not 4 numbers
        ann(5, 1, [5, float("nan"), 4, 4]),  # not finite (json NaN)
        ann(6, 1, [-4, 20, 10, 20]),  # partly outside: clipped to [0, 20, 6, 32]
        ann(7, 1, [50, 5, 10, 10]),  # fully outside (image is 40 wide)
        ann(8, 1, [1, 1, 5, 5], cat=99),  # unknown category
        ann(9, 77, [1, 1, 5, 5]),  # unknown image
        ann(10, 1, [0, 0, 40, 32], crowd=1),  # crowd
        ann(11, 1, [1, 2, 3, 4], cat=3),
    ]
    d, f = make_coco([img(1)], anns)
    ds = load(d, f)
    s = ds.skipped
    assert (s["degenerate_box"], s["clipped_box"], s["outside_box"]) == (4, 1, 1)
    assert (s["unknown_category"], s["unknown_image"], s["crowd"]) == (1, 1, 1)
    _, t = ds[0]
    torch.testing.assert_close(t["boxes"], torch.tensor([[2.0, 3, 12, 11], [0, 20, 6, 32], [1, 2, 4, 6]]))
    assert t["labels"].tolist() == [0, 0, 1] and t["labels"].dtype == torch.int64
    # crowd kept for evaluation (COCOeval ignores it), clipped box stored clipped
    eval_anns = {a["id"]: a for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[1]))}
    assert sorted(eval_anns) == [1, 6, 10, 11] and eval_anns[10]["iscrowd"] == 1
    assert eval_anns[6]["bbox"] == [0.0, 20.0, 6.0, 12.0] and eval_anns[6]["area"] == 72.0


def test_check_box_edges() -> None:
    assert check_box([0, 0, 40, 32], 40, 32) == (None, [0, 0, 40, 32])
    assert check_box([0, 0, 40.5, 32], 40, 32)[0] == "clipped_box"
    assert check_box([40, 0, 1, 1], 40, 32)[0] == "outside_box"
    assert check_box("xx", 40, 32)[0] == "degenerate_box"


def test_empty_images_and_filter_empty(make_coco) -> None:
    d, f = make_coco([img(1), img(2), img(3)],
                     [ann(1, 1, [1, 1, 5, 5]), ann(2, 3, [0, 0, 40, 32], crowd=1)])
    ds = load(d, f)
    assert len(ds) == 3 and ds.skipped["empty_image"] == 2  # no annotation / crowd only
    _, t = ds[1]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    ds = load(d, f, filter_empty=True)
    assert ds.image_ids == [1] and ds.skipped["filtered_empty"] == 2
    d2, f2 = make_coco([img(1), img(2)], [])
    with pytest.raises(EmptyDatasetError, match="filter_empty"):
        load(d2, f2, filter_empty=True)


def test_no_images_is_clear_error(make_coco) -> None:
    d, f = make_coco([], [])
    with pytest.raises(EmptyDatasetError, match="no images left"):
        load(d, f)


def test_invalid_image_entries(make_coco) -> None:
    d, f = make_coco([img(1), img(2)], [ann(1, 1, [1, 1, 5, 5])])
    data = json.loads(f.read_text())
    data["images"] += [{"file_name": "x.jpg"}, {"id": 9, "file_name": ""}, {"id": 10, "file_name": 3}, "junk"]
    f.write_text(json.dumps(data))
    ds = load(d, f)
    assert ds.image_ids == [1, 2] and ds.skipped["invalid_image_entry"] == 4


def test_duplicate_image_ids_drop_every_entry_and_its_boxes(make_coco, tmp_path: Path) -> None:
    """Issue 10 A. Before: the second entry of id 1 was dropped but its boxes were attached to
    the first entry's image (wrong ground truth in training and in .coco, no error)."""
    d, f = make_coco([img(1), img(2), img(3, w=48)],
                     [ann(1, 1, [1, 1, 5, 5]), ann(2, 1, [20, 10, 8, 8]), ann(3, 2, [1, 1, 5, 5]),
                      ann(4, 3, [30, 2, 9, 9])])
    data = json.loads(f.read_text())
    data["images"][2]["id"] = 1  # 3.jpg claims id 1 too: annotations 1, 2 and 4 could belong to either image
    data["annotations"][3]["image_id"] = 1
    f.write_text(json.dumps(data))
    ds = load(d, f)
    assert ds.image_ids == [2] and ds.skipped["duplicate_image_id"] == 2
    assert ds.skipped["invalid_image_entry"] == 0 and ds.skipped["unknown_image"] == 0
    # the evaluation ground truth holds neither entry nor any of their boxes
    assert sorted(ds.coco.imgs) == [2] and [a["id"] for a in ds.coco.dataset["annotations"]] == [3]
    summary = json.loads(json.dumps(write_skip_summary(ds, tmp_path / "data_skipped.json")))
    assert summary == json.loads((tmp_path / "data_skipped.json").read_text())
    assert summary["counts"]["duplicate_image_id"] == 2
    assert summary["examples"]["duplicate_image_id"] == [{"id": 1, "file_name": "1.jpg"}, {"id": 1, "file_name": "3.jpg"}]


def test_only_duplicate_ids_is_one_line_error(make_coco) -> None:
    d, f = make_coco([img(1), img(2)], [ann(1, 1, [1, 1, 5, 5])])
    data = json.loads(f.read_text())
    data["images"][1]["id"] = 1
    f.write_text(json.dumps(data))
    with pytest.raises(EmptyDatasetError) as e:
        load(d, f)
    msg = str(e.value)
    assert "\n" not in msg and "2 duplicate_image_id" in msg and "Fix: give every image entry its own 'id'" in msg


@pytest.mark.parametrize("name,problem", [
    ("a.jpg", None), ("sub/a.jpg", None), ("sub/../a.jpg", None), ("./a.jpg", None), ("..a.jpg", None),
    ("../a.jpg", "outside_image_dir"), ("../../etc/passwd", "outside_image_dir"),
    ("sub/../../a.jpg", "outside_image_dir"), ("/etc/passwd", "outside_image_dir"), ("..", "outside_image_dir"),
    ("", "invalid_image_entry"), (".", "invalid_image_entry"), ("a\x00.jpg", "invalid_image_entry"),
])  # fmt: skip
def test_file_name_problem(name: str, problem: str | None) -> None:
    assert file_name_problem(name) == problem


def test_file_names_leaving_the_image_folder_are_never_opened(make_coco, tmp_path: Path, monkeypatch) -> None:
    """Issue 10 B. Before: '../x.jpg' and absolute file names were opened and trained on."""
    d, f = make_coco([img(1), img(5)], [ann(k, k, [1, 1, 5, 5]) for k in (1, 2, 3, 4, 5, 6)])
    outside = save_image(tmp_path / "outside" / "secret.jpg", 40, 32)  # a valid image, but not the dataset's
    (d / "sub").mkdir()
    (d / "link.jpg").symlink_to(outside)  # a symlink inside the folder is the user's choice: followed
    data = json.loads(f.read_text())
    data["images"][1]["file_name"] = "sub/../5.jpg"  # stays inside: fine
    data["images"] += [img(2, file_name="../outside/secret.jpg"), img(3, file_name=str(outside)),
                       img(4, file_name="sub/../../outside/secret.jpg"), img(6, file_name="link.jpg")]
    f.write_text(json.dumps(data))
    opened: list[str] = []
    real_open = image_io.Image.open
    monkeypatch.setattr(image_io.Image, "open", lambda fp, *a, **k: opened.append(str(getattr(fp, "name", fp))) or real_open(fp, *a, **k))
    ds = load(d, f)
    assert ds.image_ids == [1, 5, 6] and ds.skipped["outside_image_dir"] == 3
    assert [e["file_name"] for e in ds.skip_log.examples["outside_image_dir"]] == [
        "../outside/secret.jpg", str(outside), "sub/../../outside/secret.jpg"]
    assert opened and all(os.path.normpath(p).startswith(f"{d}{os.sep}") for p in opened)
    assert sorted(ds.coco.imgs) == [1, 5, 6] and {a["image_id"] for a in ds.coco.dataset["annotations"]} == {1, 5, 6}
    assert ds.skipped["unknown_image"] == 0  # annotations of a refused image go with it


def test_only_escaping_file_names_is_one_line_error(make_coco) -> None:
    d, f = make_coco([img(1, write=False), img(2, write=False)], [])
    data = json.loads(f.read_text())
    data["images"][0]["file_name"] = "../../etc/passwd"
    data["images"][1]["file_name"] = "/etc/passwd"
    f.write_text(json.dumps(data))
    with pytest.raises(EmptyDatasetError) as e:
        load(d, f, verify_images=False)
    msg = str(e.value)
    assert "\n" not in msg and "2 outside_image_dir" in msg and "relative to the images folder" in msg


def test_write_skip_summary(make_coco, tmp_path: Path) -> None:
    d, f = make_coco([img(1), img(2, write=False)], [ann(1, 1, [5, 5, 0, 3]), ann(2, 1, [1, 1, 3, 3])])
    ds = load(d, f)
    out = write_skip_summary(ds, tmp_path / "run" / "data_skipped.json")
    on_disk = json.loads((tmp_path / "run" / "data_skipped.json").read_text())
    assert on_disk == json.loads(json.dumps(out))
    assert set(on_disk["counts"]) == set(SKIP_REASONS)
    assert on_disk["counts"]["missing_image"] == 1 and on_disk["counts"]["degenerate_box"] == 1
    assert on_disk["examples"]["missing_image"] == ["2.jpg"] and on_disk["num_images"] == 1
