"""tools/browse_dataset.py: N images of a split drawn with their boxes as the loader gives them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gn_detect.deploy.draw import class_color

from .test_data_build import load_tool


def _overrides(root: Path) -> list[str]:
    return ["data=coco", f"data.root={root}", "data.train.images=train", "data.train.ann=annotations/instances_train.json",
            "data.val.images=val", "data.val.ann=annotations/instances_val.json", "data.min_size_train=[64]",
            "data.min_size_test=64", "data.max_size=64"]


def test_train_split_drawn_as_the_loader_gives_it(shapes_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    tool = load_tool("browse_dataset")
    out = tmp_path / "browse"
    assert tool.main(["--num", "5", "--out", str(out), *_overrides(shapes_root)]) == 0
    assert "5 images of coco_train" in capsys.readouterr().out
    drawn = sorted(out.glob("0*.png"))
    assert len(drawn) == 5 and (out / "contact_sheet.png").is_file()
    src = json.loads((shapes_root / "annotations" / "instances_train.json").read_text())
    cats = sorted(c["id"] for c in src["categories"])
    found = total = 0
    for path in drawn:
        image_id = int(path.stem.split("_")[1])
        im = next(i for i in src["images"] if i["id"] == image_id)
        s = 64 / max(im["width"], im["height"])  # 96 px squares -> 64 px
        arr = np.asarray(Image.open(path).convert("RGB"))
        assert arr.shape[:2] == (round(im["height"] * s), round(im["width"] * s))
        anns = [a for a in src["annotations"] if a["image_id"] == image_id and not a.get("iscrowd")]
        # each box's outline is in its class colour at the middle of one of its four edges (labels,
        # on top and moved where they would overlap, may cover some), at the scaled position either
        # as it is or mirrored (the loader's random flip)
        hits = {False: 0, True: 0}
        for a in anns:
            x, y, w, h = (v * s for v in a["bbox"])
            col = np.array(class_color(cats.index(a["category_id"])))
            for flip in (False, True):
                x0 = arr.shape[1] - (x + w) if flip else x
                points = ((x0, y + h / 2), (x0 + w, y + h / 2), (x0 + w / 2, y), (x0 + w / 2, y + h))
                seen = False
                for px, py in points:
                    px, py = min(int(round(px)), arr.shape[1] - 1), min(int(round(py)), arr.shape[0] - 1)
                    win = arr[max(py - 1, 0):py + 2, max(px - 1, 0):px + 2].reshape(-1, 3)
                    seen |= bool((np.abs(win.astype(int) - col).sum(1) < 10).any())
                hits[flip] += seen
        found, total = found + max(hits.values()), total + len(anns)
    # boxes drawn later can cover an earlier box's edge: most, not all, edges are visible
    assert found >= 0.8 * total and total > 5


def test_bad_input_is_one_line(shapes_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = load_tool("browse_dataset")
    assert tool.main(["--out", str(tmp_path), "data=nope"]) == 2
    assert capsys.readouterr().err.startswith("gn-detect: config: ")
    (tmp_path / "f").write_text("x")
    assert tool.main(["--out", str(tmp_path / "f"), *_overrides(shapes_root)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert tool.main(["--out", str(tmp_path / "o"), *_overrides(shapes_root), "data.classes=[unicorn]"]) == 2
    assert "unicorn" in capsys.readouterr().err
