"""Loading torchvision ResNet checkpoints (a .pth path) into our backbone, with clear errors."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# torchvision's classifier has no counterpart in a detection backbone.
_IGNORED_PREFIXES = ("fc.",)
# Prefixes seen in checkpoints saved from detection models or wrappers.
_STRIP_PREFIXES = ("module.", "backbone.body.", "backbone.")


def load_backbone_weights(backbone: nn.Module, path: str | Path, *, strict: bool = True) -> dict[str, list[str]]:
    """Loads a torchvision ResNet state dict; returns {"missing": [...], "unexpected": [...]}.

    BatchNorm entries load into any norm that accepts them (AffineChannel folds the statistics
    into scale/bias; BN takes them as they are). With ``strict`` a key mismatch raises, naming the
    keys and the likely fix; non-strict loading reports what it skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.backbone.weights: {path} does not exist; give the path of a torchvision ResNet "
            f".pth file (e.g. saved with torch.save(resnet50().state_dict(), path)) or null"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the cause attached
        raise RuntimeError(f"model.backbone.weights: cannot read {path} as a torch checkpoint: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    cleaned = {}
    for key, value in state.items():
        for p in _STRIP_PREFIXES:
            if key.startswith(p):
                key = key[len(p):]
                break
        if not key.startswith(_IGNORED_PREFIXES):
            cleaned[key] = value
    own = backbone.state_dict()
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in cleaned.items() if k in own and hasattr(v, "shape") and own[k].shape != v.shape
        and own[k].numel() > 0
    ]
    if shape_errors:
        raise RuntimeError(
            f"model.backbone.weights: {path} does not fit model.backbone.depth: "
            + "; ".join(shape_errors[:5]) + " -- check that the checkpoint's ResNet depth matches the config"
        )
    result = backbone.load_state_dict(cleaned, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"model.backbone.weights: {path} does not match the backbone. "
            f"missing keys ({len(missing)}): {missing[:6]}; unexpected keys ({len(unexpected)}): {unexpected[:6]}. "
            "A BatchNorm checkpoint loads into norm=affine or bn; for gn/gn_ws backbones set "
            "model.backbone.weights_strict=false to load the convolutions only."
        )
    return {"missing": missing, "unexpected": unexpected}
