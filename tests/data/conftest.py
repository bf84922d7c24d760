"""Fixtures for the data tests: shared real data (skipped if absent) and tiny datasets in tmp_path."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Any:
    """Tiny tensors + intra-op threads on a shared 2-core box: OpenMP waits dominate (a 50x60
    resize took 60 ms with 2 threads vs 0.25 ms with 1). DataLoader workers use 1 thread too."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own gn-detect cache (image verification records), so no test reads another's."""
    monkeypatch.setenv("GN_DETECT_CACHE", str(tmp_path_factory.mktemp("gn_detect_cache")))


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the annotation files parsed so far (checks.parse_json on a dict with images)."""
    from gn_detect.data import checks

    seen: list[int] = []
    real = checks.parse_json

    def counting(raw, *a, **k):
        out = real(raw, *a, **k)
        if isinstance(out, dict) and "images" in out:  # an annotation file, not some other json
            seen.append(len(raw))
        return out

    monkeypatch.setattr(checks, "parse_json", counting)
    return seen


def no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gn-detect cache off (no verification or json check record read or written): its folder
    cannot be made, a file is in the way."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("GN_DETECT_CACHE", str(blocker / "cache"))


def shared_data_dir() -> Path:
    return Path(os.environ.get("GN_DETECT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def coco128() -> Path:
    root = shared_data_dir() / "coco128"
    if not (root / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"coco128 not found under {root.parent} (set GN_DETECT_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def tiny_coco() -> Path:
    root = shared_data_dir() / "tiny_coco"
    if not (root / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"tiny_coco not found under {root.parent} (set GN_DETECT_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset shared by several tests (generated once per session)."""
    from gn_detect.data.synthetic import ensure_shapes_dataset

    return ensure_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes", num_train=24, num_val=8,
                                 image_size=96, seed=3)


def save_image(path: Path, w: int, h: int, mode: str = "RGB", fmt: str | None = None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


@pytest.fixture
def make_coco(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """make_coco(images=[...], annotations=[...], categories=None, write_images=True) -> (image_dir, ann_file).

    images: dicts with id, file_name, width, height (plus optional 'mode'/'format' for the file
    written, 'write': False to leave the file missing).
    """

    def make(images: list[dict[str, Any]], annotations: list[dict[str, Any]],
             categories: list[dict[str, Any]] | None = None) -> tuple[Path, Path]:
        image_dir = tmp_path / "images"
        image_dir.mkdir(exist_ok=True)
        entries = []
        for im in images:
            im = dict(im)
            mode, fmt, write = im.pop("mode", "RGB"), im.pop("format", None), im.pop("write", True)
            if write:
                save_image(image_dir / im["file_name"], im["width"], im["height"], mode, fmt, seed=im["id"])
            entries.append(im)
        cats = categories if categories is not None else [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]
        ann_file = tmp_path / "ann.json"
        ann_file.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": cats}))
        return image_dir, ann_file

    return make

