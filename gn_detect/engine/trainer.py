"""The training run: config -> data, model, solver -> iterations -> checkpoints -> evaluation.

One function, :func:`train`, owns the run folder: it writes config.yaml, env.json,
status.json, metrics.jsonl, checkpoints/ and (through evaluation) the reports.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import Checkpointer
from gn_detect.engine.env import collect_env
from gn_detect.engine.evaluate import evaluate_model
from gn_detect.engine.solver import build_lr_scheduler, build_optimizer, clip_gradients, scale_lr
from gn_detect.engine.writers import MetricWriter, write_json_atomic, write_status

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next iteration boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. under a test runner's thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def resolve_batch(cfg: DictConfig, world_size: int) -> dict[str, int | None]:
    """The three batch notions, checked against each other at start-up."""
    per_device = int(cfg.data.ims_per_device)
    total = cfg.solver.get("ims_per_batch")
    total = per_device * world_size if total is None else int(total)
    if total != per_device * world_size:
        raise ValueError(
            f"solver.ims_per_batch={total} but data.ims_per_device={per_device} x {world_size} process(es) "
            f"= {per_device * world_size}; set solver.ims_per_batch=null to derive it, or change ims_per_device"
        )
    group = cfg.data.get("bn_group_size")
    if group is not None:
        group = int(group)
        if group < 1 or per_device % group:
            raise ValueError(
                f"data.bn_group_size={group} must divide data.ims_per_device={per_device}: BN statistics "
                f"are computed over groups of that many images on each device"
            )
    return {"ims_per_batch": total, "ims_per_device": per_device, "bn_group_size": group}


def check_bn_statistics(cfg: DictConfig, batch: dict[str, int | None], world_size: int) -> None:
    """Fails at start-up, not at the first unlucky batch, when BN in the FPN or head could see
    a single value per channel: P7 has stride 128, so an image padded to 128x128 gives a 1x1
    map, and with one image per statistics group its variance is undefined."""
    group = batch["bn_group_size"] or batch["ims_per_device"]
    sizes = cfg.data.get("min_size_train") or []
    smallest = min(int(v) for v in (sizes if not isinstance(sizes, (int, float)) else [sizes])) if sizes else 10**9
    for part in ("fpn", "head"):
        norm = str(cfg.model[part].get("norm", "none")).lower()
        per_group = group * (world_size if norm == "syncbn" else 1)
        if norm in ("bn", "syncbn") and per_group == 1 and smallest <= 128:
            raise ValueError(
                f"model.{part}.norm={norm} with 1 image per BN statistics group and data.min_size_train down to "
                f"{smallest}: an image padded to 128x128 makes P7 1x1, a single value per channel whose variance "
                "is undefined. Use data.min_size_train above 128, more images per group "
                "(data.ims_per_device / data.bn_group_size), or a batch-independent norm (gn, gn_ws)."
            )


def _model_cfg(cfg: DictConfig, bn_group_size: int | None) -> dict[str, Any]:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model_cfg, dict)
    if bn_group_size is not None:
        used = False
        for part in ("backbone", "fpn", "head"):
            sub = model_cfg.setdefault(part, {})
            if str(sub.get("norm", "")).lower() == "bn":
                sub["norm_opts"] = {**(sub.get("norm_opts") or {}), "bn_group_size": bn_group_size}
                used = True
        if not used:
            log.warning("data.bn_group_size=%d has no effect: no component uses norm=bn", bn_group_size)
    return model_cfg


def _amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    setting = str(setting).lower()
    if setting in ("off", "false", "none", "fp32"):
        return None
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    raise ValueError(f"solver.amp={setting!r}: use auto, bf16, fp16 or off")


def _any_rank(flags: tuple[bool, ...], device: torch.device) -> tuple[bool, ...]:
    """Each flag True on every rank when any rank raised it, in one all-reduce: a decision one
    rank takes alone (skip a step, stop) would leave the others waiting in DDP's gradient
    all-reduce."""
    if gdist.get_world_size() == 1:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    torch.distributed.all_reduce(t)
    return tuple(bool(v > 0) for v in t.tolist())


def _buffers_agree(model: torch.nn.Module) -> bool:
    """Whether every rank holds the same norm statistics (running mean/var), to 1e-5."""
    local = {k: v.detach().double().cpu() for k, v in model.state_dict().items()
             if k.endswith(("running_mean", "running_var"))}
    ref = gdist.all_gather_object(local)[0]
    return all(torch.allclose(local[k], ref[k], rtol=1e-5, atol=1e-6) for k in local)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process RSS peak (Linux: KiB)


def train(cfg: DictConfig, run_dir: str | Path, base_dir: str | Path | None = None) -> dict[str, Any]:
    """Runs (or resumes) one training run in ``run_dir``; returns the final metrics.

    ``iter`` in metrics.jsonl is always the 0-based index of the last completed iteration;
    checkpoints store the number of completed iterations (where the loop resumes).
    """
    from gn_detect.data import build_dataset, build_test_loader, build_train_loader, write_skip_summary
    from gn_detect.modeling import build_model, norm_summary

    run_dir = Path(run_dir)
    # From here on every failure, start-up included (bad config, unreadable annotations, a norm
    # name typo), ends as status.json 'failed' with the message, not a run that looks 'running'.
    it, writer = 0, None
    try:
        info = gdist.init_distributed(cfg.get("dist_backend"))
        device = torch.device(cfg.device) if cfg.get("device", "auto") != "auto" else info.device
        batch = resolve_batch(cfg, info.world_size)
        check_bn_statistics(cfg, batch, info.world_size)
        if gdist.is_main_process():
            run_dir.mkdir(parents=True, exist_ok=True)
            resolved = OmegaConf.to_container(cfg, resolve=True)
            resolved["solver"]["ims_per_batch"] = batch["ims_per_batch"]  # record the derived value
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
            write_json_atomic(run_dir / "env.json", {**collect_env(), "world_size": info.world_size})
            write_status(run_dir, "running")

        torch.manual_seed(int(cfg.seed))  # same initial weights on every rank (DDP also broadcasts)
        train_set = build_dataset(cfg.data, "train", base_dir=base_dir)
        val_set = build_dataset(cfg.data, cfg.eval.get("split", "val"), base_dir=base_dir)
        if gdist.is_main_process():
            write_skip_summary([train_set, val_set], run_dir / "data_skipped.json")
        num_classes = len(train_set.label_to_cat_id)
        model = build_model(_model_cfg(cfg, batch["bn_group_size"]), num_classes).to(device)
        log.info("model: %s norms %s", cfg.model.name, norm_summary(model))
        channels_last = str(cfg.solver.get("channels_last", "auto")).lower()
        channels_last_on = channels_last == "true" or (channels_last == "auto" and device.type == "cuda")
        if channels_last_on:
            model = model.to(memory_format=torch.channels_last)
        amp_dtype = _amp_dtype(cfg.solver.get("amp", "auto"), device)

        lr = float(cfg.solver.base_lr)
        if cfg.solver.get("scale_lr", False):
            lr = scale_lr(lr, batch["ims_per_batch"], int(cfg.solver.reference_batch))
        optimizer = build_optimizer(
            model, lr=lr, momentum=float(cfg.solver.momentum), weight_decay=float(cfg.solver.weight_decay),
            weight_decay_norm=float(cfg.solver.weight_decay_norm),
        )
        max_iter = int(cfg.solver.max_iter)
        scheduler = build_lr_scheduler(
            optimizer, max_iter=max_iter, warmup_iters=int(cfg.solver.warmup_iters),
            warmup_factor=float(cfg.solver.warmup_factor), schedule=cfg.solver.schedule,
            steps=[int(round(s * max_iter)) if s < 1 else int(s) for s in cfg.solver.get("steps", [])],
            gamma=float(cfg.solver.get("gamma", 0.1)),
        )
        # Augmentation randomness differs per rank; a resume below restores these streams exactly.
        torch.manual_seed(int(cfg.seed) * 1000 + info.rank)
        checkpointer = Checkpointer(run_dir, model, optimizer, scheduler)
        extra = checkpointer.resume_or_load(cfg.get("init_weights"), resume=bool(cfg.get("resume", True)))
        start_iter = int(extra["iteration"])
        if start_iter:
            log.info("resumed at iteration %d", start_iter)

        ddp_model: torch.nn.Module = model
        if info.world_size > 1:
            from gn_detect.layers import SyncBatchNorm

            # SyncBN already agrees across ranks; broadcasting rank 0's buffers would hide a bug.
            uses_sync = any(isinstance(m, SyncBatchNorm) for m in model.modules())
            ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=False, broadcast_buffers=not uses_sync,
            )
        loader = build_train_loader(
            train_set, batch["ims_per_device"], seed=int(cfg.seed), rank=info.rank, world_size=info.world_size,
            aspect_grouping=bool(cfg.data.get("aspect_grouping", True)), num_workers=int(cfg.data.num_workers),
            start_iter=start_iter,
        )
        test_loader = build_test_loader(val_set, int(cfg.eval.get("ims_per_device", 1)), rank=info.rank,
                                        world_size=info.world_size, num_workers=int(cfg.data.num_workers))

        writer = MetricWriter(run_dir, log_period=int(cfg.log.period), ims_per_batch=batch["ims_per_batch"],
                              progress=cfg.log.get("progress", "auto"))
        nonfinite = str(cfg.solver.get("nonfinite", "stop"))
        clip = cfg.solver.get("clip_grad_norm")
        ckpt_period = int(cfg.checkpoint.period)
        eval_period = int(cfg.eval.get("period", 0))
        skipped_steps = int(extra.get("skipped_steps", 0))
        train_time, train_images, timed_from = 0.0, 0, start_iter + min(5, max_iter // 10)
        metrics: dict[str, Any] = {}

        def save(name: str, it: int) -> None:
            checkpointer.save(name, it, skipped_steps=skipped_steps)

        def run_eval(it: int, final: bool) -> dict[str, Any]:
            out_dir = run_dir if final else run_dir / "eval" / f"iter_{it:07d}"
            return evaluate_model(
                ddp_model, test_loader, val_set, out_dir, cfg.eval, device=device, amp_dtype=amp_dtype,
                channels_last=channels_last_on, writer=writer.tb if gdist.is_main_process() else None, step=it,
                full_report=final or bool(cfg.eval.get("full_reports", False)),
            )

        it = start_iter
        with _StopFlag() as stop:
            ddp_model.train()
            data_iter = iter(loader)
            while it < max_iter:
                t0 = time.perf_counter()
                images, targets, image_sizes = next(data_iter)
                images = images.to(device, non_blocking=True)
                if channels_last_on:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    losses = ddp_model(images, image_sizes, targets)
                loss = sum(losses.values())
                # One collective a step decides both: skip/stop on a non-finite loss now, and
                # stop after this step if any rank got SIGTERM/SIGINT (a later signal is seen
                # at the next step).
                nonfinite_any, stop_any = _any_rank(
                    (not bool(torch.isfinite(loss)), stop.signum is not None), device)
                if nonfinite_any:
                    if nonfinite == "skip":
                        skipped_steps += 1
                        log.warning("iteration %d: non-finite loss %s, step skipped (%d so far)",
                                    it, {k: float(v.detach()) for k, v in losses.items()}, skipped_steps)
                        optimizer.zero_grad(set_to_none=True)
                        scheduler.step()
                        it += 1
                        continue
                    save("nonfinite_debug", it)
                    raise NonFiniteLossError(
                        f"iteration {it}: loss is not finite ({ {k: float(v.detach()) for k, v in losses.items()} }). "
                        f"State saved to {checkpointer.path('nonfinite_debug')}. Lower solver.base_lr, raise "
                        "solver.warmup_iters, set solver.clip_grad_norm, or solver.nonfinite=skip to skip such steps."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = clip_gradients(model, float(clip)) if clip else None
                lr_used = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                dt = time.perf_counter() - t0
                if it >= timed_from:
                    train_time += dt
                    train_images += batch["ims_per_batch"]
                scalars = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()},
                           "lr": lr_used}
                if grad_norm is not None:
                    scalars["grad_norm"] = float(grad_norm)
                if (it + 1) % writer.log_period == 0:
                    scalars["peak_mem_mb"] = _peak_memory_mb(device)
                writer.train(it, max_iter, scalars)
                it += 1
                if stop_any:
                    save("last", it)
                    if gdist.is_main_process():
                        write_status(run_dir, "interrupted", iteration=it,
                                     error=f"stopped by a signal after {it} iterations; rerun the same command to resume")
                    writer.close()
                    log.warning("stopped by a signal after %d iterations; checkpoint saved", it)
                    return {"interrupted": True, "iter": it}
                if ckpt_period and it % ckpt_period == 0 and it < max_iter:
                    save("last", it)
                if eval_period and it % eval_period == 0 and it < max_iter:
                    metrics = run_eval(it, final=False)
                    writer.eval(it - 1, metrics)
                    ddp_model.train()
        save("last", it)
        checkpointer.save("model_final", it, model_only=True)
        metrics = run_eval(it, final=True)
        final = {
            **metrics,
            "ims_per_sec": train_images / train_time if train_time > 0 else None,
            "peak_mem_mb": _peak_memory_mb(device),
            "peak_mem_kind": "cuda_allocated" if device.type == "cuda" else "process_rss",
            "skipped_steps": skipped_steps,
            "world_size": info.world_size,
            "norm_buffers_agree": _buffers_agree(model) if info.world_size > 1 else None,
        }
        writer.eval(it - 1, metrics)
        writer.final(final, iter=it - 1)
        writer.close()
        if gdist.is_main_process():
            write_status(run_dir, "done", iteration=it)
        return final
    except BaseException as exc:
        if writer is not None:
            writer.close()
        if gdist.is_main_process():
            write_status(run_dir, "failed", iteration=it, error=f"{type(exc).__name__}: {exc}")
        raise


def is_finished(run_dir: str | Path) -> bool:
    from gn_detect.engine.writers import read_status

    with contextlib.suppress(Exception):
        return read_status(run_dir).get("state") == "done"
    return False


__all__ = ["train", "resolve_batch", "is_finished", "NonFiniteLossError"]
