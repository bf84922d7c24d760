"""A checkpoint file cannot run code: a crafted .pth whose unpickling would call os.system is
refused, with one line naming the file and the cause, at every entry point that reads
checkpoints -- init_weights=, tools/evaluate.py's checkpoint= and the resume of a planted
checkpoints/last.pth -- and the command in it never runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gn_detect.config import EvaluateConfig
from gn_detect.engine.checkpoint import CheckpointError, load_checkpoint
from gn_detect.engine.evaluate import evaluate_checkpoint
from gn_detect.engine.trainer import train

from ._train_utils import one_thread, read_status, shapes_root, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


class _RunsCode:
    """Unpickling this calls os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _crafted(path: Path, marker: Path) -> Path:
    """A file that looks like a checkpoint and would create ``marker`` when loaded unsafely."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "gn_detect.checkpoint/1", "iteration": 1, "model": {"w": torch.zeros(1)},
                "extra": _RunsCode(f"touch {marker}")}, path)
    return path


def _assert_refused(exc: BaseException, path: Path, marker: Path) -> None:
    msg = str(exc)
    assert str(path) in msg and "refused" in msg and "system" in msg, msg
    assert "\n" not in msg, msg
    assert not marker.exists(), "the checkpoint's code ran"


def test_the_crafted_file_would_run_code(tmp_path):
    """The control: loaded the unsafe way, the file does run its command."""
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / "evil.pth", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_load_checkpoint_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / "evil.pth", marker)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    _assert_refused(info.value, path, marker)


def test_init_weights_refuses_code_before_reading_data(shapes_root, tmp_path, monkeypatch):  # noqa: F811
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / "evil.pth", marker)
    monkeypatch.setattr("gn_detect.engine.trainer.build_dataset", _no_data)
    with pytest.raises(CheckpointError) as info:
        train(tiny_cfg(shapes_root, init_weights=str(path)), tmp_path / "run", base_dir=tmp_path)
    _assert_refused(info.value, path, marker)
    assert read_status(tmp_path / "run")["state"] == "failed"


def test_planted_last_checkpoint_is_not_resumed(shapes_root, tmp_path, monkeypatch):  # noqa: F811
    marker = tmp_path / "ran"
    run_dir = tmp_path / "run"
    path = _crafted(run_dir / "checkpoints" / "last.pth", marker)
    monkeypatch.setattr("gn_detect.engine.trainer.build_dataset", _no_data)
    with pytest.raises(CheckpointError) as info:
        train(tiny_cfg(shapes_root), run_dir, base_dir=tmp_path)
    _assert_refused(info.value, path, marker)


def test_evaluate_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / "run" / "checkpoints" / "model_final.pth", marker)
    cfg = OmegaConf.merge(OmegaConf.structured(EvaluateConfig), {"checkpoint": str(path)})
    with pytest.raises(CheckpointError) as info:
        evaluate_checkpoint(cfg, base_dir=tmp_path)
    _assert_refused(info.value, path, marker)


def test_garbage_file_gets_one_line_naming_it(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value) and "corrupt" in str(info.value) and "\n" not in str(info.value)


def _no_data(*args, **kwargs):
    raise AssertionError("a dataset was read before the checkpoint was checked")
