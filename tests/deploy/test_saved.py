"""model_folded.pt: plain data (weights_only), rebuilt by load_folded into the same network, for
either per-level choice; damaged or misplaced files are refused with one line."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from gn_detect.deploy import HeadNetwork, fold_model, load_folded, save_folded
from gn_detect.deploy.saved import load_for_inference, load_trained
from gn_detect.deploy.options import PredictConfig
from gn_detect.engine.checkpoint import CheckpointError

from ._runs import make_run


@pytest.mark.parametrize("per_level", ["duplicate", "keep"])
def test_load_folded_rebuilds_the_saved_network(shapes_root, tmp_path, per_level, one_thread):
    ckpt = make_run(tmp_path / "run", shapes_root, **{"model.backbone.norm": "bn", "model.head.norm": "bn",
                                                      "model.fpn.norm": "gn_ws"})
    cfg = OmegaConf.create({"checkpoint": str(ckpt)})
    model, description, _, _ = load_trained(cfg, tmp_path)
    folded, report = fold_model(model, per_level)
    path = save_folded(tmp_path / "model_folded.pt", folded, report, description, {"checkpoint": str(ckpt)})
    assert torch.load(path, weights_only=True)["fold"] == {"per_level": per_level}
    rebuilt = load_folded(path)
    assert rebuilt.state_dict().keys() == folded.state_dict().keys()
    images = torch.rand(2, 3, 128, 256, generator=torch.Generator().manual_seed(3)) * 255  # 0-255 RGB
    with torch.no_grad():
        for a, b in zip(HeadNetwork(folded)(images), HeadNetwork(rebuilt)(images)):
            assert torch.equal(a, b)
    loaded, _ = load_for_inference(OmegaConf.merge(OmegaConf.structured(PredictConfig),
                                                   {"checkpoint": str(path)}), tmp_path)
    assert loaded.fold == {"per_level": per_level} and loaded.categories == description["model"]["categories"]


def test_damaged_or_misplaced_folded_files_are_refused(shapes_root, tmp_path, one_thread):
    ckpt = make_run(tmp_path / "run", shapes_root)
    model, description, _, _ = load_trained(OmegaConf.create({"checkpoint": str(ckpt)}), tmp_path)
    folded, report = fold_model(model)
    path = save_folded(tmp_path / "model_folded.pt", folded, report, description, {})
    state = torch.load(path, weights_only=True)
    del state["model"]["head.cls_score.bias"]
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="do not fit.*export it again"):
        load_folded(tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="is not a folded model"):
        load_folded(ckpt)
    with pytest.raises(CheckpointError, match="already a folded model"):
        load_trained(OmegaConf.create({"checkpoint": str(path)}), tmp_path)


def test_non_finite_weights_and_an_edited_description_are_refused(shapes_root, tmp_path, one_thread):
    """A checkpoint with NaN weights once evaluated and predicted with exit 0 and 0 detections; an
    edited description was blamed on a version difference between two equal versions."""
    from gn_detect.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from gn_detect.engine.restore import model_from_checkpoint

    ckpt = make_run(tmp_path / "run", shapes_root)
    state = load_checkpoint(ckpt)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    with pytest.raises(CheckpointError, match=f"1 weight tensor\\(s\\) hold NaN or inf \\(e.g. {name}\\)"):
        model_from_checkpoint(state["description"], state, ckpt)
    state = load_checkpoint(ckpt)
    state["description"]["model"]["categories"] = state["description"]["model"]["categories"][:1]
    save_checkpoint(tmp_path / "edited.pth", state)
    with pytest.raises(CheckpointError, match="its description does not match the model its own config builds"):
        model_from_checkpoint(state["description"], state, tmp_path / "edited.pth")
