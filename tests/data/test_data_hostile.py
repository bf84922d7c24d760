"""Third round of hostile data (issue 20): duplicate annotation ids, bbox values that are not
numbers, tiny boxes, oversized images (decompression bombs) and images that become unreadable
after the checks -- each a counted skip or kept, never a crash and never a wrong number."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gn_detect import image_io
from gn_detect.data import CocoDetection, build_test_loader
from gn_detect.data.checks import SKIP_REASONS, AnnotationFileError, check_box
from gn_detect.data.transforms import DetectionTransform
from gn_detect.deploy.predict import list_images
from gn_detect.engine.evaluate import evaluate_model
from gn_detect.config.schema import EvalConfig
from omegaconf import OmegaConf

from .conftest import save_image

T = DetectionTransform(32, 10_000)


def bomb_png(path: Path, w: int = 30_000, h: int = 30_000) -> Path:
    """A valid PNG header declaring ``w`` x ``h`` pixels and almost no data: PIL's size guard
    must refuse it before decoding (a real 900-megapixel image would take gigabytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def _ap(gt: COCO, dets: list[dict[str, Any]]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_duplicate_annotation_ids_keep_every_box_and_ap_of_ground_truth_is_one(make_coco) -> None:
    """Before: pycocotools kept one object per id, so ground truth fed back as detections scored
    below 1 (another image's box stood in for the lost one). Now the repeats are renumbered."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2, 3)]
    boxes = {1: [[2, 2, 20, 20], [30, 10, 20, 30]], 2: [[5, 5, 30, 30]], 3: [[1, 1, 10, 12], [40, 20, 20, 20]]}
    anns, k = [], 0
    for img_id, bs in boxes.items():
        for b in bs:
            k += 1
            anns.append({"id": 1 + k % 3, "image_id": img_id, "category_id": 1, "bbox": b, "area": b[2] * b[3],
                         "iscrowd": 0})  # ids 2, 3, 1, 2, 3: two ids repeated twice
    d, f = make_coco(images, anns)
    ds = CocoDetection(d, f, transform=T)
    assert ds.skipped["duplicate_annotation_id"] == 2
    assert sum(len(ds.annotations(i)[0]) for i in range(len(ds))) == 5
    ids = [a["id"] for a in ds.coco.dataset["annotations"]]
    assert len(set(ids)) == 5 and len(ds.coco.anns) == 5
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0} for a in anns]
    assert _ap(ds.coco, dets) == pytest.approx(1.0)
    with contextlib.redirect_stdout(io.StringIO()):  # the file as pycocotools reads it: the bug this fixes
        raw = COCO(str(f))
    assert len(raw.anns) == 3 and _ap(raw, dets) < 1.0


def test_evaluation_of_ground_truth_with_duplicates_and_an_unreadable_image(make_coco, tmp_path: Path) -> None:
    """evaluate_model (what training and tools/evaluate.py run): a model answering each image with its
    ground truth scores AP 1.0 on a split with duplicate annotation ids, and an image that cannot be
    read at evaluation time is left out and counted, not replaced by its neighbour."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2, 3, 4)]
    anns = [{"id": 7, "image_id": i, "category_id": 1 + (i % 2) * 2, "bbox": [4 * i, 3, 20, 18], "area": 360,
             "iscrowd": 0} for i in (1, 2, 3, 4)]
    d, f = make_coco(images, anns)
    ds = CocoDetection(d, f, transform=T, verify_images=False)
    (d / "3.jpg").write_bytes((d / "3.jpg").read_bytes()[:100])  # breaks after the checks
    outputs = [{"boxes": ds[i][1]["boxes"], "scores": torch.ones(1), "labels": torch.from_numpy(ds.annotations(i)[1])}
               for i in range(len(ds))]

    class GroundTruthModel(torch.nn.Module):
        def forward(self, images: torch.Tensor, sizes: list) -> list[dict[str, torch.Tensor]]:
            return [outputs.pop(0) for _ in sizes]

    eval_cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), {"tune": "same", "backend": "pycocotools"})
    loader = build_test_loader(ds, 2, size_divisibility=128)
    metrics = evaluate_model(GroundTruthModel(), loader, ds, tmp_path / "eval", eval_cfg, device=torch.device("cpu"),
                             full_report=False)
    assert ds.skipped["duplicate_annotation_id"] == 3
    assert metrics["skipped_images"] == 1 and metrics["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("bbox, reason", [
    (["1", 2, 10, 10], "invalid_bbox_type"), ([1, 2, True, 10], "invalid_bbox_type"), ([1, None, 5, 5], "invalid_bbox_type"),
    ([1, 2, 1e-30, 10], "tiny_box"), ([1, 2, 10, 0.009], "tiny_box"), ([-5, 2, 5.005, 10], "tiny_box"),
    ([1, 2, float("nan"), 10], "degenerate_box"), ([1, 2, 0.02, 10], None),
])
def test_bbox_types_and_tiny_boxes(bbox: list[Any], reason: str | None) -> None:
    assert check_box(bbox, 64, 48)[0] == reason
    assert reason is None or reason in SKIP_REASONS


def test_ids_beyond_int64_are_no_ids(make_coco) -> None:
    """Ids are int64 downstream (NumPy, pycocotools): a json id of 2**70 once passed every check
    and crashed the evaluation after training. Such an image is dropped, such an annotation id
    renumbered, a box value of 10**400 skipped, and such a category id refuses the file."""
    images = [{"id": 1, "file_name": "1.jpg", "width": 40, "height": 32},
              {"id": 2**70, "file_name": "2.jpg", "width": 40, "height": 32, "write": False}]
    anns = [{"id": 2**80, "image_id": 1, "category_id": 1, "bbox": [3, 3, 9, 9]},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [3, 3, 10**400, 9]},
            {"id": 6, "image_id": 2**70, "category_id": 1, "bbox": [3, 3, 9, 9]}]
    d, f = make_coco(images, anns)
    ds = CocoDetection(d, f, transform=T)
    assert len(ds) == 1 and ds.skipped["invalid_image_entry"] == 1 and ds.skipped["degenerate_box"] == 1
    assert [a["id"] for a in ds.coco.dataset["annotations"]] == [7]  # renumbered past the largest valid id
    d, f = make_coco(images[:1], anns[:1], categories=[{"id": -2**63 - 1, "name": "a"}])
    with pytest.raises(AnnotationFileError, match="without an int 'id' \\(64-bit\\).*Fix: give each category"):
        CocoDetection(d, f, transform=T)


def test_dataset_counts_bbox_type_and_tiny_box(make_coco) -> None:
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": ["3", "3", "9", "9"]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [3, 3, 1e-30, 9]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [3, 3, 9, 9]}]
    d, f = make_coco([{"id": 1, "file_name": "1.jpg", "width": 40, "height": 32}], anns)
    ds = CocoDetection(d, f, transform=T)
    assert ds.skipped["invalid_bbox_type"] == 1 and ds.skipped["tiny_box"] == 1
    np.testing.assert_allclose(ds.annotations(0)[0], [[3, 3, 12, 12]])


def test_oversized_image_is_a_counted_skip_everywhere(make_coco, tmp_path: Path) -> None:
    """A decompression bomb: refused from its header by the one image helper, counted by the dataset
    checks (verify_images on or off: the header is read either way at evaluation), skipped by predict."""
    images = [{"id": 1, "file_name": "1.jpg", "width": 40, "height": 32},
              {"id": 2, "file_name": "big.png", "width": 30_000, "height": 30_000, "write": False}]
    anns = [{"id": k, "image_id": k, "category_id": 1, "bbox": [2, 2, 9, 9]} for k in (1, 2)]
    d, f = make_coco(images, anns)
    bomb_png(d / "big.png")
    with pytest.raises(image_io.ImageTooLarge, match="big.png"):
        image_io.read_rgb(d / "big.png")
    ds = CocoDetection(d, f, transform=T)
    assert ds.skipped["image_too_large"] == 1 and ds.image_ids == [1]
    lazy = CocoDetection(d, f, transform=T, verify_images=False)
    assert lazy.image_ids == [1, 2] and lazy[1][1]["skipped"] == "image_too_large"
    found, skipped = list_images(d)
    assert [p.name for p, _, _ in found] == ["1.jpg"]
    assert [(s["file"], s["reason"]) for s in skipped] == [("big.png", "image_too_large")]


def test_predict_lists_subfolders(tmp_path: Path) -> None:
    save_image(tmp_path / "in" / "a.jpg", 20, 10)
    save_image(tmp_path / "in" / "sub" / "deeper" / "b.png", 12, 30)
    found, skipped = list_images(tmp_path / "in")
    assert [(p.relative_to(tmp_path / "in").as_posix(), w, h) for p, w, h in found] == [
        ("a.jpg", 20, 10), ("sub/deeper/b.png", 12, 30)] and not skipped


def test_voc_and_yolo_drops_are_counted_and_never_null(tmp_path: Path) -> None:
    from gn_detect.data.convert_dataset import voc_to_coco, yolo_to_coco

    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><filename>a.jpg</filename><size><width>40</width><height>32</height></size>"
                   + "".join(f"<object><name>cat</name><bndbox><xmin>{a}</xmin><ymin>1</ymin><xmax>{b}</xmax>"
                             "<ymax>9</ymax></bndbox></object>" for a, b in (("nan", 9), ("1", "inf"), (9, 3),
                                                                            (1, 9), (30, 60)))
                   + "</annotation>")
    voc = voc_to_coco([xml])
    assert [a["bbox"] for a in voc["annotations"]] == [[0.0, 0.0, 9.0, 9.0], [29.0, 0.0, 11.0, 9.0]]
    assert voc["info"]["dropped"] == {"clipped_box": 1, "degenerate_box": 3}
    (tmp_path / "images").mkdir()
    save_image(tmp_path / "images" / "a.png", 40, 20)
    bomb_png(tmp_path / "images" / "b.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n0 1.5 1.5 0.2 0.2\n0 0.9 0.5 0.4 0.4\n0 0.5 0.5 inf 0.1\n")
    yolo = yolo_to_coco(tmp_path / "images", tmp_path / "labels", class_names=["cat"])
    assert [im["file_name"] for im in yolo["images"]] == ["a.png"]
    assert [a["bbox"] for a in yolo["annotations"]] == [pytest.approx([10, 5, 20, 10]), pytest.approx([28, 6, 12, 8])]
    assert yolo["info"]["dropped"] == {"clipped_box": 1, "degenerate_box": 1, "image_too_large": 1, "outside_box": 1}
    assert "null" not in json.dumps(yolo, allow_nan=True) and "NaN" not in json.dumps(voc, allow_nan=True)


def test_docs_list_every_skip_reason() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    assert [r for r in SKIP_REASONS if f"`{r}`" not in text] == []


class _FailingSet(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Any:
        from gn_detect.data.checks import DataError

        raise DataError("coco_train: 9 images in a row failed to load, last: x. Set data.verify_images=true")


def test_an_error_raised_in_a_loader_worker_is_one_line() -> None:
    """A DataLoader worker's error reaches the main process with the worker's traceback inside its
    message; the command's line and status.json carry the worker's own message only."""
    from gn_detect.config import error_text, one_line

    loader = torch.utils.data.DataLoader(_FailingSet(), num_workers=1)
    with pytest.raises(ValueError) as e:
        next(iter(loader))
    assert "Original Traceback" in str(e.value)  # what torch re-raises
    want = "coco_train: 9 images in a row failed to load, last: x. Set data.verify_images=true"
    assert one_line(e.value) == error_text(e.value) == want
    assert error_text(ValueError("plain\nmessage")) == "plain\nmessage"


def test_deeply_nested_json_is_one_named_line(tmp_path: Path) -> None:
    """json.loads raises RecursionError on a file nested 100,000 deep: it was reported as a
    'config error: maximum recursion depth exceeded' without the file's name."""
    from gn_detect.data.checks import load_coco_json

    f = tmp_path / "deep.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AnnotationFileError, match=f"{f}: JSON nested too deeply"):
        load_coco_json(f)


def test_ids_at_int64s_end_and_unusable_areas_build_and_evaluate(tmp_path: Path) -> None:
    """Review of the COCO-scale work: an annotation id of 2**63-1 beside one without an id (its new
    id stays inside int64, below the smallest), and areas that are NaN or an integer beyond float's
    range (recomputed from the box, as a missing area is)."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "img" / "1.png")
    anns = [{"id": 2**63 - 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 10**400, "iscrowd": 0},
            {"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 5], "area": float("nan"), "iscrowd": 0}]
    (tmp_path / "a.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "1.png", "width": 40, "height": 32}],
                                                 "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    ds = CocoDetection(tmp_path / "img", tmp_path / "a.json", verify_images=False)
    got = [(a["id"], a["area"]) for a in ds.coco.dataset["annotations"]]
    assert got == [(2**63 - 1, 100.0), (2**63 - 3, 50.0)]
    assert len(set(ds.coco.anns)) == 2
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in ds.coco.dataset["annotations"]]
    assert _ap(ds.coco, dets) == pytest.approx(1.0)  # the ground truth as detections: COCOeval reads these ids
