"""Start-up checks of a composed config: choices, ranges and cross-field rules, each failing as
one ConfigError naming the key and the fix, before any data is read. Also derives the values
those rules define (the batch notions, LR steps, per-component norm options)."""
from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gn_detect.norms import component_norm_opts, norm_names, norm_spec, resolve_norm

from .errors import ConfigError
from .schema import CHOICES

PARTS = ("backbone", "fpn", "head")

# (key, smallest allowed value): integers and floats that must be at least this
_MINIMA: tuple[tuple[str, float], ...] = (
    ("data.ims_per_device", 1), ("data.num_workers", 0), ("data.min_size_test", 1), ("data.max_size", 1),
    ("solver.max_iter", 1), ("solver.warmup_iters", 0), ("solver.reference_batch", 1),
    ("solver.max_skipped_steps", 0),
    ("solver.momentum", 0), ("solver.weight_decay", 0), ("solver.weight_decay_norm", 0),
    ("solver.precise_bn.num_iter", 1), ("eval.period", 0), ("eval.ims_per_device", 1),
    ("eval.max_dets", 1), ("eval.num_vis_images", 0), ("checkpoint.period", 0), ("log.period", 1),
    ("model.norm_opts.num_groups", 1), ("model.head.num_convs", 0), ("model.fpn.out_channels", 1),
    ("seed", 0), ("eval.tune_seed", 0), ("data.synthetic.seed", 0),  # NumPy's seeds are non-negative
)
# (key, low, high): floats that must lie in the closed interval
_INTERVALS: tuple[tuple[str, float, float], ...] = (("data.flip_prob", 0.0, 1.0),)


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _check_choices(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value is not None and str(value) not in allowed:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(allowed)}", f"e.g. {key}={allowed[0]}")
    for part in PARTS:
        key = f"model.{part}.norm"
        try:
            norm_spec(_get(cfg, key))
        except ValueError:
            raise ConfigError(key, f"unknown norm {_get(cfg, key)!r}", f"use one of {', '.join(norm_names())}") from None
        impl = _get(cfg, f"model.{part}.norm_opts.impl")
        if impl is not None and impl not in CHOICES["model.norm_opts.impl"]:
            raise ConfigError(f"model.{part}.norm_opts.impl", f"{impl!r} is not one of auto, torch, triton")


def _frozen(spec: Any) -> bool:
    """A norm with fixed statistics (a per-channel affine: AffineChannel, torchvision's FrozenBN),
    where eps 0 is meaningful (torchvision's COCO detectors fold with 0)."""
    return spec.foldable and not spec.normalizes


def _check_ranges(cfg: DictConfig) -> None:
    for key, low in _MINIMA:
        value = _get(cfg, key)
        if value is not None and not (value >= low and math.isfinite(value)):  # NaN fails too
            raise ConfigError(key, f"{value} is below the smallest allowed value {low}" if value < low
                              else f"{value} is not a finite number")
    for key, low, high in _INTERVALS:
        value = _get(cfg, key)
        if value is not None and not low <= value <= high:
            raise ConfigError(key, f"{value} is outside [{low}, {high}]")
    if not (cfg.solver.base_lr > 0 and math.isfinite(cfg.solver.base_lr)):
        raise ConfigError("solver.base_lr", f"{cfg.solver.base_lr} must be a positive finite number")
    for part in PARTS:  # eps 0 only where nothing is normalized (frozen statistics: affine, torchvision's FrozenBN)
        own = _get(cfg, f"model.{part}.norm_opts.eps")
        key = f"model.{part}.norm_opts.eps" if own is not None else "model.norm_opts.eps"
        eps, low = _get(cfg, key), 0.0 if _frozen(norm_spec(cfg.model[part].norm)) else None
        if eps is not None and not (math.isfinite(eps) and (eps > 0 or (low is not None and eps >= low))):
            raise ConfigError(key, f"{eps} must be a positive finite number"
                              + ("" if low is None else " (0 is allowed only with a frozen norm such as affine)"),
                              "e.g. 1e-5")
    if not 0 < cfg.solver.warmup_factor <= 1:
        raise ConfigError("solver.warmup_factor", f"{cfg.solver.warmup_factor} must be in (0, 1]")
    if not cfg.data.min_size_train:
        raise ConfigError("data.min_size_train", "is empty", "give at least one size, e.g. data.min_size_train=[800]")
    if cfg.eval.criterion == "precision" and cfg.eval.target_precision is None:
        raise ConfigError("eval.target_precision", "is required with eval.criterion=precision",
                          "e.g. eval.target_precision=0.9")
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError("data.root", "is required for this dataset",
                          "give data.root=/path/to/coco (or data=coco128 for the shared sample data)")


def lr_steps(solver: DictConfig) -> list[int]:
    """The LR drop iterations from ``solver.steps`` (iterations) or ``solver.step_fractions``."""
    steps, fractions = list(solver.steps), list(solver.step_fractions)
    if steps and fractions:
        raise ConfigError("solver.step_fractions", "is set together with solver.steps",
                          "give the LR drops either in iterations (solver.steps) or as fractions, not both")
    if fractions:
        bad = [f for f in fractions if not 0 < f < 1]
        if bad:
            raise ConfigError("solver.step_fractions", f"{bad} outside (0, 1)", "fractions of solver.max_iter")
        steps = [int(round(f * solver.max_iter)) for f in fractions]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ConfigError("solver.steps", f"{steps} must increase")
    if any(not 0 < s < solver.max_iter for s in steps):
        raise ConfigError("solver.steps", f"{steps} must lie inside (0, solver.max_iter={solver.max_iter})",
                          "they are iterations; use solver.step_fractions for fractions of max_iter")
    return steps


def max_skipped_steps(solver: DictConfig) -> int:
    """How many non-finite steps in a row a ``solver.nonfinite=skip`` run may skip before it stops:
    ``solver.max_skipped_steps``, or when null the larger of 10 and 1% of ``solver.max_iter``."""
    if solver.max_skipped_steps is not None:
        return int(solver.max_skipped_steps)
    return max(10, math.ceil(solver.max_iter / 100))


def bn_group_size(groups: dict[str, int | None]) -> int | None:
    """Images per BN statistics group of a model, from each ghost-batch component's group
    (``None``: the whole device batch): the smallest one set, since that is the group whose
    statistics are noisiest (the batch-size axis of a study). The sweep report asks this too."""
    sizes = [g for g in groups.values() if g is not None]
    return min(sizes) if sizes else None


def resolve_batch(cfg: DictConfig, world_size: int) -> dict[str, int | None]:
    """The three batch notions (images per step, per device, per BN statistics group), checked."""
    per_device = cfg.data.ims_per_device
    total = cfg.solver.ims_per_batch
    total = per_device * world_size if total is None else total
    if total != per_device * world_size:
        raise ConfigError(
            "solver.ims_per_batch", f"{total} but data.ims_per_device={per_device} x {world_size} process(es) "
            f"= {per_device * world_size}", "set solver.ims_per_batch=null to derive it, or change ims_per_device")
    groups = {}
    for part in PARTS:
        group = component_norm_opts(cfg.model, part)["bn_group_size"]
        if group is not None and (group < 1 or per_device % group):
            key = "model.norm_opts.bn_group_size" if cfg.model[part].norm_opts.bn_group_size is None \
                else f"model.{part}.norm_opts.bn_group_size"
            raise ConfigError(key, f"{group} must divide data.ims_per_device={per_device}",
                              "BN statistics are computed over groups of that many images on each device")
        if norm_spec(cfg.model[part].norm).ghost_batch:
            groups[part] = group
    group = bn_group_size(groups)
    return {"ims_per_batch": total, "ims_per_device": per_device, "bn_group_size": group}


def check_bn_statistics(cfg: DictConfig, world_size: int) -> None:
    """BN in the FPN or head with one image per statistics group and images no larger than the
    padding multiple (the deepest stride): the deepest level is then 1x1, a single value per
    channel whose variance is undefined."""
    from gn_detect.modeling.contract import size_divisibility  # noqa: PLC0415 - the model's padding multiple

    smallest, div = min(cfg.data.min_size_train), size_divisibility(cfg.model)
    for part in ("fpn", "head"):
        resolved = resolve_norm(cfg.model, part)
        if not resolved.spec.batch_stats:
            continue
        norm = resolved.norm
        group = resolved.bn_group_size or cfg.data.ims_per_device
        per_group = group * (world_size if resolved.spec.cross_rank else 1)
        if per_group == 1 and smallest <= div:
            raise ConfigError(
                f"model.{part}.norm", f"{norm} with 1 image per BN statistics group and data.min_size_train "
                f"down to {smallest}: an image padded to {div}x{div} makes the stride-{div} level 1x1, whose "
                "variance is undefined", f"use data.min_size_train above {div}, more images per group (data.ims_per_device, "
                "model.norm_opts.bn_group_size), or a batch-independent norm (gn, gn_ws)")


def validate_train_config(cfg: DictConfig, world_size: int = 1) -> dict[str, int | None]:
    """Every start-up check of a training config; returns the resolved batch notions."""
    _check_choices(cfg)
    _check_ranges(cfg)
    lr_steps(cfg.solver)
    batch = resolve_batch(cfg, world_size)
    check_bn_statistics(cfg, world_size)
    return batch


def validate_evaluate_config(cfg: DictConfig) -> None:
    """tools/evaluate.py: a checkpoint is required; eval overrides take the training choices."""
    if not cfg.checkpoint:
        raise ConfigError("checkpoint", "is required",
                          "give checkpoint=outputs/<run>/checkpoints/model_final.pth")
    for key, value in cfg.eval.items():
        allowed = CHOICES.get(f"eval.{key}")
        if value is not None and allowed and value not in allowed:
            raise ConfigError(f"eval.{key}", f"{value!r} is not one of {', '.join(allowed)}")
