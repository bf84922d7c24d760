"""Issue 10 C: training and evaluation categories are compared (before: never, so a model
trained on categories [1, 7, 90] was scored on a split with [1, 2, 3, ...] and exit 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gn_detect import image_io
from gn_detect.data import CocoDetection, build_dataset, categories_of, check_same_categories, split_categories
from gn_detect.data import checks


def cats(*pairs: tuple[int, str]) -> list[dict]:
    return [{"id": i, "name": n} for i, n in pairs]


def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(ValueError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "Fix:" in msg
    return msg


def test_identical_categories_give_the_shared_label_map() -> None:
    a = cats((90, "toothbrush"), (1, "person"), (7, "train"))
    assert check_same_categories(a, list(reversed(a))) == [1, 7, 90]  # order in the json does not matter


def test_the_issue_case_is_refused() -> None:
    train = cats((1, "person"), (7, "train"), (90, "toothbrush"))
    val = cats(*[(i, f"c{i}") for i in range(1, 81)])
    msg = one_line_error(check_same_categories, train, val)
    assert "3 vs 80 categories" in msg and "id 1: 'person' vs 'c1'" in msg and "renumber" in msg


def test_same_ids_other_names_and_missing_ids_are_listed() -> None:
    train = cats((1, "person"), (2, "bicycle"), (3, "car"))
    msg = one_line_error(check_same_categories, train, cats((1, "person"), (2, "car"), (4, "bus")))
    assert "3 differences" in msg and "id 2: 'bicycle' vs 'car'" in msg
    assert "id 3 ('car') only in training" in msg and "id 4 ('bus') only in evaluation" in msg


def test_map_by_name() -> None:
    train = cats((1, "person"), (7, "train"), (90, "toothbrush"))
    val = cats((3, "train"), (5, "toothbrush"), (8, "person"))
    with pytest.raises(ValueError):
        check_same_categories(train, val)
    assert check_same_categories(train, val, map_by_name=True) == [8, 3, 5]  # per training label 0, 1, 2
    msg = one_line_error(check_same_categories, train, cats((3, "train"), (5, "toothbrush"), (8, "dog")),
                         map_by_name=True)
    assert "names only in training, e.g. ['person']" in msg and "only in evaluation, e.g. ['dog']" in msg
    msg = one_line_error(check_same_categories, cats((1, "a"), (2, "a")), cats((1, "a"), (2, "a")), map_by_name=True)
    assert "['a'] more than once" in msg


def test_datasets_coco_objects_and_split_json(make_coco, tmp_path: Path, monkeypatch) -> None:
    d, f = make_coco([{"id": 1, "file_name": "1.jpg", "width": 40, "height": 32}], [],
                     categories=[{"id": 3, "name": "b"}, {"id": 1, "name": "a"}])
    ds = CocoDetection(d, f)
    assert categories_of(ds) == categories_of(ds.coco) == categories_of(json.loads(f.read_text()))
    assert check_same_categories(ds, ds.coco) == ds.label_to_cat_id == [1, 3]
    other = dict(json.loads(f.read_text()), categories=cats((1, "a"), (2, "b")))
    msg = one_line_error(check_same_categories, ds, other)
    assert f"training ({ds.name})" in msg
    # a split's categories straight from its json: no image is opened
    monkeypatch.setattr(image_io.Image, "open", lambda *a, **k: pytest.fail("split_categories opened an image"))
    cfg = {"name": "coco", "root": str(tmp_path), "val": {"images": "images", "ann": "ann.json"}}
    assert split_categories(cfg, "val") == ds.categories
    with pytest.raises(checks.AnnotationFileError, match="not found"):
        split_categories(dict(cfg, val={"images": "images", "ann": "nope.json"}), "val")


def test_shared_coco128_train_and_tiny_coco_val_agree(coco128: Path, tiny_coco: Path) -> None:
    cfg = {"name": "coco", "root": str(coco128.parent),
           "train": {"images": "coco128/train2017", "ann": "coco128/annotations/instances_train2017.json"},
           "val": {"images": "tiny_coco/val2017", "ann": "tiny_coco/annotations/instances_val2017.json"}}
    train, val = split_categories(cfg, "train"), split_categories(cfg, "val")
    assert len(check_same_categories(train, val)) == 80
    val_ds = build_dataset(dict(cfg, verify_images=False), "val")
    assert check_same_categories(train, val_ds) == val_ds.label_to_cat_id
