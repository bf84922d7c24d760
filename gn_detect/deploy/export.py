"""tools/export.py: a trained checkpoint -> ``<run>/export/`` with the folded model
(``model_folded.pt``), the ONNX network up to the head outputs (``model.onnx``) and
``export_check.json``, the agreement of PyTorch unfolded, PyTorch folded (as saved and reloaded)
and onnxruntime on a few validation images."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from gn_detect.config import one_line
from gn_detect.data import build_dataset, collate, data_config
from gn_detect.runs import run_subfolder
from gn_detect.runs.layout import EXPORT
from gn_detect.modeling import size_divisibility
from gn_detect.io import write_json_atomic

from .export_check import match_detections, tensor_diff
from .fold import fold_model
from .network import HeadNetwork, detect_from_head
from .onnx_export import export_onnx, ort_session, require_onnx, run_ort
from .saved import load_folded, load_trained, save_folded

__all__ = ["REL_TOL", "BOX_TOL_PX", "export_run", "check_inputs", "compare_runs"]

log = logging.getLogger(__name__)

REL_TOL = 1e-4     # head outputs: max|a - b| / max|a|
BOX_TOL_PX = 1.0   # detections: max coordinate difference, input pixels


def _synthetic(data_cfg: DictConfig, num: int, why: str, divisor: int) -> tuple[torch.Tensor, list[tuple[int, int]], dict]:
    """Uniform random 0-255 RGB images at the test size of a 4:3 image."""
    short = data_cfg.min_size_test
    long = min(round(short * 4 / 3), data_cfg.max_size) if data_cfg.max_size > 0 else round(short * 4 / 3)
    g = torch.Generator().manual_seed(0)
    items = [(torch.randint(0, 256, (3, short, long), generator=g, dtype=torch.uint8), {}) for _ in range(num)]
    images, _, sizes = collate(items, divisor)
    return images, sizes, {"source": "synthetic", "note": f"{why}: compared on {num} uniform random images of "
                           f"{short}x{long} (seed 0) instead", "images": []}


def check_inputs(run_config: dict[str, Any], num: int, base: Path) -> tuple[torch.Tensor, list[tuple[int, int]], dict]:
    """``num`` images of the run's validation split, spread evenly, preprocessed as evaluation
    does and padded into one batch; synthetic images when the data cannot be read (said so)."""
    data_cfg, divisor = data_config(run_config["data"]), size_divisibility(run_config["model"])
    try:
        dataset = build_dataset(data_cfg, "val", base_dir=base)
    except (OSError, ValueError) as e:  # missing files, DataError, an unset data.root
        return _synthetic(data_cfg, num, f"the run's validation data is not available ({one_line(e)})", divisor)
    count = min(num, len(dataset))
    picks = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)})
    items = [dataset[i] for i in picks]
    images, targets, sizes = collate(items, divisor)
    listed = [{"image_id": t["image_id"], "file_name": dataset.image_info(i)["file_name"],
               "orig_size": list(t["orig_size"]), "size": list(t["size"])} for i, t in zip(picks, targets)]
    return images, sizes, {"source": f"{dataset.name} ({dataset.image_dir})", "images": listed}


def _head_diffs(outputs: dict[str, tuple[torch.Tensor, torch.Tensor]], pairs: list[tuple[str, str]]) -> dict:
    out = {}
    for other, ref in pairs:
        if other in outputs and ref in outputs:
            out[f"{other}_vs_{ref}"] = {name: tensor_diff(outputs[ref][i], outputs[other][i])
                                        for i, name in enumerate(("logits", "deltas"))}
    return out


def compare_runs(model: nn.Module, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 padded_hw: tuple[int, int], sizes: list[tuple[int, int]]) -> dict[str, Any]:
    """Head-output differences and detection agreement of every run against the unfolded one
    (and onnxruntime against folded; the reloaded file against folded), with a pass flag."""
    pairs = [("folded", "unfolded"), ("reloaded", "folded"), ("onnxruntime", "unfolded"), ("onnxruntime", "folded")]
    heads = _head_diffs(outputs, pairs)
    dets = {name: detect_from_head(model, *outputs[name], padded_hw, sizes) for name in outputs}
    test = model.test_cfg
    matches = {f"{name}_vs_unfolded": match_detections(
        dets["unfolded"], dets[name], score_thresh=test.get("score_thresh", 0.05),
        detections_per_image=test.get("detections_per_image", 100), box_tol=BOX_TOL_PX)
        for name in outputs if name != "unfolded"}
    ok_heads = all(d["max_rel"] <= REL_TOL for pair in heads.values() for d in pair.values())
    return {"head_outputs": heads, "detections": matches,
            "passed": ok_heads and all(m["same"] for m in matches.values())}


def _out_dir(cfg: DictConfig, base: Path, ckpt_path: Path) -> Path:
    if not cfg.out_dir:
        return run_subfolder(ckpt_path, EXPORT)
    out = Path(cfg.out_dir).expanduser()
    return out if out.is_absolute() else base / out


@torch.no_grad()
def export_run(cfg: DictConfig, base_dir: str | Path | None = None) -> dict[str, Any]:
    """tools/export.py (``cfg`` on ExportConfig): fold, save, reload, export ONNX, compare, and
    write ``export_check.json``; returns it."""
    base = Path(base_dir or ".")
    if cfg.onnx:
        require_onnx()
    model, description, ckpt_path, state = load_trained(cfg, base)
    out_dir = _out_dir(cfg, base, ckpt_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    folded, report = fold_model(model, cfg.per_level)
    source = {"checkpoint": str(ckpt_path), "iteration": state.get("iteration")}
    folded_path = save_folded(out_dir / "model_folded.pt", folded, report, description, source)
    images, sizes, inputs = check_inputs(description["config"], cfg.num_check_images, base)
    runs = {"unfolded": model, "folded": folded, "reloaded": load_folded(folded_path)}
    image_sizes = torch.tensor(sizes, dtype=torch.int64)
    outputs = {name: HeadNetwork(m)(images, image_sizes) for name, m in runs.items()}
    onnx_info = None
    if cfg.onnx:
        onnx_info = export_onnx(folded, out_dir / "model.onnx", opset=cfg.opset)
        outputs["onnxruntime"] = run_ort(ort_session(out_dir / "model.onnx"), images, image_sizes)
    check = {"checkpoint": str(ckpt_path), "out_dir": str(out_dir), "files": {"folded": folded_path.name, "onnx": onnx_info},
             "inputs": {**inputs, "padded_size": list(images.shape[-2:]), "image_sizes": [list(s) for s in sizes]},
             "tolerance": {"head_max_rel": REL_TOL, "box_px": BOX_TOL_PX,
                           "definitions": "max_rel = max|a - b| / max|a| per output; boxes in input pixels"},
             **compare_runs(model, outputs, tuple(images.shape[-2:]), sizes),
             "fold": {k: report.to_dict()[k] for k in ("per_level", "before", "after", "duplicated")}
             | {"folded": len(report.folded), "standardized": len(report.standardized),
                "kept": [k["name"] for k in report.kept]}}
    write_json_atomic(out_dir / "export_check.json", check)
    log.info("export written to %s (check %s)", out_dir, "passed" if check["passed"] else "FAILED")
    return check
