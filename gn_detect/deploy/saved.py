"""Models from files: a trained checkpoint (through the engine's loader) and the folded model
file ``model_folded.pt`` (written and rebuilt here), both read with ``weights_only=True``.

``model_folded.pt`` is one plain-data dict (tensors, dicts, lists, str, int, float, bool, None)::

    {"format": "gn_detect.folded/1",
     "description": the training checkpoint's description (resolved config, model signature
                    with the categories, version; gn_detect/engine/description.py),
     "fold": {"per_level": "duplicate" | "keep"},
     "report": FoldReport.to_dict() (what was folded, what remains, counts),
     "model": the folded model's state dict,
     "source": {"checkpoint": str, "iteration": int | null}}

:func:`load_folded` rebuilds the architecture from that description: ``build_model`` with the
config's model section, then :func:`fold_model` (its decisions depend only on the architecture),
then the saved state dict, strictly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from gn_detect.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gn_detect.engine.restore import build_described, model_from_checkpoint, read_described_checkpoint

from .fold import FoldReport, fold_model
from gn_detect.runs.layout import final_checkpoint_example

__all__ = ["FOLDED_FORMAT", "FoldedModel", "is_folded", "load_folded", "load_for_inference",
           "load_trained", "read_folded", "save_folded"]

FOLDED_FORMAT = "gn_detect.folded/1"


class FoldedModel:
    """A rebuilt folded model with what its file says about it."""

    def __init__(self, model: nn.Module, description: dict[str, Any], fold: dict[str, Any],
                 report: dict[str, Any], source: dict[str, Any]) -> None:
        self.model, self.description, self.fold, self.report, self.source = model, description, fold, report, source

    @property
    def categories(self) -> list[dict[str, Any]]:
        return list(self.description["model"]["categories"])


def is_folded(state: dict[str, Any]) -> bool:
    return state.get("format") == FOLDED_FORMAT


def load_trained(cfg: DictConfig, base: Path) -> tuple[nn.Module, dict[str, Any], Path, dict[str, Any]]:
    """``cfg.checkpoint`` (a training checkpoint) -> (eval model, description, path, file content),
    through gn_detect/engine/evaluate.py's loader (description checked, weights strict)."""
    ckpt_path, state, description = read_described_checkpoint(cfg, base)
    if is_folded(state):
        raise CheckpointError(f"checkpoint {ckpt_path} is already a folded model (model_folded.pt); give the "
                              f"training checkpoint, {final_checkpoint_example('<run>')}")
    return model_from_checkpoint(description, state, ckpt_path).eval(), description, ckpt_path, state


def save_folded(path: str | os.PathLike, folded: nn.Module, report: FoldReport, description: dict[str, Any],
                source: dict[str, Any]) -> Path:
    """Write ``model_folded.pt`` (module docstring) atomically."""
    state = {"format": FOLDED_FORMAT, "description": description, "fold": {"per_level": report.per_level},
             "report": report.to_dict(), "model": folded.state_dict(), "source": dict(source)}
    return save_checkpoint(path, state)


def _rebuild(state: dict[str, Any], path: Path) -> nn.Module:
    description, fold = state.get("description"), state.get("fold")
    if not isinstance(description, dict) or not isinstance(fold, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} says it is a folded model but lacks its description, fold settings or "
                              "weights; export it again with tools/export.py")
    per_level = fold.get("per_level", "duplicate")
    folded = build_described(description, state["model"], path,
                             transform=lambda model: fold_model(model, per_level)[0],
                             fix="export it again with this version", redo="export it again")
    return folded.requires_grad_(False).eval()


def read_folded(path: str | os.PathLike, state: dict[str, Any] | None = None) -> FoldedModel:
    """The folded model in ``path`` (``state``: the file's content, when already loaded)."""
    path = Path(path)
    state = load_checkpoint(path) if state is None else state
    if not is_folded(state):
        raise CheckpointError(f"{path} is not a folded model (format {state.get('format')!r}); write one with "
                              f"tools/export.py checkpoint={final_checkpoint_example('<run>')}")
    return FoldedModel(_rebuild(state, path), state["description"], state["fold"], state.get("report", {}),
                       state.get("source", {}))


def load_folded(path: str | os.PathLike) -> nn.Module:
    """The folded eval-mode model saved in ``path`` by tools/export.py (``weights_only=True``)."""
    return read_folded(path).model


def load_for_inference(cfg: DictConfig, base: Path, per_level: str = "duplicate") -> tuple[FoldedModel, Path]:
    """``cfg.checkpoint`` as a folded model: a ``model_folded.pt`` as saved, a training
    checkpoint folded now. Returns it with the checkpoint's path."""
    ckpt_path, state, description = read_described_checkpoint(cfg, base)
    if is_folded(state):
        return read_folded(ckpt_path, state), ckpt_path
    model = model_from_checkpoint(description, state, ckpt_path).eval()
    folded, report = fold_model(model, per_level)
    source = {"checkpoint": str(ckpt_path), "iteration": state.get("iteration")}
    return FoldedModel(folded, description, {"per_level": per_level}, report.to_dict(), source), ckpt_path
