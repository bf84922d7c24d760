"""Adding a norm touches one place (issue 16): a toy norm registered with ``register_norm`` is
selected for the head through the same entry point the CLI uses, trains, folds and exports as its
table entry says, and the sweep report labels it, with no file of the package edited."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from gn_detect.deploy.export import export_run
from gn_detect.deploy.options import ExportConfig
from gn_detect.engine.trainer import train
from gn_detect.norms import NormSpec, norm_spec, register_norm, unregister_norm
from gn_detect.sweeps import write_sweep_report
from tests.engine._train_utils import one_thread, shapes_root, tiny_cfg  # noqa: F401  (fixtures)


class ChannelScale(nn.Module):
    """``x * weight[c]``: batch-independent, no shift, foldable into the preceding conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)

    def fold_scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.weight.detach().double()
        return s, torch.zeros_like(s)


def build_channel_scale(channels: int, **_: object) -> nn.Module:
    return ChannelScale(channels)


@pytest.fixture
def toy_norm():
    register_norm("toy_scale", NormSpec(build_channel_scale, normalizes=False, foldable=True, shift=False,
                                        label="toyscale", tokens=("toyscale",), doc="a per-channel scale"))
    yield "toy_scale"
    unregister_norm("toy_scale")


@pytest.mark.slow
def test_a_registered_norm_trains_folds_exports_and_is_labelled(toy_norm, shapes_root, tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    sweep = tmp_path / "sweep"
    run_dir = sweep / "toy"
    cfg = tiny_cfg(shapes_root, **{"model.head.norm": toy_norm, "solver.max_iter": 2})
    train(cfg, run_dir, base_dir=tmp_path)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    ckpt = run_dir / "checkpoints" / "model_final.pth"
    state = torch.load(ckpt, weights_only=True)
    head_keys = [k for k in state["model"] if k.startswith("head.cls_subnet.0.")]
    # no shift in the table entry: the conv before it keeps its bias; the scale is the norm's weight
    assert "head.cls_subnet.0.conv.bias" in head_keys and "head.cls_subnet.0.norm.weight" in head_keys
    assert state["description"]["model"]["head"]["norm"] == toy_norm

    check = export_run(OmegaConf.merge(OmegaConf.structured(ExportConfig), {"checkpoint": str(ckpt)}),
                       base_dir=tmp_path)
    assert check["passed"]
    kept = " ".join(check["fold"]["kept"])
    assert norm_spec(toy_norm).foldable and "head." not in kept  # every head scale folded into its conv

    summary = write_sweep_report(sweep, quiet=True)
    labels = json.dumps(summary["rows"])
    assert "toyscale" in labels, labels
