"""The standard hooks of a training run: everything around the step that is not the step.

Each hook reads the :class:`~gn_detect.engine.train_loop.Trainer` it is registered with
(``iter``, ``iters_done``, ``max_iter``, ``storage``, ``stopping``, ``state``, ``results``) and
is given its collaborators (scheduler, checkpointer, metric writer, an evaluate function...) at
construction, so each one can be tested with a stand-in trainer. The order
:func:`gn_detect.engine.trainer.build_trainer` registers them in matters, and is::

    LRScheduler, PreciseBN, PeriodicCheckpointer, EvalHook, IterationTimer, SignalHandler,
    MetricsWriter

PreciseBN runs before the checkpoint and the evaluation of the same iteration (both see the
recomputed statistics); MetricsWriter comes last so a step's train record and then its
evaluation record are written in that order, and the final record holds every hook's results.
Periodic work (checkpoint, evaluation, PreciseBN) is skipped in a step after which the loop
stops early (``trainer.stopping``): a preempted job should save and exit, not evaluate.
"""
from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import Checkpointer
from gn_detect.engine.precise_bn import bn_layers, update_bn_stats
from gn_detect.engine.signals import STOP_SIGNALS, StopRequested, exit_code, preempt_signal
from gn_detect.engine.train_loop import HookBase
from gn_detect.engine.writers import MetricWriter
from gn_detect.runs import RunFolder
from gn_detect.runs.layout import FINAL, LAST

try:
    import resource  # POSIX only
except ImportError:  # pragma: no cover - Windows: no RSS peak, CUDA runs still report theirs
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "EvalHook", "IterationTimer", "LRScheduler", "MetricsWriter", "PeriodicCheckpointer", "PreciseBN",
    "SignalHandler", "buffers_agree", "peak_memory_mb",
]


def _due(trainer: Any, period: int) -> bool:
    """Periodic work after this step: every ``period`` completed iterations, not at the last one
    (after_train does the final work) and not when the loop stops early after this step."""
    done = trainer.iters_done
    return bool(period) and done % period == 0 and done < trainer.max_iter and not trainer.stopping


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak CUDA memory allocated on ``device``, else the peak RSS of this process (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def buffers_agree(model: nn.Module) -> bool:
    """Whether every rank holds the same norm statistics (running mean/var), to 1e-5. Collective."""
    local = {k: v.detach().double().cpu() for k, v in model.state_dict().items()
             if k.endswith(("running_mean", "running_var"))}
    ref = gdist.all_gather_object(local)[0]
    return all(torch.allclose(local[k], ref[k], rtol=1e-5, atol=1e-6) for k in local)


class LRScheduler(HookBase):
    """Steps a per-iteration LR scheduler after every step (skipped steps too: the schedule is
    a function of the iteration, see gn_detect/engine/solver.py)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def after_step(self) -> None:
        self.scheduler.step()


class PeriodicCheckpointer(HookBase):
    """``checkpoints/last.pth`` every ``period`` iterations (0: only at the end); at the end
    ``last.pth`` and the model-only ``model_final.pth``; on an early stop ``last.pth``, so the
    same command resumes there. Nothing when the run failed (the last good ``last.pth`` stays)."""

    def __init__(self, checkpointer: Checkpointer, period: int) -> None:
        self.checkpointer, self.period = checkpointer, period

    def after_step(self) -> None:
        t = self.trainer
        if _due(t, self.period):
            self.checkpointer.save(LAST, t.iters_done, **t.checkpoint_extra())

    def after_train(self) -> None:
        t = self.trainer
        if t.state in ("done", "interrupted"):
            self.checkpointer.save(LAST, t.iters_done, **t.checkpoint_extra())
        if t.state == "done":
            self.checkpointer.save(FINAL, t.iters_done, model_only=True)


class EvalHook(HookBase):
    """Evaluation every ``period`` iterations (0: only at the end) and at the end of a finished
    run. ``evaluate(iter, final)`` returns the headline metrics (rank 0; {} elsewhere). They go
    to ``trainer.storage.eval`` (MetricsWriter writes them once, at ``iter``), the final ones
    also to ``trainer.results``. ``trainer.evaluating`` is True meanwhile: a stop signal then
    ends the evaluation at once (SignalHandler); one that came before the final evaluation
    stops the run before it starts."""

    def __init__(self, period: int, evaluate: Callable[[int, bool], dict[str, Any]]) -> None:
        self.period, self.evaluate = period, evaluate

    def _run(self, final: bool) -> dict[str, Any]:
        t = self.trainer
        t.evaluating = True
        try:
            return self.evaluate(t.iter, final)
        finally:
            t.evaluating = False

    def after_step(self) -> None:
        if _due(self.trainer, self.period):
            self.trainer.storage.eval = self._run(False)

    def after_train(self) -> None:
        t = self.trainer
        if t.state == "done":
            if getattr(t, "stop_reason", None) is not None:  # a signal during the final checkpoint: no evaluation
                raise StopRequested(t.stop_reason, t.stop_exit_code)
            metrics = self._run(True)
            self.trainer.storage.eval = metrics
            self.trainer.results.update(metrics)


class PreciseBN(HookBase):
    """Recomputes BN running statistics (gn_detect/engine/precise_bn.py) before each evaluation:
    every ``period`` iterations and at the end. ``batches(start)`` gives training batches from
    loader position ``start`` (the iteration after this one), so the statistics do not depend on
    where a run was resumed. A model without BN logs that once and does nothing."""

    def __init__(self, period: int, num_iter: int, batches: Callable[[int], Iterable[Any]]) -> None:
        self.period, self.num_iter, self.batches = period, num_iter, batches
        self.enabled = True

    def before_train(self) -> None:
        if not bn_layers(self.trainer.bare_model):
            log.info("PreciseBN: the model has no BatchNorm layer in training mode; solver.precise_bn does nothing")
            self.enabled = False

    def _update(self) -> None:
        t = self.trainer
        update_bn_stats(t.bare_model, self.batches(t.iters_done), t.forward, self.num_iter)

    def after_step(self) -> None:
        if self.enabled and _due(self.trainer, self.period):
            self._update()

    def after_train(self) -> None:
        if self.enabled and self.trainer.state == "done":
            self._update()


class IterationTimer(HookBase):
    """Training speed and peak memory for the final record: images per second over the step
    times (``storage.step_time``: batch, forward, backward, update; hooks not counted) of the
    iterations after the first ``min(warmup, max_iter // 10)`` of this session (start-up and
    first-iteration costs excluded; skipped steps excluded)."""

    def __init__(self, device: torch.device, warmup: int = 5) -> None:
        self.device, self.warmup = device, warmup
        self.time, self.images = 0.0, 0

    def before_train(self) -> None:
        t = self.trainer
        self.timed_from = t.start_iter + min(self.warmup, t.max_iter // 10)
        self.time, self.images = 0.0, 0

    def after_step(self) -> None:
        s = self.trainer.storage
        if self.trainer.iter >= self.timed_from and not s.skipped:
            self.time += s.step_time
            self.images += s.num_images

    def after_train(self) -> None:
        if self.trainer.state == "done":
            self.trainer.results.update({
                "ims_per_sec": self.images / self.time if self.time > 0 else None,
                "peak_mem_mb": peak_memory_mb(self.device),
                "peak_mem_kind": "cuda_allocated" if self.device.type == "cuda" else "process_rss",
            })


class SignalHandler(HookBase):
    """SIGTERM/SIGINT (a scheduler's preemption, Ctrl-C) ask the trainer to stop with exit status
    128 + the signal number (gn_detect/engine/signals.py): all ranks agree at the next step,
    ``last.pth`` is saved and the run ends ``interrupted``. During an evaluation (``trainer.
    evaluating``) the handler raises :class:`StopRequested` to end it at once; in the final one
    ``model_final.pth`` is already written, and re-running the command evaluates again. The data-loader workers ignore both
    signals (``ignore_stop_signals``), so a signal to the whole process group is handled here
    alone. The pre-emption signal (SIGUSR2, submitit's) stops the run the same way (exit status
    140); launch.py then hands it to submitit, which re-submits the job. The previous handlers
    come back after training. Not on the main thread, signals cannot be caught: noted."""

    def __init__(self, signals: Sequence[int] | None = None) -> None:
        self.signals = tuple(signals) if signals is not None else (*STOP_SIGNALS, preempt_signal())
        self._old: dict[int, Any] = {}

    def before_train(self) -> None:
        for s in self.signals:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner's worker thread)
                log.info("not on the main thread: %s will not stop training gracefully", signal.Signals(s).name)

    def _handle(self, signum: int, frame: Any) -> None:
        reason = f"signal {signal.Signals(signum).name}"
        self.trainer.request_stop(reason, exit_code(signum))
        if getattr(self.trainer, "evaluating", False):  # an evaluation can take long: end it now (EvalHook)
            raise StopRequested(reason, exit_code(signum))

    def after_train(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


class MetricsWriter(HookBase):
    """metrics.jsonl, TensorBoard and progress through :class:`MetricWriter` (rank 0 writes).

    Per step: a train record of ``storage.losses``, lr, grad_norm and data_time (not for
    skipped steps; peak memory on logging iterations), then ``storage.eval`` if an evaluation
    ran, with its report's per-class AP and PR figure where it wrote one. At the end of a finished
    run: the final record = ``trainer.results`` plus skipped_steps, world_size and, under DDP,
    whether all ranks hold the same norm statistics. Closes the writer and writes the run's
    curves figure whatever the outcome (done, interrupted, failed)."""

    def __init__(self, writer: MetricWriter, device: torch.device) -> None:
        self.writer, self.device = writer, device

    def after_step(self) -> None:
        t, s = self.trainer, self.trainer.storage
        if not s.skipped:
            scalars = {**s.losses, "lr": s.lr, "data_time": s.data_time}
            if s.grad_norm is not None:
                scalars["grad_norm"] = s.grad_norm
            if (t.iter + 1) % self.writer.log_period == 0:
                scalars["peak_mem_mb"] = peak_memory_mb(self.device)
            self.writer.train(t.iter, t.max_iter, {k: v for k, v in scalars.items() if v is not None})
        if s.eval is not None:
            self.writer.eval(t.iter, s.eval)
            self.writer.report(RunFolder(self.writer.run_dir).eval_folder(t.iter), t.iter)

    def after_train(self) -> None:
        t = self.trainer
        try:
            if t.state == "done":
                world = gdist.get_world_size()
                t.results.update({"skipped_steps": t.skipped_steps, "world_size": world,
                                  "norm_buffers_agree": buffers_agree(t.bare_model) if world > 1 else None})
                if t.storage.eval is not None:
                    self.writer.eval(t.iter, t.storage.eval)
                    self.writer.report(self.writer.run_dir, t.iter)
                self.writer.final(t.results, iter=t.iter)
        finally:
            self.writer.close()
            self.writer.write_curves()
