"""The synthetic shapes dataset: deterministic, tight boxes, idempotent and atomic generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gn_detect.data import CocoDetection, ensure_shapes_dataset
from gn_detect.data import synthetic
from gn_detect.data.synthetic import SHAPES_LAYOUT, iter_split, render_image

SMALL = dict(num_train=6, num_val=3, image_size=64)


def read_all(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    a = read_all(ensure_shapes_dataset(tmp_path / "a", seed=1, **SMALL))
    b = read_all(ensure_shapes_dataset(tmp_path / "b", seed=1, **SMALL))
    c = read_all(ensure_shapes_dataset(tmp_path / "c", seed=2, **SMALL))
    assert a == b
    ann = SHAPES_LAYOUT["train"]["ann"]
    assert a[ann] != c[ann] and a["train/000001.jpg"] != c["train/000001.jpg"]


def test_image_independent_of_split_size(tmp_path: Path) -> None:
    a = ensure_shapes_dataset(tmp_path / "a", seed=1, **SMALL)
    b = ensure_shapes_dataset(tmp_path / "b", seed=1, **{**SMALL, "num_train": 3})
    assert (a / "train/000002.jpg").read_bytes() == (b / "train/000002.jpg").read_bytes()


def test_boxes_tight_around_drawn_pixels() -> None:
    n = 0
    for _, img, shapes in iter_split("train", 20, image_size=96, seed=0, num_classes=6):
        for s in shapes:
            ys, xs = np.nonzero(s.mask)
            box = synthetic.mask_to_box(s.mask)
            assert box == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            # the drawn colour is in the image on all four box edges (tight), and the masks
            # are what was painted: pixels of one shape share one colour up to noise
            x, y, w, h = box
            edges = [s.mask[y, x:x + w], s.mask[y + h - 1, x:x + w], s.mask[y:y + h, x], s.mask[y:y + h, x + w - 1]]
            assert all(e.any() for e in edges)
            assert s.mask.sum() >= 0.6 * s.full_area - 1e-9  # mostly visible
            assert img[s.mask].std(axis=0).max() < 30
            n += 1
    assert n > 40


def test_json_boxes_match_rendered_masks(tmp_path: Path) -> None:
    root = ensure_shapes_dataset(tmp_path / "s", seed=5, image_format="png", **SMALL)
    data = json.loads((root / SHAPES_LAYOUT["val"]["ann"]).read_text())
    rendered = list(iter_split("val", 3, image_size=64, seed=5, num_classes=5))
    for i, img, shapes in rendered:
        anns = [a for a in data["annotations"] if a["image_id"] == i + 1]
        assert [a["bbox"] for a in anns] == [synthetic.mask_to_box(s.mask) for s in shapes]
        assert [a["category_id"] - 1 for a in anns] == [s.label for s in shapes]
        on_disk = np.asarray(Image.open(root / "val" / f"{i + 1:06d}.png"))
        assert np.array_equal(on_disk, img)  # PNG is lossless: the masks describe the file
    ds = CocoDetection(root / "val", root / SHAPES_LAYOUT["val"]["ann"])
    assert len(ds) == 3 and ds.class_names == ["circle", "square", "triangle", "star", "cross"]
    assert sum(v for k, v in ds.skipped.items()) == 0


def test_idempotent_and_regenerates_on_param_change(tmp_path: Path) -> None:
    root = ensure_shapes_dataset(tmp_path / "s", seed=1, **SMALL)
    stamp = (root / synthetic.META_FILE).stat().st_mtime_ns
    ensure_shapes_dataset(tmp_path / "s", seed=1, **SMALL)
    assert (root / synthetic.META_FILE).stat().st_mtime_ns == stamp
    ensure_shapes_dataset(tmp_path / "s", seed=1, **{**SMALL, "num_val": 2})
    assert len(list((root / "val").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.lock", "s"]  # no temp/old folders left


def test_killed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic.generate_split

    def dies_on_val(out_dir, split, *a, **kw):
        if split == "val":
            raise KeyboardInterrupt("killed")
        return real(out_dir, split, *a, **kw)

    monkeypatch.setattr(synthetic, "generate_split", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes_dataset(tmp_path / "s", seed=1, **SMALL)
    assert not (tmp_path / "s").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".s.lock"]
    # an existing good dataset also survives a killed regeneration
    monkeypatch.setattr(synthetic, "generate_split", real)
    ensure_shapes_dataset(tmp_path / "s", seed=1, **SMALL)
    before = read_all(tmp_path / "s")
    monkeypatch.setattr(synthetic, "generate_split", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes_dataset(tmp_path / "s", seed=2, **SMALL)
    assert read_all(tmp_path / "s") == before


def test_refuses_to_replace_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError):
        ensure_shapes_dataset(tmp_path / "mine", **SMALL)


def test_render_variety() -> None:
    rng = np.random.default_rng(0)
    sizes, labels = [], set()
    for _ in range(30):
        img, shapes = render_image(rng, 128, 128, num_classes=6)
        assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
        sizes += [synthetic.mask_to_box(s.mask)[2] for s in shapes]
        labels |= {s.label for s in shapes}
    assert labels == set(range(6)) and min(sizes) < 16 and max(sizes) > 50
