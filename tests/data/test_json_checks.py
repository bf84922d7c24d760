"""The json checks' records (gn_detect/data/json_checks.py): a dataset built from a record equals
one checked afresh, on hostile data too; a changed file, selection or unreadable record is checked
again; records are data only, pruned, and the file is hashed once per process."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gn_detect import io as gio
from gn_detect.data import CocoDetection, checks
from gn_detect.data import json_checks
from gn_detect.data.checks import AnnotationFileError, DataError
from gn_detect.data.json_checks import read_json_checks
from gn_detect.data.transforms import DetectionTransform

from .conftest import no_cache

T = DetectionTransform(32, 10_000)


@pytest.fixture
def records() -> Path:
    """Where the json check records go: this test's own cache folder (conftest.py: _own_cache)."""
    return checks.cache_dir() / "checked"


def hostile(make_coco, missing: bool = False) -> tuple[Path, Path]:
    """A json with a case of nearly every skip reason, ids at int64's end, areas of every kind;
    ``missing``: one image file missing too."""
    images = [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48},
              {"id": 2, "file_name": "2.jpg", "width": 40, "height": 40},
              {"id": 3, "file_name": "3.jpg", "width": 32, "height": 32, "write": not missing},
              {"id": 4, "file_name": "4.jpg", "width": 30, "height": 20, "mode": "L"}]
    anns: list[Any] = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [5.5, 2.25, 70, 10], "area": 12.5, "iscrowd": 0},
        {"image_id": 1, "category_id": 1, "bbox": [2, 2, 3, 3], "area": float("nan"), "iscrowd": 1},
        {"id": 2**63 - 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 39, 39], "area": 10**400, "iscrowd": False},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": ["1", 1, 2, 2], "iscrowd": 0},
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0.001, 5], "iscrowd": 0},
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [50, 50, 5, 5], "iscrowd": 0},
        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, 1, -2, 5], "iscrowd": 0},
        {"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": "0"},
        {"id": 10, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 11, "image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 12, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 13, "image_id": 4, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        "not an annotation",
    ]
    image_dir, ann = make_coco(images, anns)
    data = json.loads(ann.read_text())
    data["images"] += [{"id": 2, "file_name": "2b.jpg", "width": 40, "height": 40},  # id 2 twice: both dropped
                       {"id": 20, "file_name": "../outside.jpg", "width": 4, "height": 4},
                       {"id": "x", "file_name": "x.jpg"}, {"id": 21, "file_name": "1.jpg", "width": 64, "height": 48}]
    data["info"] = {"description": "hostile", "year": 2026, "ratio": float("inf")}
    ann.write_text(json.dumps(data))
    return image_dir, ann


def _as_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def same_dataset(a: CocoDetection, b: CocoDetection) -> None:
    assert a.skipped == b.skipped and _as_text(a.skip_log.examples) == _as_text(b.skip_log.examples)
    assert len(a) == len(b) and a.categories == b.categories and a.image_ids == b.image_ids
    for i in range(len(a)):
        assert _as_text(a.image_info(i)) == _as_text(b.image_info(i))
        for x, y in zip(a.annotations(i), b.annotations(i)):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
    assert _as_text(a.coco.dataset) == _as_text(b.coco.dataset)


@pytest.mark.parametrize("classes, missing", [(None, False), (["b"], False), (None, True)])
def test_a_record_gives_the_dataset_a_fresh_check_gives(classes, missing: bool, make_coco, records: Path,
                                                        parses: list[int], tmp_path: Path, monkeypatch) -> None:
    """``missing``: the images kept differ from those the json lists, so a build from the record
    reads the annotations again (and checks them over the images kept)."""
    image_dir, ann = hostile(make_coco, missing)
    first = CocoDetection(image_dir, ann, transform=T, classes=classes, verify_images=True)  # checked, recorded
    assert len(parses) == 1 and len(list(records.glob("*.npz"))) == 1
    again = CocoDetection(image_dir, ann, transform=T, classes=classes, verify_images=True)  # from the record
    assert len(parses) == (2 if missing else 1)
    no_cache(tmp_path, monkeypatch)  # no record can be read or made
    fresh = CocoDetection(image_dir, ann, transform=T, classes=classes, verify_images=True)
    assert len(parses) == (3 if missing else 2)
    for ds in (first, again):
        same_dataset(ds, fresh)
    assert fresh.skipped["duplicate_image_id"] == 2 and fresh.skipped["missing_image"] == missing
    assert fresh.skipped["converted_mode"] == 1 and (fresh.skipped["other_class"] > 0) == (classes is not None)
    if classes is None:  # the broken annotations are of category 1 (left out by ["b"])
        assert fresh.skipped["invalid_iscrowd"] == fresh.skipped["invalid_bbox_type"] == 1
        assert fresh.skipped["tiny_box"] == fresh.skipped["outside_box"] == fresh.skipped["crowd"] == 1


def test_a_changed_file_or_selection_is_checked_again(make_coco, records: Path, parses: list[int]) -> None:
    image_dir, ann = hostile(make_coco)
    CocoDetection(image_dir, ann, transform=T, verify_images=False)
    CocoDetection(image_dir, ann, transform=T, verify_images=False)
    assert len(parses) == 1
    st = ann.stat()
    text = ann.read_text()
    ann.write_text(text.replace('"bbox": [1, 1, 10, 10]', '"bbox": [1, 1, 10, 12]'))  # same size, same mtime
    os.utime(ann, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ann.stat().st_size == st.st_size
    ds = CocoDetection(image_dir, ann, transform=T, verify_images=False)
    assert len(parses) == 2 and ds.annotations(0)[0].tolist()[0] == [1, 1, 11, 13]
    CocoDetection(image_dir, ann, transform=T, verify_images=False, classes=["a"])
    assert len(parses) == 3 and len(list(records.glob("*.npz"))) == 3


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled", "unequal", "foreign_reason"])
def test_an_unreadable_record_is_checked_again(damage: str, make_coco, records: Path, parses: list[int],
                                               caplog) -> None:
    image_dir, ann = hostile(make_coco)
    reference = CocoDetection(image_dir, ann, transform=T)
    (record,) = records.glob("*.npz")
    if damage == "truncated":
        record.write_bytes(record.read_bytes()[:1000])
    elif damage == "garbage":
        record.write_bytes(b"\x00not a zip" * 100)
    else:
        with np.load(record) as z:
            arrays = {k: z[k] for k in z.files}
        if damage == "pickled":  # an object array would need pickle: never loaded
            arrays["boxes"] = np.array([{"a": 1}], dtype=object)
        elif damage == "unequal":
            arrays["cat_ids"] = arrays["cat_ids"][:-1]
        else:
            meta = json.loads(arrays["meta"].tobytes())
            meta["skips"]["counts"]["gremlins"] = 1
            arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(record, "wb") as f:
            np.savez(f, **arrays)
    with caplog.at_level(logging.INFO, logger="gn_detect.data.json_checks"):
        again = CocoDetection(image_dir, ann, transform=T)
    assert len(parses) == 2 and "not used" in caplog.text
    same_dataset(again, reference)
    with np.load(record, allow_pickle=False) as z:  # written again, whole
        assert z["boxes"].dtype == np.float32


def test_records_are_pruned_least_recently_used_first(make_coco, records: Path, tmp_path: Path) -> None:
    image_dir, ann = hostile(make_coco)
    text = ann.read_text()
    made: list[set[str]] = []  # the record each content wrote

    def check(i: int) -> None:
        before = {p.name for p in records.glob("*.npz")}
        ann.write_text(text.replace('"hostile"', f'"hostile {i}"'))
        read_json_checks(ann, None)
        made.append({p.name for p in records.glob("*.npz")} - before)

    for i in range(json_checks.KEEP_RECORDS):
        check(i)
        os.utime(records / next(iter(made[-1])), ns=(10**18 + i * 10**9,) * 2)  # distinct times, in order
    ann.write_text(text.replace('"hostile"', '"hostile 0"'))
    assert not read_json_checks(ann, None).complete  # content 0's record read: now the most recently used
    for i in range(json_checks.KEEP_RECORDS, json_checks.KEEP_RECORDS + 2):
        check(i)
    left = {p.name for p in records.glob("*.npz")}
    assert len(left) == json_checks.KEEP_RECORDS
    assert set().union(*made[:1], *made[3:]) == left  # contents 1 and 2, the least recently used, removed


def test_the_file_is_hashed_once_and_again_when_it_changes(make_coco, records: Path, monkeypatch) -> None:
    import hashlib

    _, ann = hostile(make_coco)
    read_json_checks(ann, None)

    def no_hashing(*a, **k):
        raise AssertionError("hashed again")

    with monkeypatch.context() as m:
        m.setattr(gio.hashlib, "blake2b", no_hashing)
        fp = gio.file_fingerprint(ann)
    assert fp["blake2b"] == hashlib.blake2b(ann.read_bytes(), digest_size=16).hexdigest()
    ann.write_text(ann.read_text().replace('"hostile"', '"hostile, changed"'))
    assert gio.file_fingerprint(ann)["blake2b"] == hashlib.blake2b(ann.read_bytes(), digest_size=16).hexdigest()


def test_a_file_changed_after_its_record_was_read_is_refused(make_coco, records: Path) -> None:
    _, ann = hostile(make_coco)
    read_json_checks(ann, None)
    recorded = read_json_checks(ann, None)
    assert not recorded.complete and "annotations" not in recorded.data
    assert len(recorded.annotations()) == 14  # read again when a build needs them
    ann.write_text(ann.read_text().replace('"hostile"', '"hostile, changed"'))
    with pytest.raises(DataError, match="changed while the run was starting"):
        recorded.annotations()


def test_an_annotation_file_that_is_a_fifo_is_one_line_not_a_hang(tmp_path: Path, records: Path) -> None:
    fifo = tmp_path / "ann.json"
    os.mkfifo(fifo)
    with pytest.raises(AnnotationFileError, match="not a regular file"):
        read_json_checks(fifo, None)


def _nested(make_coco, depth: int) -> tuple[Path, Path]:
    image_dir, ann = make_coco([{"id": 1, "file_name": "1.jpg", "width": 8, "height": 8}],
                               [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0}])
    ann.write_text(ann.read_text()[:-1] + ', "info": ' + "[" * depth + "]" * depth + "}")
    return image_dir, ann


@pytest.mark.parametrize("depth", [1000, 1015])
def test_a_json_nested_near_the_parsers_limit_is_one_line(depth: int, make_coco, records: Path) -> None:
    """Review: a value nested ~1,000 deep parsed, then its record's JSON text and the dataset's
    pickles hit Python's recursion limit (a traceback). Now it is refused in one line."""
    image_dir, ann = _nested(make_coco, depth)
    with pytest.raises(AnnotationFileError, match="nested too deeply") as info:
        CocoDetection(image_dir, ann, transform=T)
    assert "\n" not in str(info.value)


def test_a_json_nested_a_few_hundred_deep_is_read_and_recorded(make_coco, records: Path, parses: list[int]) -> None:
    image_dir, ann = _nested(make_coco, 300)
    first = CocoDetection(image_dir, ann, transform=T)
    again = CocoDetection(image_dir, ann, transform=T)  # from its record
    assert len(parses) == 1 and len(list(records.glob("*.npz"))) == 1
    assert len(first) == len(again) == 1 and first.num_annotations == again.num_annotations == 1


def test_a_folder_as_the_json_and_unhashable_ids_are_one_line_or_counted(make_coco, tmp_path: Path,
                                                                         records: Path) -> None:
    with pytest.raises(AnnotationFileError, match="not a regular file"):
        read_json_checks(tmp_path, None)
    image_dir, ann = make_coco([{"id": 1, "file_name": "1.jpg", "width": 8, "height": 8}],
                               [{"id": 1, "image_id": [1], "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0},
                                {"id": 2, "image_id": 1, "category_id": {"id": 1}, "bbox": [1, 1, 4, 4], "iscrowd": 0},
                                {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0}])
    ds = CocoDetection(image_dir, ann, transform=T)
    assert ds.skipped["unknown_image"] == ds.skipped["unknown_category"] == 1 and ds.num_annotations == 1
