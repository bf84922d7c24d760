"""Start-up checks of a composed config: choices, ranges and cross-field rules, each failing as
one ConfigError naming the key and the fix, before any data is read. Also derives the values
those rules define (the batch notions, LR steps, per-component norm options)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from gn_detect.norms import component_norm_opts, norm_names, norm_spec, resolve_norm

from .errors import ConfigError
from .schema import CHOICES, CRITERION_TARGETS
from gn_detect.runs.layout import final_checkpoint_example

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
    ("data.min_size_train", 1), ("model.backbone.widths", 1), ("model.anchors.strides", 1),  # lists: each item
    ("model.anchors.sizes", 0), ("model.backbone.groups", 1), ("model.backbone.width_per_group", 1),
)
# (key, largest allowed value): the seeds become torch.manual_seed(seed * 1000 + rank), which takes 64 bits
_MAXIMA: tuple[tuple[str, int], ...] = (("seed", 2**32 - 1), ("eval.tune_seed", 2**32 - 1),
                                        ("data.synthetic.seed", 2**32 - 1))
# every integer of a config (list items included) is stored as int64 by NumPy and torch somewhere
_INT64 = (-2**63, 2**63 - 1)
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


def _leaves(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config container, list items as ``key[i]``."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{key}[{i}]")
    else:
        yield key, node


def _check_integers(cfg: DictConfig) -> None:
    """Every integer of the config fits int64 (a 5000-digit seed is one line here, not an overflow
    after the run folder is made)."""
    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)):
        if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
            shown = str(value) if abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit integer"
            raise ConfigError(key, f"{shown} does not fit a 64-bit integer", "give a value in [-2**63, 2**63)")


def _frozen(spec: Any) -> bool:
    """A norm with fixed statistics (a per-channel affine: AffineChannel, torchvision's FrozenBN),
    where eps 0 is meaningful (torchvision's COCO detectors fold with 0)."""
    return spec.foldable and not spec.normalizes


def _check_ranges(cfg: DictConfig) -> None:
    _check_integers(cfg)
    for key, low in _MINIMA:
        value = _get(cfg, key)
        items = list(value) if isinstance(value, ListConfig) else [value]  # a list: each item
        for v in items:
            if v is not None and not (v >= low and math.isfinite(v)):  # NaN fails too
                what = f"{v}" if len(items) == 1 and v is value else f"{list(items)} has {v}, which"
                raise ConfigError(key, f"{what} is below the smallest allowed value {low}" if v < low
                                  else f"{what} is not a finite number")
    for key, high in _MAXIMA:
        value = _get(cfg, key)
        if value is not None and value > high:
            raise ConfigError(key, f"{value} is above the largest allowed value {high} (2**32 - 1)",
                              f"e.g. {key}={value % 2**32}")
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
    _check_criteria(cfg.eval)
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError("data.root", "is required for this dataset",
                          "give data.root=/path/to/coco (or data=coco128 for the shared sample data)")


def _check_criteria(section: DictConfig, targets_required: bool = True) -> None:
    """``eval.criterion`` and each ``eval.class_criteria.<class>``: a known criterion with its
    target in (0, 1] (precision: target_precision, recall: target_recall); a null criterion
    (tools/evaluate.py: the run's own) is not checked, nor a null target without
    ``targets_required`` (tools/evaluate.py: it may be the run's). Class names are checked against
    the data by the pre-flight."""
    entries = [("eval", section)] + [(f"eval.class_criteria.{name}", entry)
                                     for name, entry in (section.class_criteria or {}).items()]
    for where, entry in entries:
        criterion = entry.criterion
        if criterion is None:
            continue
        if criterion not in CHOICES["eval.criterion"]:
            raise ConfigError(f"{where}.criterion", f"{criterion!r} is not one of {', '.join(CHOICES['eval.criterion'])}")
        key = CRITERION_TARGETS.get(criterion)
        if key is not None and (entry[key] is None and targets_required or entry[key] is not None
                                and not 0 < entry[key] <= 1):
            raise ConfigError(f"{where}.{key}", f"{entry[key]} with {where}.criterion={criterion}: needs a value in (0, 1]",
                              f"e.g. {where}.{key}=0.9")


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


def images_per_group(bn_group: int | None, ims_per_device: int | None, world_size: int, cross_rank: bool) -> int | None:
    """The batch axis of a study: the images one BN statistics group sees -- ``bn_group`` when set,
    else the device batch, times the world size for a norm whose statistics span all processes
    (SyncBN, ``cross_rank`` in the norm table). The sweep report asks this too."""
    if bn_group is not None:
        return bn_group
    if ims_per_device is None:
        return None
    return ims_per_device * world_size if cross_rank and world_size > 1 else ims_per_device


@dataclass(frozen=True)
class Batch:
    """The batch notions of a run, as :func:`resolve_batch` derives them (one place for all of them:
    the pre-flight, the run, the trainer's messages and the sweep report read these)."""

    ims_per_batch: int            # images per optimizer step over all processes
    ims_per_device: int           # images per process and step
    bn_group_size: int | None     # images per ghost-batch statistics group (None: the device batch)
    images_per_group: int | None  # images one BN statistics group sees (SyncBN: across processes)
    world_size: int


def resolve_batch(cfg: DictConfig, world_size: int) -> Batch:
    """The batch notions (images per step, per device, per BN statistics group) of ``cfg`` run by
    ``world_size`` processes, checked."""
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
    cross = any(norm_spec(cfg.model[part].norm).cross_rank for part in PARTS)
    return Batch(total, per_device, group, images_per_group(group, per_device, world_size, cross), world_size)


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


def check_starting_points(cfg: DictConfig) -> None:
    """One starting point: ``model.weights`` (a whole detector) with neither
    ``model.backbone.weights`` nor ``init_weights``."""
    if not cfg.model.weights:
        return
    for key in ("model.backbone.weights", "init_weights"):
        if _get(cfg, key):
            raise ConfigError("model.weights", f"is set together with {key}: two starting points for one model",
                              f"give the whole detector as model.weights only ({key}=null), or drop model.weights")


def validate_train_config(cfg: DictConfig, world_size: int = 1) -> Batch:
    """Every start-up check of a training config run by ``world_size`` processes; returns the
    resolved batch notions."""
    _check_choices(cfg)
    _check_ranges(cfg)
    check_starting_points(cfg)
    lr_steps(cfg.solver)
    batch = resolve_batch(cfg, world_size)
    check_bn_statistics(cfg, world_size)
    return batch


def validate_evaluate_config(cfg: DictConfig, world_size: int = 1) -> None:
    """tools/evaluate.py: a checkpoint is required; eval overrides take the training choices."""
    if not cfg.checkpoint:
        raise ConfigError("checkpoint", "is required",
                          f"give checkpoint={final_checkpoint_example()}")
    for key, value in cfg.eval.items():
        allowed = CHOICES.get(f"eval.{key}")
        if value is not None and allowed and value not in allowed:
            raise ConfigError(f"eval.{key}", f"{value!r} is not one of {', '.join(allowed)}")
    _check_criteria(cfg.eval, targets_required=False)
