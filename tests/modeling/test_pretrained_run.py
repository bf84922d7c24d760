"""A run started from a Detectron (Caffe2) MSRA R-50 file: tools/train.py records the input
conventions the file needs (BGR, Detectron's pixel means, std 1, stride in the 1x1), re-running
the same command is not refused, and evaluate / export / predict feed images exactly as training
did: predict's detections equal detections computed here from config.yaml's recorded values and
an image normalized by hand (BGR, minus the Caffe2 means, zero padding).

R-50's block counts and names with small stage widths (``model.backbone.widths``), 96 px shapes:
the file format and the conventions are R-50's, the cost is the tiny model's.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf
from PIL import Image

from gn_detect.config.schema import EvaluateConfig
from gn_detect.data import DetectionTransform, boxes_to_original
from gn_detect.deploy.export import export_run
from gn_detect.deploy.network import detect_from_head
from gn_detect.deploy.predict import predict_run
from gn_detect.deploy.options import ExportConfig, PredictConfig
from gn_detect.engine.evaluate import evaluate_checkpoint
from gn_detect.modeling import build_model
from tests.engine._train_utils import REPO, child_env, one_thread, records, shapes_root, tail, tiny_overrides  # noqa: F401
from tests.modeling.test_weight_sources import C2_MEAN, caffe2_blobs, random_layers, write_pickle

pytestmark = pytest.mark.slow
WIDTHS = [8, 8, 16, 16]


def _train(tmp_path: Path, data_root: Path, weights: Path, run_dir: Path) -> subprocess.CompletedProcess:
    overrides = tiny_overrides(
        data_root, **{"model.backbone.widths": f"[{','.join(map(str, WIDTHS))}]",
                                       "model.fpn.out_channels": 16, "model.head.num_convs": 1,
                                       "model.head.prior_prob": 0.5, "solver.max_iter": 2,
                                       "solver.base_lr": 0.001})
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "model=retinanet_r50_fpn", "norm=affine",
           f"model.backbone.weights={weights}", *[o for o in overrides if not o.startswith("model=")],
           f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=str(tmp_path), env=child_env(), timeout=600,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _reference(run_dir: Path, image_path: Path, num_classes: int) -> dict[str, torch.Tensor]:
    """The trained model on one image normalized here from Detectron's conventions."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    model_cfg = cfg["model"] | {"backbone": cfg["model"]["backbone"] | {"weights": None}}
    model = build_model(model_cfg, num_classes).eval()
    model.load_state_dict(torch.load(run_dir / "checkpoints" / "model_final.pth", weights_only=True)["model"])
    model.test_cfg["score_thresh"] = 0.0
    with Image.open(image_path) as im:
        pixels = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    data = cfg["data"]
    resized, _, info = DetectionTransform(data["min_size_test"], data["max_size"])(pixels, torch.zeros(0, 4))
    x = resized.double().flip(0)[None]  # RGB -> BGR
    x = (x - torch.tensor(C2_MEAN, dtype=torch.float64).view(1, 3, 1, 1)).float()  # std 1
    h, w = x.shape[-2:]
    x = F.pad(x, (0, -w % 128, 0, -h % 128))  # zeros: 0 in normalized space
    with torch.no_grad():
        logits, deltas = model.head(model.fpn(model.backbone(x)))
        det = detect_from_head(model, logits, deltas, tuple(x.shape[-2:]), [info.size])[0]
    det["boxes"] = boxes_to_original(det["boxes"], info.size, tuple(pixels.shape[-2:]))
    return det


def test_detectron_r50_run_trains_evaluates_exports_predicts_as_trained(shapes_root, tmp_path, one_thread):
    layers = random_layers(widths=tuple(WIDTHS))
    layers[(2, 0, "stem")]["w"] /= 60  # like trained MSRA weights: a conv1 for std-1 (0-255) input
    for (_, _, layer), p in layers.items():
        if layer == "c":
            p["scale"] *= 0.2  # residual branches that do not blow the sum up over 16 blocks
    weights = write_pickle({"blobs": caffe2_blobs(layers, "bn")}, tmp_path / "R-50.pkl", "py2")
    run_dir = tmp_path / "run"
    proc = _train(tmp_path, shapes_root, weights, run_dir)
    assert proc.returncode == 0, tail(proc)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"]["input"] == {"format": "BGR", "pixel_mean": C2_MEAN, "pixel_std": [1.0, 1.0, 1.0]}
    assert cfg["model"]["backbone"]["stride_in_1x1"] is True
    state = torch.load(run_dir / "checkpoints" / "model_final.pth", weights_only=True)
    assert state["description"]["config"]["model"]["input"]["format"] == "BGR"

    again = _train(tmp_path, shapes_root, weights, run_dir)  # the same command: nulls resolve to what was recorded
    assert again.returncode == 0, tail(again)

    ckpt = run_dir / "checkpoints" / "model_final.pth"
    metrics = evaluate_checkpoint(OmegaConf.merge(OmegaConf.structured(EvaluateConfig), {
        "checkpoint": str(ckpt), "out_dir": str(tmp_path / "eval"), "device": "cpu"}), base_dir=tmp_path)
    final = records(run_dir, "final")[-1]
    assert metrics["AP"] == pytest.approx(final["AP"], abs=1e-9)
    assert all(r["loss"] < 100 for r in records(run_dir, "train"))  # a finite model with detections

    check = export_run(OmegaConf.merge(OmegaConf.structured(ExportConfig), {"checkpoint": str(ckpt)}),
                       base_dir=tmp_path)
    assert check["passed"], check

    images = tmp_path / "images"
    images.mkdir()
    src = sorted((shapes_root / "val").glob("*.jpg"))[0]
    (images / src.name).write_bytes(src.read_bytes())
    predict_run(OmegaConf.merge(OmegaConf.structured(PredictConfig), {
        "checkpoint": str(ckpt), "input": str(images), "output": str(tmp_path / "pred"), "score_thresh": 0.0,
        "draw": False}), base_dir=tmp_path)
    got = sorted(json.loads((tmp_path / "pred" / "detections.json").read_text()), key=lambda r: -r["score"])
    num_classes = len(state["description"]["model"]["categories"])
    ref = _reference(run_dir, src, num_classes)
    order = ref["scores"].argsort(descending=True)[:20]
    assert len(got) >= 20
    cats = [c["id"] for c in state["description"]["model"]["categories"]]
    for r, i in zip(got[:20], order.tolist()):
        x1, y1, x2, y2 = ref["boxes"][i].tolist()
        assert r["category_id"] == cats[int(ref["labels"][i])]
        assert abs(r["score"] - float(ref["scores"][i])) < 1e-4
        assert max(abs(a - b) for a, b in zip(r["bbox"], [x1, y1, x2 - x1, y2 - y1])) < 0.01, (r, (x1, y1, x2, y2))
