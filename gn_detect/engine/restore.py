"""The one way from a checkpoint file to a model: read it (weights_only), check that this
version builds the model its description names, build it (optionally transformed, e.g. folded)
and load its weights strictly (all finite). Used by tools/evaluate.py, tools/export.py and tools/predict.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
import torch
from torch import nn

from gn_detect.engine.checkpoint import CheckpointError, load_checkpoint
from gn_detect.engine.description import config_differences, model_signature, package_version
from gn_detect.modeling import build_model
from gn_detect.runs.layout import final_checkpoint_example

__all__ = ["user_file", "read_described_checkpoint", "build_described", "model_from_checkpoint"]


def user_file(value: str, base: Path, key: str, fix: str) -> Path:
    """The file a ``key=value`` setting names (relative to ``base``); FileNotFoundError naming
    the key, the path and ``fix`` when it is not a file."""
    path = Path(value)
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise FileNotFoundError(f"{key} not found: {path}; {fix}")
    return path


def _plain_weights(state: Any) -> str | None:
    """What a file of bare weights is ("a plain weights file: 102 tensors, e.g. conv1.weight"), None
    for anything else (a gn-detect checkpoint included)."""
    inner = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else None
    if not isinstance(inner, dict) or not inner or {"description", "iteration", "optimizer"} & state.keys():
        return None
    tensors = [k for k, v in inner.items() if isinstance(v, torch.Tensor)]
    if len(tensors) < len(inner) / 2:
        return None
    return (f"a plain weights file ({len(tensors)} tensors, e.g. {', '.join(map(str, tensors[:2]))}; "
            "such as ImageNet backbone weights)")


def read_described_checkpoint(cfg: DictConfig, base: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The checkpoint's path, content (read with weights_only) and description."""
    ckpt_path = user_file(cfg.checkpoint, base, "checkpoint",
                          f"give checkpoint={final_checkpoint_example('<run folder>')}")
    state = load_checkpoint(ckpt_path)
    description = state.get("description")
    plain = _plain_weights(state)
    if plain:
        raise CheckpointError(f"checkpoint {ckpt_path} is {plain}, not a gn-detect checkpoint (it holds no model "
                              "description); give checkpoint=<run folder>/checkpoints/model_final.pth, or train from "
                              "such a file with model.backbone.weights=PATH (docs/weights.md)")
    if not isinstance(description, dict) or not {"config", "model"} <= description.keys():
        raise CheckpointError(
            f"checkpoint {ckpt_path} has no model description (written before gn-detect checkpoints carried one), "
            "so the model in it is unknown; evaluate it with the gn-detect version that wrote it, or retrain")
    return ckpt_path, state, description


def build_described(description: dict[str, Any], weights: dict[str, Any], path: Path, *,
                    transform: Callable[[nn.Module], nn.Module] | None = None,
                    fix: str = "evaluate it with gn-detect {version}", redo: str = "") -> nn.Module:
    """The model ``description`` names, built from its own config (the run's initial-weights
    file is not needed), passed through ``transform`` and loaded with ``weights`` strictly.
    ``fix`` (with ``{version}``, the writer's version) ends the refusal when this version builds
    another model than the one that wrote the file; ``redo`` ends the refusal of weights that do
    not fit (a damaged or edited file)."""
    model_cfg = OmegaConf.create(description["config"]["model"])
    OmegaConf.update(model_cfg, "backbone.weights", None)
    OmegaConf.update(model_cfg, "weights", None)
    categories = description["model"]["categories"]
    written_by = description.get("version", "unknown")
    diffs = config_differences(description["model"], model_signature(model_cfg, categories))
    if diffs and written_by == package_version():  # same code, another answer: not a version question
        raise CheckpointError(
            f"{path}: its description does not match the model its own config builds ({', '.join(diffs)} "
            f"differ): the file was edited or damaged{'; ' + redo if redo else ''}")
    if diffs:
        raise CheckpointError(
            f"{path}: gn-detect {package_version()} builds another model from its config than "
            f"gn-detect {written_by} did ({', '.join(diffs)} differ); {fix.format(version=written_by)}")
    model = build_model(model_cfg, len(categories))
    if transform is not None:
        model = transform(model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        detail = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())[:300]
        raise CheckpointError(f"{path}: the weights do not fit the model its description names ({detail}); "
                              f"the file is damaged or was edited{'; ' + redo if redo else ''}") from e
    bad = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # every output would be NaN: 0 detections and a silent AP of 0
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or inf (e.g. {', '.join(bad[:3])}): the "
                              f"run diverged or the file was edited; use an earlier checkpoint of the run")
    return model


def model_from_checkpoint(description: dict[str, Any], state: dict[str, Any], ckpt_path: Path) -> nn.Module:
    """The training checkpoint's model (``state`` its content) with its weights."""
    return build_described(description, state["model"], ckpt_path)
