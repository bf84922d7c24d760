"""A training run from its config: :func:`build_trainer` composes data, model, solver, resume
state and the standard hooks into a :class:`~gn_detect.engine.train_loop.Trainer`;
:func:`train` runs it and owns the run folder's status.

The run folder's layout is gn_detect/runs/layout.py (rank 0 writes it; ``.lock`` is held by the
one process running it).

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

import functools
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from gn_detect.config import Batch, error_text, lr_steps, max_skipped_steps, validate_train_config
from gn_detect.data import (
    build_dataset,
    build_test_loader,
    build_train_loader,
    check_same_categories,
    write_skip_summary,
)
from gn_detect.data.json_checks import ParsedFiles
from gn_detect.data.collate import make_buckets
from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import CheckpointError, Checkpointer, load_checkpoint
from gn_detect.engine.device import amp_dtype, resolve_device
from gn_detect.engine.description import ResumeRefusedError, categories_of_dataset, check_resume, describe_run
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
from gn_detect.engine.run_lock import RunFolderInUse, RunLock
from gn_detect.runs import RunFolder, read_status, write_status
from gn_detect.engine.signals import StopRequested, ignore_stop_signals
from gn_detect.engine.solver import build_lr_scheduler, build_optimizer, scale_lr
from gn_detect.engine.train_loop import HookBase, NonFiniteLossError, NonFinitePolicy, Trainer
from gn_detect.engine.writers import MetricWriter, write_json_atomic
from gn_detect.evaluation import format_results
from gn_detect.evaluation.thresholds import class_criteria_of
from gn_detect.io import release_frozen, write_text_atomic
from gn_detect.layers import SyncBatchNorm
from gn_detect.modeling.detector_weights import resolve_detector_conventions
from gn_detect.modeling.weights import resolve_conventions
from gn_detect.modeling import build_model, norm_summary, size_divisibility

from gn_detect.modeling.compile import compile_model

log = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "ResumeRefusedError", "RunFolderInUse", "build_trainer", "train"]


@dataclass(frozen=True)
class _Run:
    """What every part of the build needs to know about this process's run."""

    cfg: DictConfig
    run_dir: Path
    rank: int
    world_size: int
    device: torch.device
    batch: Batch                   # the batch notions, as the pre-flight derived them too
    amp_dtype: torch.dtype | None
    channels_last: bool
    resolved: dict[str, Any]       # the config as config.yaml and the checkpoints record it
    lock: RunLock | None           # the run folder's lock (rank 0)
    resume: dict[str, Any] | None  # content of checkpoints/last.pth when this start resumes it
    init_path: Path | None         # init_weights (resolved against base_dir) for a new run ...
    init: dict[str, Any] | None    # ... and its content
    hparams: dict[str, Any] | None = None  # its row in TensorBoard's HParams view (launch.py: run_hparams)
    parsed: ParsedFiles | None = None      # annotation files the pre-flight parsed for this run


def _lock_run_dir(cfg: DictConfig, run_dir: Path) -> RunLock | None:
    """Rank 0 takes the run folder's lock (gn_detect/engine/run_lock.py) before anything else
    touches the folder; every rank stops when another process holds it. A 'running' status
    found then was left by a process that died."""
    gdist.init_distributed(cfg.dist_backend)  # the rank; _start_run reuses the group
    lock, problem = None, None
    if gdist.is_main_process():
        try:
            lock = RunLock(run_dir).acquire()
        except RunFolderInUse as exc:
            problem = str(exc)
    problem = gdist.all_gather_object(problem)[0]
    if problem is not None:
        raise RunFolderInUse(problem)
    before = read_status(run_dir) if lock is not None else {}
    if before.get("state") == "running":
        log.warning("run folder %s: the previous run (pid %s on %s) crashed after iteration %s: status.json still "
                    "says running, but no process holds the folder", run_dir, before.get("pid", "?"),
                    before.get("host", "?"), before.get("iteration", "?"))
    return lock


def _resume_state(cfg: DictConfig, run_dir: Path, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """The content of checkpoints/last.pth when this start resumes it, once its description
    allows this config (gn_detect/engine/description.py; categories are checked with the data)."""
    last = RunFolder(run_dir).last
    if not cfg.resume or not last.is_file():
        return None
    state = load_checkpoint(last)
    description = state.get("description")
    if not isinstance(description, dict) or not {"config", "model"} <= description.keys():
        raise CheckpointError(
            f"checkpoint {last} has no model description (written before gn-detect checkpoints carried one), "
            "so this start cannot check that it continues the same run; finish that run with the gn-detect "
            "version that wrote it, or use a new run folder")
    check_resume(description, {"config": resolved}, last, int(state.get("iteration", 0)))
    return state


def _init_state(cfg: DictConfig, base_dir: str | Path | None) -> tuple[Path | None, dict[str, Any] | None]:
    """init_weights (relative to ``base_dir``, like the data paths) and its content, read now:
    a missing or refused file stops the start before any data is read."""
    if not cfg.init_weights:
        return None, None
    path = Path(cfg.init_weights)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path, load_checkpoint(path)


def _write_run_files(run: _Run) -> None:
    """config.yaml, env.json and status.json 'running' with this process's pid and host (rank 0)."""
    if not gdist.is_main_process():
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run.run_dir)
    write_text_atomic(folder.config, OmegaConf.to_yaml(OmegaConf.create(run.resolved)))
    write_json_atomic(folder.env, {**collect_env(), "world_size": run.world_size})
    write_status(run.run_dir, "running", pid=os.getpid(), host=socket.gethostname())


def _start_run(cfg: DictConfig, run_dir: Path, base_dir: str | Path | None, lock: RunLock | None,
               hparams: dict[str, Any] | None = None, parsed: ParsedFiles | None = None) -> _Run:
    """With the run folder locked: config checks, the checkpoint this start resumes or
    initializes from (read and checked before anything is written); then, for a new run,
    config.yaml, env.json and status 'running' (a resume writes them once its data is checked)."""
    info = gdist.init_distributed(cfg.dist_backend)
    if info.rank != 0:  # under torchrun rank 0 speaks for the run; the others only warn
        logging.getLogger("gn_detect").setLevel(logging.WARNING)
    device = resolve_device(cfg.device, info.device)
    batch = validate_train_config(cfg, info.world_size)
    log.info("batch: %d images per step (%d per device x %d process(es)); a BN statistics group sees %s",
             batch.ims_per_batch, batch.ims_per_device, batch.world_size, batch.images_per_group)
    resolve_detector_conventions(cfg.model)  # model.weights: its source's settings; a contradicting one refused
    resolve_conventions(cfg.model)  # null model.input / stride_in_1x1 from the weights file; norm fit checked
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["solver"]["ims_per_batch"] = batch.ims_per_batch  # record the derived value
    resume = _resume_state(cfg, run_dir, resolved)
    init_path, init = (None, None) if resume is not None else _init_state(cfg, base_dir)
    setting = cfg.solver.channels_last
    run = _Run(cfg, run_dir, info.rank, info.world_size, device, batch, amp_dtype(cfg.solver.amp, device),
               setting == "on" or (setting == "auto" and device.type == "cuda"), resolved, lock, resume,
               init_path, init, hparams, parsed)
    if resume is None:
        _write_run_files(run)
    return run


def _datasets(run: _Run, base_dir: str | Path | None) -> tuple[Any, Any]:
    """Train and evaluation datasets, which must list the same categories (gn_detect/data/checks.py);
    annotation files the pre-flight parsed (``run.parsed``) are taken, not parsed again."""
    train_set = build_dataset(run.cfg.data, "train", base_dir=base_dir, parsed=run.parsed)
    val_set = build_dataset(run.cfg.data, run.cfg.eval.split, base_dir=base_dir, parsed=run.parsed)
    if run.parsed is not None:
        run.parsed.clear()  # what neither build took
    check_same_categories(train_set, val_set)
    class_criteria_of(OmegaConf.to_container(run.cfg.eval.class_criteria),  # a misspelt class: before training
                      [c["name"] for c in categories_of_dataset(train_set)])
    return train_set, val_set


def _model(run: _Run, class_names: list[str]) -> nn.Module:
    """The model on its device (channels_last, compiled when configured); what a ``model.weights``
    file gave it is written to the run folder (a new run, rank 0)."""
    model = build_model(run.cfg.model, len(class_names), class_names).to(run.device)
    report = getattr(model, "weights_report", None)
    if report is not None and run.resume is None and gdist.is_main_process():
        write_json_atomic(RunFolder(run.run_dir).weights_loaded, report)
    log.info("model: %s norms %s", run.cfg.model.name, norm_summary(model))
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if run.cfg.solver.compile:
        model = compile_model(model, num_buckets=len(_buckets(run.cfg)))
    return model


def _solver(run: _Run, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with norm-parameter decay, and the per-iteration LR schedule."""
    s = run.cfg.solver
    lr = scale_lr(s.base_lr, run.batch.ims_per_batch, s.reference_batch) if s.scale_lr else s.base_lr
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
        find_unused_parameters=False, forward_sync_buffers=not uses_sync,
    )


def _buckets(cfg: DictConfig) -> list[tuple[int, int]] | None:
    """With solver.compile, batches are padded to 2x2 bucket shapes up to the largest image
    (data.max_size), so the compiled model sees at most 4 input shapes per mode."""
    if not cfg.solver.compile:
        return None
    side = max(cfg.data.max_size, cfg.data.max_size_train or 0)
    return make_buckets(side, side, per_side=2, divisor=size_divisibility(cfg.model))


def _train_loader(run: _Run, train_set: Any, start_iter: int) -> DataLoader:
    """The endless training loader positioned at ``start_iter`` (batch i depends only on i)."""
    d = run.cfg.data
    return build_train_loader(train_set, run.batch.ims_per_device, seed=run.cfg.seed, rank=run.rank,
                              world_size=run.world_size, aspect_grouping=d.aspect_grouping,
                              num_workers=d.num_workers, start_iter=start_iter, buckets=_buckets(run.cfg),
                              size_divisibility=size_divisibility(run.cfg.model),
                              worker_init_fn=ignore_stop_signals)


def _evaluate(run: _Run, model: nn.Module, loader: DataLoader, dataset: Any, it: int, final: bool) -> dict[str, Any]:
    """One evaluation after iteration ``it``: the final report in the run folder, periodic ones
    under eval/iter_<it>/ (figures only with eval.full_reports). TensorBoard is written by
    MetricsWriter, once."""
    out_dir = run.run_dir if final else RunFolder(run.run_dir).eval_folder(it)
    return evaluate_model(model, loader, dataset, out_dir, run.cfg.eval, device=run.device,
                          amp_dtype=run.amp_dtype, channels_last=run.channels_last,
                          full_report=final or run.cfg.eval.full_reports)


def _hooks(run: _Run, trainer: Trainer, checkpointer: Checkpointer, scheduler: Any, train_set: Any,
           val_set: Any) -> list[HookBase | None]:
    """The standard hooks, in the order gn_detect/engine/hooks.py explains."""
    cfg = run.cfg
    test_loader = build_test_loader(val_set, cfg.eval.ims_per_device, rank=run.rank, world_size=run.world_size,
                                    num_workers=cfg.data.num_workers, buckets=_buckets(cfg),
                                    size_divisibility=size_divisibility(cfg.model),
                                    worker_init_fn=ignore_stop_signals)
    evaluate = functools.partial(_evaluate, run, trainer.model, test_loader, val_set)
    precise = cfg.solver.precise_bn
    writer = MetricWriter(run.run_dir, log_period=cfg.log.period, ims_per_batch=run.batch.ims_per_batch,
                          progress=cfg.log.progress, hparams=run.hparams)
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
    and init_weights paths resolve against ``base_dir``. Takes the run folder's lock first
    (:class:`RunFolderInUse` when another process holds it; ``trainer.run_lock`` keeps it: call
    its ``release()`` when done with the trainer), refuses a resume that would change the run
    (:class:`ResumeRefusedError`, before anything is written), then writes config.yaml, env.json,
    status.json ('running') and data_skipped.json.
    """
    run_dir = Path(run_dir)
    lock = _lock_run_dir(cfg, run_dir)
    try:
        trainer = _build(_start_run(cfg, run_dir, base_dir, lock), base_dir)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    trainer.run_lock = lock
    return trainer


def _build(run: _Run, base_dir: str | Path | None) -> Trainer:
    """Data (categories checked, against the resumed checkpoint too), model, solver, resume or
    initial weights, the trainer and its hooks."""
    cfg = run.cfg
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    train_set, val_set = _datasets(run, base_dir)
    description = describe_run(run.resolved, categories_of_dataset(train_set),
                               {"train": getattr(train_set, "ann_file", None), "val": getattr(val_set, "ann_file", None)})
    if run.resume is not None:
        check_resume(run.resume["description"], description, RunFolder(run.run_dir).last,
                     int(run.resume["iteration"]))
        _write_run_files(run)
    if gdist.is_main_process():
        write_skip_summary([train_set, val_set], RunFolder(run.run_dir).skipped)
    model = _model(run, [c["name"] for c in description["model"]["categories"]])
    optimizer, scheduler = _solver(run, model)
    torch.manual_seed(cfg.seed * 1000 + run.rank)  # see the module docstring; a resume restores them
    checkpointer = Checkpointer(run.run_dir, model, optimizer, scheduler, description)
    extra = checkpointer.resume_or_load(run.init_path, resume=run.resume is not None,
                                        state=run.resume if run.resume is not None else run.init)
    start_iter = int(extra["iteration"])
    if start_iter:
        log.info("resumed at iteration %d", start_iter)
    trainer = Trainer(
        _wrap_ddp(run, model), _train_loader(run, train_set, start_iter), optimizer, device=run.device,
        amp_dtype=run.amp_dtype, channels_last=run.channels_last, clip_grad_norm=cfg.solver.clip_grad_norm,
        nonfinite=NonFinitePolicy(cfg.solver.nonfinite, checkpointer, max_skipped_steps(cfg.solver)),
        ims_per_batch=run.batch.ims_per_batch, ims_per_device=run.batch.ims_per_device,
    )
    trainer.start_iter, trainer.max_iter = start_iter, cfg.solver.max_iter
    trainer.restore_extra(extra)
    trainer.register_hooks(_hooks(run, trainer, checkpointer, scheduler, train_set, val_set))
    return trainer


def _finish(trainer: Trainer, run_dir: Path) -> dict[str, Any]:
    """status.json after the loop ended without an error, and what :func:`train` returns."""
    done = trainer.iters_done
    main = gdist.is_main_process()
    if trainer.state == "interrupted":
        reason = trainer.stop_reason or "a stop requested on another rank"
        if done >= trainer.max_iter:  # in the final evaluation: every checkpoint is written
            message = (f"stopped by {reason} during the final evaluation after {done} iterations; "
                       f"{RunFolder(run_dir).final} and {RunFolder(run_dir).last.name} are kept; rerun the same command "
                       f"to evaluate (a single run: with hydra.run.dir={run_dir})")
        else:
            message = (f"stopped by {reason} after {done} iterations; {RunFolder(run_dir).last} is kept; "
                       f"rerun the same command to resume (a single run: with hydra.run.dir={run_dir})")
        if main:
            write_status(run_dir, "interrupted", iteration=done, error=message)
        log.warning("%s", message)
        return {"interrupted": True, "iter": done, "exit_code": trainer.stop_exit_code, "message": message}
    if main:
        write_status(run_dir, "done", iteration=done)
        print(format_results(trainer.results, run_dir=run_dir, report_path=RunFolder(run_dir).report_md), flush=True)
    return trainer.results


def _record(run_dir: Path, state: str, error: str, trainer: Trainer | None) -> None:
    """status.json after a run ended early (rank 0, still holding the folder); a status that cannot
    be written (a full disk) is logged, so the error that ended the run is the one reported."""
    if not gdist.is_main_process():
        return
    progress = {"iteration": trainer.iters_done} if trainer is not None else {}
    try:
        write_status(run_dir, state, error=error, **progress)  # type: ignore[arg-type]
    except OSError as e:
        log.error("could not write %s/status.json (%s): %s", run_dir, e, error)


def train(cfg: DictConfig, run_dir: str | Path, base_dir: str | Path | None = None, *,
          hooks: Sequence[HookBase] = (), hparams: dict[str, Any] | None = None,
          parsed: ParsedFiles | None = None) -> dict[str, Any]:
    """Runs (or resumes) one training run in ``run_dir``; returns the final metrics, or
    ``{"interrupted": True, "iter": completed iterations, "exit_code": the status the process
    should exit with (128 + signal number after a signal)}`` after a stop.

    ``hooks`` are added to the standard ones, before MetricsWriter (which stays last); ``hparams``:
    its row in TensorBoard's HParams view (launch.py: run_hparams), written with its final metrics;
    ``parsed``: the annotation files the command's pre-flight parsed (gn_detect/preflight/). A
    :class:`StopRequested` raised before the loop (the launcher's signal handler) ends it
    'interrupted' (returned as after a stop). Any failure, start-up included (bad config,
    unreadable annotations), ends as status.json 'failed' with the error, and is re-raised -- except a folder another process holds
    (:class:`RunFolderInUse`) and a refused resume (:class:`ResumeRefusedError`), which leave
    the folder as they found it. The run folder's lock is released however the run ends.
    """
    run_dir = Path(run_dir)
    lock: RunLock | None = None
    trainer: Trainer | None = None
    try:
        lock = _lock_run_dir(cfg, run_dir)
        trainer = _build(_start_run(cfg, run_dir, base_dir, lock, hparams, parsed), base_dir)
        trainer.run_lock = lock
        trainer.register_hooks([*hooks, *trainer.remove_hooks(MetricsWriter)])
        trainer.train(trainer.start_iter, trainer.max_iter)
        return _finish(trainer, run_dir)
    except (RunFolderInUse, ResumeRefusedError):
        raise
    except StopRequested as stop:  # a signal outside the loop (data checks, model build, the results table)
        done = trainer.iters_done if trainer is not None else 0
        message = (f"stopped by {stop.reason} outside the training loop (starting or finishing) after {done} "
                   "iterations; rerun the same command to continue")
        _record(run_dir, "interrupted", message, trainer)
        return {"interrupted": True, "iter": done, "exit_code": stop.exit_code, "message": message}
    except BaseException as exc:
        _record(run_dir, "failed", f"{type(exc).__name__}: {error_text(exc)}", trainer)
        raise
    finally:
        if lock is not None:
            lock.release()
        release_frozen()  # this run's objects (its trainer is a cycle) collectable again: the next run of a sweep
