"""Bad input fails at start-up, before iteration 0, with a message naming the culprit, and the
run folder's status.json says 'failed' with that message (not 'running', not a mid-run crash)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gn_detect.engine.trainer import train

from ._train_utils import (  # noqa: F401
    compose,
    one_thread,
    read_status,
    records,
    run_train,
    shapes_root,
    tail,
    tiny_overrides,
)


def _malformed_coco(root: Path) -> Path:
    """A COCO layout whose train json is cut off mid-way (e.g. an interrupted download)."""
    (root / "train2017").mkdir(parents=True)
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    ann = root / "annotations" / "instances_train2017.json"
    ann.write_text('{"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}], "annotations": [')
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))
    return ann


def _assert_failed_at_startup(run_dir: Path, *needles: str) -> str:
    status = read_status(run_dir)
    assert status["state"] == "failed", status
    assert status.get("iteration", 0) == 0, status
    for needle in needles:
        assert needle in status["error"], (needle, status["error"])
    assert not records(run_dir, "train"), "the run started iterating before it failed"
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    return status["error"]


def test_malformed_annotation_json_cli(tmp_path):
    """Through tools/train.py: non-zero exit, the file named on the console and in status.json."""
    ann = _malformed_coco(tmp_path / "coco")
    run_dir = tmp_path / "run"
    proc = run_train(tiny_overrides(None, shapes=False, **{
        "data": "coco", "data.root": tmp_path / "coco",
        "data.train": "{images: train2017, ann: annotations/instances_train2017.json}",
        "data.val": "{images: val2017, ann: annotations/instances_val2017.json}",
        "hydra.run.dir": run_dir,
    }), cwd=tmp_path, timeout=120)
    assert proc.returncode != 0, tail(proc)
    assert str(ann) in proc.stdout and "not valid JSON" in proc.stdout, tail(proc)
    assert "iter 1/" not in proc.stdout, tail(proc)
    error = _assert_failed_at_startup(run_dir, str(ann), "not valid JSON")
    assert error.startswith("AnnotationFileError"), error


@pytest.mark.parametrize("overrides, needles", [
    (["model.fpn.norm=bogus"], ["model.fpn.norm", "bogus", "gn"]),
    (["data.bn_group_size=3", "data.ims_per_device=4"], ["data.bn_group_size=3", "data.ims_per_device=4"]),
    (["solver.ims_per_batch=3"], ["solver.ims_per_batch=3", "data.ims_per_device=2", "solver.ims_per_batch=null"]),
    # BN at one image per group where P7 can be 1x1: refused before iteration 0, not mid-run
    (["norm=bn", "data.ims_per_device=1"], ["model.fpn.norm=bn", "1 image per BN statistics group", "gn"]),
], ids=["fpn_norm", "bn_group_size", "ims_per_batch", "bn_single_image_p7"])
def test_bad_config_fails_before_training(shapes_root, one_thread, tmp_path, overrides, needles):  # noqa: F811
    run_dir = tmp_path / "run"
    cfg = compose(tiny_overrides(shapes_root) + overrides)
    with pytest.raises(ValueError) as info:
        train(cfg, run_dir, base_dir=tmp_path)
    for needle in needles:
        assert needle in str(info.value)
    error = _assert_failed_at_startup(run_dir, *needles)
    assert error == f"ValueError: {info.value}"
