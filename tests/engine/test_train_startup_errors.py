"""Bad input fails at start-up, before iteration 0, with a message naming the culprit, and the
run folder's status.json says 'failed' with that message (not 'running', not a mid-run crash).
In-process train(); the command line's one-line config errors are the launcher's (tools/)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gn_detect.config import ConfigError
from gn_detect.data import AnnotationFileError
from gn_detect.engine.trainer import train

from ._train_utils import one_thread, read_status, records, shapes_root, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_malformed_annotation_json(shapes_root, tmp_path):  # noqa: F811
    """The file is named in the error and in status.json; config.yaml is already there."""
    ann = _malformed_coco(tmp_path / "coco")
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(shapes_root, **{"data.name": "coco", "data.root": str(tmp_path / "coco")})
    with pytest.raises(AnnotationFileError) as info:
        train(cfg, run_dir, base_dir=tmp_path)
    assert str(ann) in str(info.value)
    error = _assert_failed_at_startup(run_dir, str(ann), "not valid JSON")
    assert error.startswith("AnnotationFileError")
    assert (run_dir / "config.yaml").is_file() and (run_dir / "env.json").is_file()


@pytest.mark.parametrize("overrides, needles", [
    ({"model.fpn.norm": "bogus"}, ["model.fpn.norm", "bogus", "gn"]),
    ({"model.norm_opts.bn_group_size": 3, "data.ims_per_device": 4},
     ["model.norm_opts.bn_group_size", "3", "data.ims_per_device=4"]),
    ({"solver.ims_per_batch": 3}, ["solver.ims_per_batch", "3", "data.ims_per_device=2", "solver.ims_per_batch=null"]),
    # BN at one image per group where P7 can be 1x1: refused before iteration 0, not mid-run
    ({"model.fpn.norm": "bn", "data.ims_per_device": 1}, ["model.fpn.norm", "1 image per BN statistics group", "gn"]),
], ids=["fpn_norm", "bn_group_size", "ims_per_batch", "bn_single_image_p7"])
def test_bad_config_fails_before_training(shapes_root, tmp_path, overrides, needles):  # noqa: F811
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError) as info:
        train(tiny_cfg(shapes_root, **overrides), run_dir, base_dir=tmp_path)
    for needle in needles:
        assert needle in str(info.value)
    error = _assert_failed_at_startup(run_dir, *needles)
    assert error == f"{type(info.value).__name__}: {info.value}"


@pytest.mark.parametrize("overrides, key", [
    ({"model.head.act": "gelu"}, "model.head.act"),
    ({"solver.max_skipped_steps": -1}, "solver.max_skipped_steps"),
    ({"solver.steps": [10], "solver.max_iter": 4}, "solver.steps"),
], ids=["choice", "max_skipped_steps", "lr_steps"])
def test_in_process_config_errors_come_before_any_data(shapes_root, tmp_path, monkeypatch, overrides, key):  # noqa: F811
    """train() called in-process checks the whole config (one line naming the key) before it reads any data."""
    def no_data(*args, **kwargs):
        raise AssertionError("a dataset was read before the config was checked")

    monkeypatch.setattr("gn_detect.engine.trainer.build_dataset", no_data)
    with pytest.raises(ConfigError) as info:
        train(tiny_cfg(shapes_root, **overrides), tmp_path / "run", base_dir=tmp_path)
    assert str(info.value).startswith(f"{key}: ") and "\n" not in str(info.value)
