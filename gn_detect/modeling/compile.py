"""torch.compile for RetinaNet: the backbone, FPN and head, in place, with bounded input shapes.

``compile_model(model)`` replaces the ``forward`` of ``model.backbone``, ``model.fpn`` and
``model.head`` by compiled versions (instance attributes: parameters, buffers and state-dict
keys are untouched, so checkpoints load the same with and without compile). The loss,
anchors and post-processing stay eager: they have data-dependent shapes (matching, top-k,
NMS) that would recompile or break graphs.

Shapes are static (``dynamic=False`` unless the caller passes ``dynamic=``): every distinct
input shape (and train/eval mode) compiles once, and nothing shape-derived, such as the launch
plan of the GroupNorm op ``torch.ops.gn_detect.group_norm``, ever becomes symbolic. ``gn_detect.data.collate.pad_shape`` rounds a
batch's padded (H, W) up to one of a few bucket shapes so that the number of compilations is
bounded by the number of buckets; the collate function pads to that shape.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["compile_model", "COMPILED_PARTS"]

log = logging.getLogger(__name__)

COMPILED_PARTS: tuple[str, ...] = ("backbone", "fpn", "head")


def _shapes(value: Any) -> Any:
    """Hashable summary of the tensor shapes in a (nested) argument."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, dict):
        return tuple((k, _shapes(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_shapes(v) for v in value)
    return None


def _timed_first_calls(module: nn.Module, name: str, compiled: Callable[..., Any]) -> Callable[..., Any]:
    """``compiled`` that logs how long the first call per input shape and mode took (the
    compilation plus one run; CUDA work is asynchronous, so mostly the compilation)."""
    seen: set[Any] = set()

    def forward(*args: Any, **kwargs: Any) -> Any:
        key = (module.training, _shapes(args), _shapes(kwargs))
        if key in seen:
            return compiled(*args, **kwargs)
        start = time.perf_counter()
        out = compiled(*args, **kwargs)
        seen.add(key)
        log.info("torch.compile: %s (%s, inputs %s) compiled and ran in %.1f s",
                 name, "train" if module.training else "eval", key[1], time.perf_counter() - start)
        return out

    forward.__wrapped__ = compiled  # type: ignore[attr-defined]
    return forward


def compile_model(
    model: nn.Module,
    *,
    parts: Sequence[str] = COMPILED_PARTS,
    num_buckets: int | None = None,
    **compile_kwargs: Any,
) -> nn.Module:
    """Compile ``model``'s ``parts`` in place and return ``model``.

    Args:
        parts: submodule names to compile (default backbone, fpn, head).
        num_buckets: the number of padded input shapes the run will use (``len(buckets)``);
            raises torch._dynamo's per-function recompile limit to ``2 * num_buckets + 2``
            (train and eval per bucket) so that no bucket falls back to eager.
        compile_kwargs: passed to ``torch.compile`` (e.g. ``mode="max-autotune"``);
            ``dynamic`` defaults to False (static shapes per bucket).

    Call it before wrapping the model in DDP and after any ``copy.deepcopy`` of the model (a
    copy would keep calling the original's compiled forward). Compiling twice is an error.
    """
    for name in parts:
        sub = getattr(model, name, None)
        if not isinstance(sub, nn.Module):
            raise ValueError(f"compile_model: the model has no submodule {name!r}; "
                             f"fix: pass parts= a subset of its children {[n for n, _ in model.named_children()]}")
        if "forward" in vars(sub):
            raise ValueError(f"compile_model: model.{name} is already compiled (or has a patched forward); "
                             f"fix: call compile_model once per model")
    compile_kwargs.setdefault("dynamic", False)
    for name in parts:
        sub = getattr(model, name)
        sub.forward = _timed_first_calls(sub, name, torch.compile(sub.forward, **compile_kwargs))
    if num_buckets:
        limit = 2 * int(num_buckets) + 2
        if torch._dynamo.config.recompile_limit < limit:
            torch._dynamo.config.recompile_limit = limit
    log.info("torch.compile: %s will compile on their first call", ", ".join(parts))
    return model
