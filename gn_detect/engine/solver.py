"""Optimizer, learning-rate schedule, LR scaling and gradient clipping.

The schedule is *per iteration* (Detectron convention): the trainer calls
``scheduler.step()`` once after every ``optimizer.step()``, so during iteration ``i``
(0-based) the learning rate is ``base_lr * lr_factor_at(i, ...)``.
"""

from __future__ import annotations

import bisect
import inspect
import logging
import math
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from gn_detect.layers import NORM_TYPES

logger = logging.getLogger(__name__)

__all__ = [
    "build_optimizer",
    "build_lr_scheduler",
    "lr_factor_at",
    "scale_lr",
    "clip_gradients",
]


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    weight_decay_norm: float = 0.0,
    weight_decay_bias: float | None = None,
    norm_types: tuple[type, ...] | None = None,
) -> torch.optim.SGD:
    """SGD with separate weight decay for norm parameters (and optionally biases).

    Groups (only non-empty ones are created, each with a ``"name"`` key for logging):
    ``"norm"`` - every parameter of a module that is an instance of ``norm_types``
    (its bias included) gets ``weight_decay_norm``; ``"bias"`` - other biases, only when
    ``weight_decay_bias`` is given (else they stay with the rest, like Detectron2);
    ``"default"`` - everything else, ``weight_decay``.

    ``norm_types=None`` means ``gn_detect.layers.NORM_TYPES`` (BN variants, GroupNorm,
    LayerNorm, InstanceNorm, AffineChannel, ProxyNormAct); pass ``()`` to treat no module as
    a norm. Frozen parameters (``requires_grad=False``) are left out, and a parameter shared
    by several modules appears once (the first module that owns it decides its group).
    """
    if norm_types is None:
        norm_types = NORM_TYPES
    groups: dict[str, list[nn.Parameter]] = {"default": [], "norm": [], "bias": []}
    seen: set[int] = set()
    # named_modules() already skips repeated modules; `seen` also catches a Parameter
    # object registered on two different modules (tied weights).
    for module in model.modules():
        is_norm = bool(norm_types) and isinstance(module, norm_types)
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if is_norm:
                groups["norm"].append(param)
            elif weight_decay_bias is not None and pname == "bias":
                groups["bias"].append(param)
            else:
                groups["default"].append(param)

    decay = {"default": weight_decay, "norm": weight_decay_norm, "bias": weight_decay_bias}
    param_groups = [
        {"name": name, "params": params, "weight_decay": decay[name]}
        for name, params in groups.items()
        if params
    ]
    if not param_groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def lr_factor_at(
    it: int,
    *,
    max_iter: int,
    warmup_iters: int,
    warmup_factor: float = 0.001,
    schedule: Literal["step", "cosine"] = "step",
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr_factor: float = 0.0,
) -> float:
    """Multiplier of the base LR at iteration ``it`` (0-based).

    ``main(it) * warmup(it)`` (Detectron2's composition, so there is no jump at the end
    of warm-up): ``warmup`` ramps linearly from ``warmup_factor`` at 0 to 1 at
    ``warmup_iters``; ``main`` is ``gamma ** (number of steps <= it)`` for "step", and
    ``min + (1 - min) * (1 + cos(pi * it / max_iter)) / 2`` for "cosine" (clamped at
    ``max_iter``). ``min_lr_factor`` applies to cosine only.
    """
    if schedule == "step":
        main = gamma ** bisect.bisect_right(list(steps), it)
    elif schedule == "cosine":
        t = min(it, max_iter) / max_iter
        main = min_lr_factor + (1.0 - min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        raise ValueError(f"unknown LR schedule {schedule!r}; expected 'step' or 'cosine'")
    if it < warmup_iters:
        alpha = it / warmup_iters
        main *= warmup_factor * (1.0 - alpha) + alpha
    return main


def build_lr_scheduler(optimizer: torch.optim.Optimizer, **schedule: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR following :func:`lr_factor_at`; ``schedule`` holds its keyword
    arguments (``max_iter`` and ``warmup_iters`` required), checked here once.

    Resume: build it again with the same arguments and ``load_state_dict``; the state holds
    ``last_epoch`` (= iterations stepped) and ``base_lrs``. The factor is a ``partial`` of a
    module-level function, so ``state_dict()`` does not overwrite a changed schedule on load.
    """
    bound = inspect.signature(lr_factor_at).bind(0, **schedule)
    bound.apply_defaults()
    a = dict(bound.arguments)
    del a["it"]
    max_iter, warmup_iters, warmup_factor = a["max_iter"], a["warmup_iters"], a["warmup_factor"]
    if max_iter <= 0:
        raise ValueError(f"max_iter must be > 0, got {max_iter}")
    if warmup_iters < 0 or not 0.0 < warmup_factor <= 1.0:
        raise ValueError(f"bad warm-up: solver.warmup_iters={warmup_iters}, solver.warmup_factor={warmup_factor}")
    if a["schedule"] not in ("step", "cosine"):
        raise ValueError(f"unknown LR schedule {a['schedule']!r}; expected 'step' or 'cosine'")
    steps = a["steps"] = tuple(int(s) for s in a["steps"])
    if a["schedule"] == "step" and any(b <= x for x, b in zip(steps, steps[1:])):
        raise ValueError(f"LR steps must be strictly increasing, got {list(steps)}")
    if a["schedule"] == "step" and any(s >= max_iter for s in steps):
        logger.warning("LR steps %s include iterations >= max_iter=%d; they never apply", list(steps), max_iter)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor_at, **a))


def scale_lr(base_lr: float, total_batch: int, reference_batch: int) -> float:
    """Linear scaling rule (Goyal et al.): ``base_lr * total_batch / reference_batch``."""
    if total_batch <= 0 or reference_batch <= 0:
        raise ValueError(f"batch sizes must be > 0, got {total_batch} and {reference_batch}")
    return base_lr * total_batch / reference_batch


def clip_gradients(
    model_or_params: nn.Module | Iterable[torch.Tensor], max_norm: float | None
) -> float | None:
    """Clip the global L2 gradient norm to ``max_norm``; return the norm *before* clipping.

    ``max_norm`` None or <= 0 disables clipping and returns None (no extra reduction cost).
    A non-finite norm is returned, not raised, so the trainer can decide what to do with
    a diverged step (log it, skip it, stop the run).
    """
    if max_norm is None or max_norm <= 0:
        return None
    params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False)
    return float(total)
