"""Where data=shapes may generate its data (gn_detect.data.build.check_shapes_root): the launch
folder's datasets/, a new folder whose parent exists, an empty folder or an existing shapes
dataset; anything else is refused with one line naming data.root, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gn_detect.data import build_dataset, split_categories
from gn_detect.data.synthetic import META_FILE, ensure_shapes_dataset

TINY = {"num_train": 2, "num_val": 1, "image_size": 32, "seed": 1}


def _cfg(root: str | Path, **synthetic) -> dict:
    return {"name": "shapes", "root": str(root), "min_size_train": [32], "max_size": 32, "min_size_test": 32,
            "synthetic": {**TINY, **synthetic}}


def _built(root: Path) -> bool:
    return (root / META_FILE).is_file() and (root / "annotations" / "instances_val.json").is_file()


def test_missing_parent_is_refused_and_nothing_is_made(tmp_path: Path) -> None:
    root = tmp_path / "nonexistent" / "shapes"
    for call in (lambda: build_dataset(_cfg(root), "train", base_dir=tmp_path),
                 lambda: split_categories(_cfg(root), "val", base_dir=tmp_path)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"data.root={root}: the parent folder {root.parent} does not exist")
        assert f"Fix: create {root.parent} first, or leave data.root at datasets/shapes" in msg
    assert not (tmp_path / "nonexistent").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no lock file, no temporary folder either
    # a relative root that climbs out of datasets/ is not "under datasets/"
    with pytest.raises(ValueError, match=r"data\.root=datasets/\.\./gone/shapes: the parent folder"):
        build_dataset(_cfg("datasets/../gone/shapes"), "val", base_dir=tmp_path)
    assert not (tmp_path / "gone").exists()


def test_datasets_folder_new_folder_and_empty_folder_are_used(tmp_path: Path) -> None:
    # the default, relative to the launch folder: datasets/ and its subfolders are made as needed
    ds = build_dataset(_cfg("datasets/deep/shapes"), "val", base_dir=tmp_path)
    assert len(ds) == 1 and _built(tmp_path / "datasets" / "deep" / "shapes")
    new = tmp_path / "elsewhere"  # a new folder whose parent exists
    build_dataset(_cfg(new), "val", base_dir=tmp_path)
    assert _built(new)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert [c["name"] for c in split_categories(_cfg(empty), "val", base_dir=tmp_path)][:2] == ["circle", "square"]
    assert _built(empty)


def test_existing_shapes_dataset_is_reused_or_regenerated(tmp_path: Path) -> None:
    root = ensure_shapes_dataset(tmp_path / "mine", **TINY)
    before = json.loads((root / META_FILE).read_text())
    build_dataset(_cfg(root), "val", base_dir=tmp_path)  # same parameters: reused as is
    assert json.loads((root / META_FILE).read_text()) == before
    build_dataset(_cfg(root, seed=2), "val", base_dir=tmp_path)  # other parameters: regenerated in place
    assert json.loads((root / META_FILE).read_text())["params"]["seed"] == 2


def test_non_empty_other_folder_or_a_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"x")
    with pytest.raises(ValueError) as e:
        build_dataset(_cfg(other), "train", base_dir=tmp_path)
    assert str(e.value) == (f"data.root={other}: {other} is not empty and holds no shapes dataset (no {META_FILE}); "
                            "generating there would mix files. Fix: give a new or empty folder, or leave data.root "
                            "at datasets/shapes")
    assert sorted(p.name for p in other.iterdir()) == ["keep.jpg"]
    # the generator refuses it on its own as well (tools/make_synthetic.py calls it directly)
    with pytest.raises(FileExistsError, match="is not empty and is not a shapes dataset"):
        ensure_shapes_dataset(other, **TINY)
    # also under datasets/: only the parent rule is relaxed there
    (tmp_path / "datasets" / "shapes").mkdir(parents=True)
    (tmp_path / "datasets" / "shapes" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"data\.root=datasets/shapes: .* is not empty"):
        build_dataset(_cfg("datasets/shapes"), "val", base_dir=tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match=r"is a file, not a folder"):
        build_dataset(_cfg(afile), "val", base_dir=tmp_path)
