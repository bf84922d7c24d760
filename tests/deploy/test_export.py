"""tools/export.py: the folded model file loads with weights_only and rebuilds the same network,
the ONNX file runs in onnxruntime and agrees with the unfolded PyTorch model (checked here on
inputs the export never saw), and export_check.json records the comparison."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from gn_detect.data import split_categories
from gn_detect.deploy import HeadNetwork, load_folded
from gn_detect.deploy.export import export_run
from gn_detect.deploy.options import ExportConfig
from gn_detect.engine.restore import model_from_checkpoint
from tests.engine._train_utils import REPO, child_env, tail, tiny_cfg

from ._runs import make_run

# BN backbone (folded), GN on WS convs in the FPN (WS applied, GN kept), per-level BN in the head
MIXED = {"model.backbone.norm": "bn", "model.fpn.norm": "gn_ws", "model.head.norm": "bn"}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.slow
def test_export_writes_folded_model_onnx_and_check(shapes_root, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    ckpt = make_run(tmp_path / "run", shapes_root, **MIXED)
    cmd = [sys.executable, str(REPO / "tools" / "export.py"), f"checkpoint={ckpt}"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=child_env(), timeout=180,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, tail(proc)
    out = tmp_path / "run" / "export"
    check = json.loads((out / "export_check.json").read_text())
    assert check["passed"] and check["inputs"]["source"].startswith("shapes_val")
    assert check["files"]["onnx"]["opset"] >= 18 and "InstanceNormalization" in check["files"]["onnx"]["op_types"]
    for pair in ("folded_vs_unfolded", "onnxruntime_vs_unfolded"):
        assert check["detections"][pair]["same"] and check["detections"][pair]["matched"] > 0
        assert max(d["max_rel"] for d in check["head_outputs"][pair].values()) <= 1e-4

    # independent of the tool: the checkpoint's own model vs the files, on a new batch and size
    state = torch.load(ckpt, weights_only=True)
    reference = model_from_checkpoint(state["description"], state, ckpt).eval()
    assert torch.load(out / "model_folded.pt", weights_only=True)["format"] == "gn_detect.folded/1"
    folded = load_folded(out / "model_folded.pt")
    # 0-255 RGB images, two of them padded (the model normalizes, then zeroes the padding)
    images = torch.randint(0, 256, (3, 3, 256, 384), generator=torch.Generator().manual_seed(5)).float()
    sizes = torch.tensor([[256, 384], [200, 384], [256, 301]])
    with torch.no_grad():
        ref, got = HeadNetwork(reference)(images, sizes), HeadNetwork(folded)(images, sizes)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(["logits", "deltas"], {"images": images.numpy(), "image_sizes": sizes.numpy()})
    for r, g, o in zip(ref, got, onnx_out):
        assert _rel(r, g) <= 1e-4 and _rel(r, torch.from_numpy(o)) <= 1e-4


def test_export_falls_back_to_synthetic_inputs_and_says_so(shapes_root, tmp_path, one_thread):
    cats = split_categories(tiny_cfg(shapes_root).data, "train")
    ckpt = make_run(tmp_path / "run", tmp_path / "no_data", categories=cats,
                    **{"data.name": "coco", "model.backbone.norm": "affine"})
    cfg = OmegaConf.merge(OmegaConf.structured(ExportConfig),
                          {"checkpoint": str(ckpt), "onnx": False, "out_dir": str(tmp_path / "out")})
    check = export_run(cfg, base_dir=tmp_path)
    assert check["inputs"]["source"] == "synthetic" and "not available" in check["inputs"]["note"]
    assert check["passed"] and check["files"]["onnx"] is None
    assert json.loads((tmp_path / "out" / "export_check.json").read_text())["inputs"]["source"] == "synthetic"


def test_export_refuses_a_missing_checkpoint_in_one_line(tmp_path):
    cmd = [sys.executable, str(REPO / "tools" / "export.py"), f"checkpoint={tmp_path / 'nope.pth'}"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=child_env(HYDRA_FULL_ERROR="0"), timeout=120,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 2, tail(proc)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gn-detect:")]
    assert len(lines) == 1 and "checkpoint not found" in lines[0] and "model_final.pth" in lines[0]
