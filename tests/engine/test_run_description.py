"""Checkpoints carry the model they hold (resolved config, model signature, categories, version);
a resume refuses any change of model, optimizer or data before it writes anything; evaluation
builds the model from the checkpoint; train and evaluation categories must agree."""
from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gn_detect.config import ConfigError, EvaluateConfig
from gn_detect.engine.checkpoint import CheckpointError, load_checkpoint
from gn_detect.engine.description import RESUME_MAY_CHANGE, ResumeRefusedError, check_resume, describe_run
from gn_detect.engine.evaluate import evaluate_checkpoint
from gn_detect.engine.train_loop import HookBase
from gn_detect.engine.trainer import train

from ._train_utils import one_thread, read_status, records, shapes_root, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


class StopAt(HookBase):
    """Asks for a stop at iteration ``at`` (as SIGTERM would)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            self.trainer.request_stop("test stop")


def _stopped_run(root: Path, run_dir: Path, **overrides) -> Path:
    """A run of 4 iterations stopped after 2: checkpoints/last.pth at iteration 2."""
    out = train(tiny_cfg(root, **overrides), run_dir, base_dir=run_dir.parent, hooks=[StopAt(1)])
    assert out["interrupted"] and out["iter"] == 2
    return run_dir


@pytest.fixture(scope="module")
def finished_run(shapes_root, tmp_path_factory) -> Path:  # noqa: F811
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("described") / "run"
    train(tiny_cfg(shapes_root, **{"solver.max_iter": 2}), run_dir, base_dir=run_dir.parent)
    torch.set_num_threads(before)
    return run_dir


def _train_categories(root: Path) -> list[dict]:
    cats = json.loads((root / "annotations" / "instances_train.json").read_text())["categories"]
    return [{"id": c["id"], "name": c["name"]} for c in sorted(cats, key=lambda c: c["id"])]


def test_every_checkpoint_describes_its_model(finished_run, shapes_root):  # noqa: F811
    config = OmegaConf.to_container(OmegaConf.load(finished_run / "config.yaml"))
    for name in ("last.pth", "model_final.pth"):
        desc = load_checkpoint(finished_run / "checkpoints" / name)["description"]
        assert desc["config"] == config, name
        assert desc["version"] == importlib.metadata.version("gn-detect")
        model = desc["model"]
        assert model["backbone"] == {"depth": "tiny", "widths": None, "norm": "affine", "ws": False,
                                     "num_groups": 8, "eps": 1e-5}
        assert model["fpn"]["norm"] == "none" and model["fpn"]["out_channels"] == 64
        assert model["head"] == {"num_convs": 2, "norm": "none", "ws": False, "num_groups": 8, "eps": 1e-5,
                                 "per_level_norm": False, "act": "relu"}
        assert model["categories"] == _train_categories(shapes_root) and model["num_classes"] == 5


def test_resume_refuses_a_changed_model_or_optimizer_and_writes_nothing(shapes_root, tmp_path):  # noqa: F811
    run_dir = _stopped_run(shapes_root, tmp_path / "run")
    files = ("config.yaml", "status.json", "env.json", "checkpoints/last.pth", "metrics.jsonl")
    before = {f: (run_dir / f).read_bytes() for f in files}
    changed = tiny_cfg(shapes_root, **{"model.backbone.norm": "ln", "solver.base_lr": 0.02})
    with pytest.raises(ResumeRefusedError) as info:
        train(changed, run_dir, base_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and str(run_dir / "checkpoints" / "last.pth") in msg
    assert "model.backbone.norm ('affine' -> 'ln')" in msg and "solver.base_lr (0.01 -> 0.02)" in msg
    assert msg.endswith("use a new run folder, or revert model.backbone.norm, solver.base_lr")
    assert {f: (run_dir / f).read_bytes() for f in files} == before  # config.yaml still says what ran
    assert read_status(run_dir)["state"] == "interrupted"
    # the refused start let go of the folder: the unchanged command resumes it
    assert "AP" in train(tiny_cfg(shapes_root), run_dir, base_dir=tmp_path)
    assert read_status(run_dir)["state"] == "done"


def test_resume_allows_a_longer_schedule_and_the_period_keys(shapes_root, tmp_path):  # noqa: F811
    run_dir = _stopped_run(shapes_root, tmp_path / "run")
    longer = tiny_cfg(shapes_root, **{"solver.max_iter": 6, "log.period": 2, "checkpoint.period": 3,
                                      "eval.period": 5, "eval.full_reports": True})
    train(longer, run_dir, base_dir=tmp_path)
    status = read_status(run_dir)
    assert (status["state"], status["iteration"]) == ("done", 6)
    assert [r["iter"] for r in records(run_dir, "train")] == [0, 1, 3, 5]  # log.period=2 after the resume
    assert OmegaConf.load(run_dir / "config.yaml").solver.max_iter == 6
    assert load_checkpoint(run_dir / "checkpoints" / "last.pth")["description"]["config"]["solver"]["max_iter"] == 6


def _description(root: Path, categories: list[dict] | None = None, **overrides) -> dict:
    config = OmegaConf.to_container(tiny_cfg(root, **overrides), resolve=True)
    config["solver"]["ims_per_batch"] = 2
    return describe_run(config, categories if categories is not None else _train_categories(root))


COSINE = {"solver.lr_schedule": "cosine"}


@pytest.mark.parametrize("saved, new, refused", [
    ({}, {"solver.max_iter": 3}, "solver.max_iter (4 -> 3; only a longer schedule can be resumed)"),
    # a longer cosine or step_fractions schedule changes the LR of the iterations already trained
    (COSINE, {**COSINE, "solver.max_iter": 8}, "solver.max_iter (4 -> 8; the learning rate"),
    ({"solver.step_fractions": [0.5]}, {"solver.step_fractions": [0.5], "solver.max_iter": 8},
     "solver.max_iter (4 -> 8; the learning rate"),
    ({}, COSINE, "solver.lr_schedule ('step' -> 'cosine')"),
    ({}, {"data.min_size_train": [80]}, "data.min_size_train"),
    ({}, {"seed": 1}, "seed (0 -> 1)"),
    ({}, {"eval.tune": "same"}, "eval.tune"),
    ({}, {"init_weights": "other.pth"}, "init_weights"),
    ({}, {"solver.nonfinite": "skip"}, "solver.nonfinite"),
], ids=["shorter", "cosine_longer", "fractions_longer", "schedule", "data", "seed", "eval_tuning", "init_weights",
        "nonfinite"])
def test_resume_rules(shapes_root, saved, new, refused):  # noqa: F811
    with pytest.raises(ResumeRefusedError, match="^resume: ") as info:
        check_resume(_description(shapes_root, **saved), _description(shapes_root, **new), "last.pth", 2)
    assert refused in str(info.value)


def test_resume_rules_allow_exactly_the_documented_keys(shapes_root):  # noqa: F811
    saved = _description(shapes_root)
    allowed = {"log.period": 7, "log.progress": "none", "eval.period": 3, "eval.full_reports": True,
               "eval.num_vis_images": 0, "checkpoint.period": 9, "data.num_workers": 2, "solver.max_iter": 40}
    assert set(allowed) - {"solver.max_iter"} == set(RESUME_MAY_CHANGE)
    check_resume(saved, _description(shapes_root, **allowed), "last.pth", 2)


def test_resume_refuses_other_categories(shapes_root):  # noqa: F811
    other = [dict(c) for c in _train_categories(shapes_root)]
    other[0]["name"] = "renamed"
    with pytest.raises(ResumeRefusedError) as info:
        check_resume(_description(shapes_root), _description(shapes_root, other), "last.pth", 2)
    assert "model description: categories" in str(info.value) and "the data (categories)" in str(info.value)


def _coco_with_renamed_val_category(root: Path, tmp_path: Path) -> dict:
    """Data overrides: the shapes files read as COCO, with one category renamed in the val json."""
    val = json.loads((root / "annotations" / "instances_val.json").read_text())
    val["categories"][0]["name"] = "renamed"
    ann = tmp_path / "instances_val_renamed.json"
    ann.write_text(json.dumps(val))
    return {"data.name": "coco", "data.train.images": "train", "data.train.ann": "annotations/instances_train.json",
            "data.val.images": "val", "data.val.ann": str(ann)}


def test_train_and_eval_categories_must_agree(shapes_root, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="categories differ") as info:
        train(tiny_cfg(shapes_root, **_coco_with_renamed_val_category(shapes_root, tmp_path)), run_dir,
              base_dir=tmp_path)
    assert "renamed" in str(info.value)
    assert read_status(run_dir)["state"] == "failed" and not records(run_dir, "train")


def _evaluate(tmp_path: Path, checkpoint: Path, **overrides):
    cfg = OmegaConf.merge(OmegaConf.structured(EvaluateConfig),
                          {"checkpoint": str(checkpoint), "out_dir": str(tmp_path / "eval"), **overrides})
    return evaluate_checkpoint(cfg, base_dir=tmp_path)


def test_evaluate_takes_the_model_from_the_checkpoint(finished_run, tmp_path):
    lone = tmp_path / "elsewhere" / "model.pth"  # no run folder, no config.yaml next to it
    lone.parent.mkdir()
    shutil.copy(finished_run / "checkpoints" / "model_final.pth", lone)
    metrics = _evaluate(tmp_path, lone)
    assert metrics["AP"] == records(finished_run, "final")[-1]["AP"]
    assert (tmp_path / "eval" / "report.json").is_file()


def test_evaluate_refuses_a_run_config_of_another_model(finished_run, tmp_path):
    other = OmegaConf.load(finished_run / "config.yaml")
    other.model.fpn.norm, other.model.head.num_convs = "gn", 3
    OmegaConf.save(other, tmp_path / "other.yaml")
    with pytest.raises(ConfigError) as info:
        _evaluate(tmp_path, finished_run / "checkpoints" / "model_final.pth", run_config=str(tmp_path / "other.yaml"))
    msg = str(info.value)
    assert msg.startswith("run_config: ") and "\n" not in msg
    assert "model.fpn.norm ('none' -> 'gn')" in msg and "model.head.num_convs (2 -> 3)" in msg
    # the run's own config.yaml describes the same model: accepted
    assert "AP" in _evaluate(tmp_path, finished_run / "checkpoints" / "model_final.pth",
                             run_config=str(finished_run / "config.yaml"))


def test_evaluate_refuses_a_checkpoint_without_description(finished_run, tmp_path):
    state = load_checkpoint(finished_run / "checkpoints" / "model_final.pth")
    del state["description"]
    old = tmp_path / "old.pth"
    torch.save(state, old)
    with pytest.raises(CheckpointError, match=f"checkpoint {old} has no model description"):
        _evaluate(tmp_path, old)


def test_evaluate_missing_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^checkpoint not found: {tmp_path / 'nope.pth'}"):
        _evaluate(tmp_path, tmp_path / "nope.pth")


def test_evaluate_refuses_data_with_other_categories(finished_run, shapes_root, tmp_path):  # noqa: F811
    data_cfg = OmegaConf.load(finished_run / "config.yaml").data
    for key, value in _coco_with_renamed_val_category(shapes_root, tmp_path).items():
        OmegaConf.update(data_cfg, key.removeprefix("data."), value)
    with pytest.raises(ValueError, match="categories differ.*renamed"):
        _evaluate(tmp_path, finished_run / "checkpoints" / "model_final.pth", data=data_cfg)
