"""tools/convert_weights.py: any supported backbone file -> ``{"state_dict", "conventions"}`` in
torchvision's ResNet layout, loadable with ``torch.load(weights_only=True)`` and by
``model.backbone.weights``; any whole-detector file ``model.weights`` reads -> its gn-detect names,
settings and class rows (``detector_files.converted_record``), loadable by ``model.weights``."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from gn_detect.norms import norm_spec

from .conventions import file_conventions, norm_for
from .detector_files import NotADetectorError, converted_record, read_detector
from .sources import SourceWeights, WeightsError, read_weights

__all__ = ["NORM_CHOICES", "convert_weights", "convert_detector"]

FOLD_EPS = 1e-5  # BN statistics folded into scale/shift (torchvision's and Detectron's BN eps)
# --norm choices: one norm per kind of pretrained weights the table knows (affine, bn, gn)
NORM_CHOICES: tuple[str, ...] = tuple(n for n in (norm_for(k) for k in ("scale_shift", "batch_stats", "group")) if n)


def _fold_stats(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """BN (weight, bias, running_mean, running_var) -> scale/shift weight/bias, in float64."""
    out, folded = dict(state), []
    for key in [k for k in state if k.endswith(".running_var")]:
        p = key[: -len("running_var")]
        mean, var = out.pop(p + "running_mean").double(), out.pop(key).double()
        if bool((var < 0).any()):  # a variance is never negative: sqrt would give NaN weights
            raise WeightsError(f"{path}: {key} holds negative variances (min {var.min().item():.3g})",
                               "the file is damaged or not BN statistics; use another file")
        dtype = state[p + "weight"].dtype
        scale = state[p + "weight"].double() / torch.sqrt(var + FOLD_EPS)
        out[p + "weight"] = scale.to(dtype)
        out[p + "bias"] = (state[p + "bias"].double() - mean * scale).to(dtype)
        folded.append(p.rstrip("."))
    return out, folded


def _decide(sw: SourceWeights, norm: str) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """(what the output holds, its state dict, the norms folded) for ``--norm``."""
    if norm == "auto":
        if sw.holds is None:
            raise WeightsError(f"{sw.path}: a {sw.describe()}: it cannot tell an affine (fused BN) from a GN",
                               f"give --norm {' or --norm '.join(norm_for(k) for k in ('scale_shift', 'group'))}"
                               " (or --source timm for a timm GN file)")
        return sw.holds, dict(sw.state_dict), []
    want = norm_spec(norm).weights
    if sw.holds is None and want in ("scale_shift", "group"):
        return want, dict(sw.state_dict), []
    if sw.holds == want:
        return want, dict(sw.state_dict), []
    if sw.holds == "batch_stats" and want == "scale_shift":
        state, folded = _fold_stats(sw.state_dict, sw.path)
        return want, state, folded
    raise WeightsError(f"{sw.path}: a {sw.describe()} cannot become --norm {norm}",
                       f"use --norm {norm_for(sw.holds) or 'auto'}")


def _save(obj: dict[str, Any], dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.save(obj, dst)
    except RuntimeError as e:  # torch's zip writer: "File ... cannot be opened", "unexpected pos"
        raise OSError(f"could not write {dst}: {str(e).splitlines()[0]}") from e


def _not_the_input(src: str | Path, dst: str | Path) -> None:
    if Path(dst).resolve() == Path(src).resolve():
        raise WeightsError(f"{dst} is the input file: converting would overwrite it", "give another output path")


def convert_detector(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write a whole-detector file ``src`` as ``dst`` in gn-detect's names (NotADetectorError when
    it holds none); returns {"source", "mapped", "ignored", "conventions"}."""
    _not_the_input(src, dst)
    md = read_detector(src)
    _save(converted_record(md), Path(dst))
    return {"source": md.source, "mapped": md.mapped, "ignored": md.ignored, "conventions": md.conventions}


def convert_weights(src: str | Path, dst: str | Path, *, source: str = "auto", norm: str = "auto",
                    num_groups: int = 32) -> dict[str, Any]:
    """Write ``dst``; returns {"mapped", "ignored", "converted", "conventions"} (and "source" for a
    whole detector, which ``source="auto"`` tries first). A failed write is an OSError (torch's zip
    writer raises RuntimeError)."""
    _not_the_input(src, dst)
    if source == "auto":
        try:
            return {**convert_detector(src, dst), "converted": []}
        except NotADetectorError:
            pass
    sw = read_weights(src, source)
    holds, state, folded = _decide(sw, norm)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"{sw.path}: {len(bad)} tensor(s) hold NaN or inf (e.g. {', '.join(bad[:3])})",
                           "the file is damaged; use another file")
    conventions = file_conventions(dataclasses.replace(sw, holds=holds), holds, num_groups)
    _save({"state_dict": {k: v.contiguous() for k, v in state.items()}, "conventions": conventions}, Path(dst))
    return {"mapped": sw.mapped, "ignored": sw.ignored, "converted": folded, "conventions": conventions}
