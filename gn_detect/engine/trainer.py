"""A training run from its config: :func:`build_trainer` composes data, model, solver, resume
state and the standard hooks into a :class:`~gn_detect.engine.train_loop.Trainer`;
:func:`train` runs it and owns the run folder's status.

Run folder (rank 0 writes it)::

    config.yaml  env.json  status.json  metrics.jsonl  data_skipped.json  tb/
    checkpoints/  last.pth (+ last.rank<k>.rng.pth under DDP), model_final.pth
    report.json, report.md, per_class.csv, figures    the final evaluation
    eval/iter_<iter>/                                  periodic evaluations (eval.period)

Iteration numbering, one number everywhere: ``iter`` is the 0-based index of the last
completed iteration -- in metrics.jsonl (train, eval and final records), TensorBoard steps,
the eval/iter_<iter> folders and the logs. An evaluation after iteration ``iter`` is written
once, at ``iter``. Checkpoints and status.json's ``iteration`` hold the number of completed
iterations (``iter + 1``): where a resumed run starts.

Randomness: the initial weights come from ``seed`` (the same on every rank). Data order and
augmentation do not use the global random streams: the train sampler derives every batch
and every item's augmentation seed from (seed, iteration, rank) (gn_detect/data/samplers.py),
so a resumed run sees the same batches. The global streams are then re-seeded per rank for
anything else that draws from them, and checkpoints save and restore them.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from gn_detect.config import lr_steps, validate_train_config
from gn_detect.data import build_dataset, build_test_loader, build_train_loader, write_skip_summary
from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import Checkpointer
from gn_detect.engine.env import collect_env
from gn_detect.engine.evaluate import evaluate_model
from gn_detect.engine.hooks import (
    EvalHook,
    IterationTimer,
    LRScheduler,
    MetricsWriter,
    PeriodicCheckpointer,
    PreciseBN,
    SignalHandler,
)
from gn_detect.engine.solver import build_lr_scheduler, build_optimizer, scale_lr
from gn_detect.engine.train_loop import HookBase, NonFiniteLossError, NonFinitePolicy, Trainer
from gn_detect.engine.writers import MetricWriter, read_status, write_json_atomic, write_status
from gn_detect.layers import SyncBatchNorm
from gn_detect.modeling import build_model, norm_summary

try:
    from gn_detect.modeling.compile import compile_model
except ModuleNotFoundError as exc:  # written separately; only solver.compile=true needs it
    if exc.name != "gn_detect.modeling.compile":
        raise
    compile_model = None

log = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "build_trainer", "is_finished", "train"]


@dataclass(frozen=True)
class _Run:
    """What every part of the build needs to know about this process's run."""

    cfg: DictConfig
    run_dir: Path
    rank: int
    world_size: int
    device: torch.device
    batch: dict[str, int | None]  # ims_per_batch, ims_per_device, bn_group_size (validated)
    amp_dtype: torch.dtype | None
    channels_last: bool


def _amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """solver.amp (auto|bf16|fp16|off): the autocast dtype, None for fp32."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[setting]


def _start_run(cfg: DictConfig, run_dir: Path) -> _Run:
    """Process group, config checks, then config.yaml, env.json and status 'running' (rank 0)."""
    info = gdist.init_distributed(cfg.dist_backend)
    device = info.device if cfg.device == "auto" else torch.device(cfg.device)
    batch = validate_train_config(cfg, info.world_size)
    if gdist.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved["solver"]["ims_per_batch"] = batch["ims_per_batch"]  # record the derived value
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        write_json_atomic(run_dir / "env.json", {**collect_env(), "world_size": info.world_size})
        write_status(run_dir, "running")
    setting = cfg.solver.channels_last
    return _Run(cfg, run_dir, info.rank, info.world_size, device, batch, _amp_dtype(cfg.solver.amp, device),
                setting == "on" or (setting == "auto" and device.type == "cuda"))


def _datasets(run: _Run, base_dir: str | Path | None) -> tuple[Any, Any]:
    """Train and evaluation datasets; what their checks skipped goes to data_skipped.json."""
    train_set = build_dataset(run.cfg.data, "train", base_dir=base_dir)
    val_set = build_dataset(run.cfg.data, run.cfg.eval.split, base_dir=base_dir)
    if gdist.is_main_process():
        write_skip_summary([train_set, val_set], run.run_dir / "data_skipped.json")
    return train_set, val_set


def _model(run: _Run, num_classes: int) -> nn.Module:
    """The model on its device (channels_last, compiled when configured)."""
    model = build_model(run.cfg.model, num_classes).to(run.device)
    log.info("model: %s norms %s", run.cfg.model.name, norm_summary(model))
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if run.cfg.solver.compile:
        if compile_model is None:
            raise ValueError("solver.compile=true needs gn_detect.modeling.compile, which this checkout "
                             "does not have; set solver.compile=false")
        compiled = compile_model(model)  # compiles in place (None) or returns the module to train
        model = model if compiled is None else compiled
    return model


def _solver(run: _Run, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with norm-parameter decay, and the per-iteration LR schedule."""
    s = run.cfg.solver
    lr = scale_lr(s.base_lr, run.batch["ims_per_batch"], s.reference_batch) if s.scale_lr else s.base_lr
    optimizer = build_optimizer(model, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay,
                                weight_decay_norm=s.weight_decay_norm)
    scheduler = build_lr_scheduler(optimizer, max_iter=s.max_iter, warmup_iters=s.warmup_iters,
                                   warmup_factor=s.warmup_factor, schedule=s.lr_schedule, steps=lr_steps(s),
                                   gamma=s.gamma)
    return optimizer, scheduler


def _wrap_ddp(run: _Run, model: nn.Module) -> nn.Module:
    """DDP under torchrun. SyncBN statistics already agree across ranks: broadcasting rank 0's
    buffers would hide a bug, so buffers are broadcast only for the other norms."""
    if run.world_size == 1:
        return model
    uses_sync = any(isinstance(m, SyncBatchNorm) for m in model.modules())
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
        find_unused_parameters=False, broadcast_buffers=not uses_sync,
    )


def _train_loader(run: _Run, train_set: Any, start_iter: int) -> DataLoader:
    """The endless training loader positioned at ``start_iter`` (batch i depends only on i)."""
    d = run.cfg.data
    return build_train_loader(train_set, run.batch["ims_per_device"], seed=run.cfg.seed, rank=run.rank,
                              world_size=run.world_size, aspect_grouping=d.aspect_grouping,
                              num_workers=d.num_workers, start_iter=start_iter)


def _evaluate(run: _Run, model: nn.Module, loader: DataLoader, dataset: Any, it: int, final: bool) -> dict[str, Any]:
    """One evaluation after iteration ``it``: the final report in the run folder, periodic ones
    under eval/iter_<it>/ (figures only with eval.full_reports). TensorBoard is written by
    MetricsWriter, once."""
    out_dir = run.run_dir if final else run.run_dir / "eval" / f"iter_{it:07d}"
    return evaluate_model(model, loader, dataset, out_dir, run.cfg.eval, device=run.device,
                          amp_dtype=run.amp_dtype, channels_last=run.channels_last,
                          full_report=final or run.cfg.eval.full_reports)


def _hooks(run: _Run, trainer: Trainer, checkpointer: Checkpointer, scheduler: Any, train_set: Any,
           val_set: Any) -> list[HookBase | None]:
    """The standard hooks, in the order gn_detect/engine/hooks.py explains."""
    cfg = run.cfg
    test_loader = build_test_loader(val_set, cfg.eval.ims_per_device, rank=run.rank, world_size=run.world_size,
                                    num_workers=cfg.data.num_workers)
    evaluate = functools.partial(_evaluate, run, trainer.model, test_loader, val_set)
    precise = cfg.solver.precise_bn
    writer = MetricWriter(run.run_dir, log_period=cfg.log.period, ims_per_batch=run.batch["ims_per_batch"],
                          progress=cfg.log.progress)
    return [
        LRScheduler(scheduler),
        PreciseBN(cfg.eval.period, precise.num_iter, functools.partial(_train_loader, run, train_set))
        if precise.enabled else None,
        PeriodicCheckpointer(checkpointer, cfg.checkpoint.period),
        EvalHook(cfg.eval.period, evaluate),
        IterationTimer(run.device),
        SignalHandler(),
        MetricsWriter(writer, run.device),
    ]


def build_trainer(cfg: DictConfig, run_dir: str | Path, base_dir: str | Path | None = None) -> Trainer:
    """Everything a run needs, resumed from ``run_dir/checkpoints/last.pth`` when it exists
    (``resume``); ``trainer.train(trainer.start_iter, trainer.max_iter)`` runs it.

    ``cfg`` is a config on the schema (gn_detect/config/schema.py: TrainConfig); relative data
    paths resolve against ``base_dir``. Writes config.yaml, env.json, status.json ('running')
    and data_skipped.json.
    """
    run = _start_run(cfg, Path(run_dir))
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    train_set, val_set = _datasets(run, base_dir)
    model = _model(run, len(train_set.label_to_cat_id))
    optimizer, scheduler = _solver(run, model)
    torch.manual_seed(cfg.seed * 1000 + run.rank)  # see the module docstring; a resume restores them
    checkpointer = Checkpointer(run.run_dir, model, optimizer, scheduler)
    extra = checkpointer.resume_or_load(cfg.init_weights, resume=cfg.resume)
    start_iter = int(extra["iteration"])
    if start_iter:
        log.info("resumed at iteration %d", start_iter)
    trainer = Trainer(
        _wrap_ddp(run, model), _train_loader(run, train_set, start_iter), optimizer, device=run.device,
        amp_dtype=run.amp_dtype, channels_last=run.channels_last, clip_grad_norm=cfg.solver.clip_grad_norm,
        nonfinite=NonFinitePolicy(cfg.solver.nonfinite, checkpointer), ims_per_batch=run.batch["ims_per_batch"],
    )
    trainer.start_iter, trainer.max_iter = start_iter, cfg.solver.max_iter
    trainer.skipped_steps = int(extra.get("skipped_steps", 0))
    trainer.register_hooks(_hooks(run, trainer, checkpointer, scheduler, train_set, val_set))
    return trainer


def _finish(trainer: Trainer, run_dir: Path) -> dict[str, Any]:
    """status.json after the loop ended without an error, and what :func:`train` returns."""
    done = trainer.iters_done
    main = gdist.is_main_process()
    if trainer.state == "interrupted":
        reason = trainer.stop_reason or "a stop requested on another rank"
        message = f"stopped by {reason} after {done} iterations; rerun the same command to resume"
        if main:
            write_status(run_dir, "interrupted", iteration=done, error=message)
        log.warning("%s (checkpoint saved)", message)
        return {"interrupted": True, "iter": done}
    if main:
        write_status(run_dir, "done", iteration=done)
    return trainer.results


def train(cfg: DictConfig, run_dir: str | Path, base_dir: str | Path | None = None, *,
          hooks: Sequence[HookBase] = ()) -> dict[str, Any]:
    """Runs (or resumes) one training run in ``run_dir``; returns the final metrics, or
    ``{"interrupted": True, "iter": completed iterations}`` after a stop.

    ``hooks`` are added to the standard ones, before MetricsWriter (which stays last). Any
    failure, start-up included (bad config, unreadable annotations), ends as status.json
    'failed' with the error, and is re-raised.
    """
    run_dir = Path(run_dir)
    trainer: Trainer | None = None
    try:
        trainer = build_trainer(cfg, run_dir, base_dir)
        trainer.register_hooks([*hooks, *trainer.remove_hooks(MetricsWriter)])
        trainer.train(trainer.start_iter, trainer.max_iter)
    except BaseException as exc:
        if gdist.is_main_process():
            write_status(run_dir, "failed", iteration=trainer.iters_done if trainer else 0,
                         error=f"{type(exc).__name__}: {exc}")
        raise
    return _finish(trainer, run_dir)


def is_finished(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run that ended 'done' (a sweep skips it)."""
    with contextlib.suppress(Exception):
        return read_status(run_dir).get("state") == "done"
    return False
