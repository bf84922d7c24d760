"""The training loop: :class:`Trainer` runs the steps, :class:`HookBase` subclasses do the rest.

What happens around a step (LR schedule, checkpoints, evaluation, PreciseBN, logging, signals,
timing) lives in hooks (gn_detect/engine/hooks.py); a new behaviour is a new hook, not an edit
of this loop. ``Trainer.train(start_iter, max_iter)`` calls, in registration order::

    before_train()
    for iter in range(start_iter, max_iter):
        before_step(); run_step(); after_step()     # the loop ends early after a stop (below)
    after_train()                                   # always, also when a step raised

Iteration numbering, the same everywhere (metrics.jsonl, TensorBoard, eval records, logs):
``trainer.iter`` is the 0-based index of the current iteration inside a step, and of the last
completed one from ``after_step`` on. ``trainer.iters_done`` counts completed iterations
(``iter + 1`` from ``after_step`` on): what checkpoints store, the ``start_iter`` to resume at.

Stopping: ``request_stop(reason, exit_code)`` (a signal handler, a hook) only raises a local flag. Each
step folds it, together with "the loss is not finite", into one all-reduce across ranks, so
all ranks agree in the same step: ``trainer.stopping`` is then True in that step's
``after_step``, the loop ends after it and ``trainer.state`` becomes ``"interrupted"`` (unless
it was the last iteration anyway). A non-finite loss on any rank goes to the
:class:`NonFinitePolicy`: stop (save ``nonfinite_debug`` and raise) or skip the step -- up to
``max_skipped`` steps in a row, beyond which a skipping run stops as with ``stop``.
A signal during an evaluation (``trainer.evaluating``) does not wait for a step:
:class:`~gn_detect.engine.signals.StopRequested` ends the evaluation and the run is ``interrupted``
(after a periodic one ``last.pth`` is saved as after any stop; in the final one ``model_final.pth``
was already written). Under ``solver.amp=fp16`` the step scales the loss with a GradScaler
(``trainer.scaler``; its state in :meth:`Trainer.checkpoint_extra`); an out-of-memory error in
the first :data:`OOM_STEPS` steps is :class:`BatchTooLargeError`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import Checkpointer, unwrap_model
from gn_detect.engine.signals import EXIT_INTERRUPTED, StopRequested
from gn_detect.engine.solver import clip_gradients
from gn_detect.runs.layout import NONFINITE_DEBUG

log = logging.getLogger(__name__)

__all__ = ["HookBase", "NonFiniteLossError", "NonFinitePolicy", "StepStorage", "Trainer"]

TrainState = Literal["idle", "running", "done", "interrupted", "failed"]


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN/Inf on some rank and ``solver.nonfinite=stop``."""


class BatchTooLargeError(RuntimeError):
    """The device ran out of memory in one of the first :data:`OOM_STEPS` steps of a start: the
    batch does not fit, which no later step will change. One line naming ``data.ims_per_device``."""


# An out-of-memory error in this many first steps of a start is the batch's size, not a leak.
OOM_STEPS = 10


class HookBase:
    """Called by :class:`Trainer` around the loop; override what you need. ``self.trainer`` is
    set by :meth:`Trainer.register_hooks`. Hooks read ``trainer.iter``, ``trainer.iters_done``,
    ``trainer.storage`` (this step's numbers), ``trainer.stopping`` and ``trainer.state`` (in
    ``after_train``: done, interrupted or failed) and may add to ``trainer.results``."""

    trainer: "Trainer"

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


@dataclass
class StepStorage:
    """What one step measured, for the hooks of that step."""

    losses: dict[str, float] = field(default_factory=dict)  # each loss term, and "loss" (their sum)
    lr: float | None = None          # learning rate the optimizer step used (param group 0)
    grad_norm: float | None = None   # before clipping; None without solver.clip_grad_norm
    data_time: float = 0.0           # seconds waiting for the batch
    step_time: float = 0.0           # seconds of run_step (batch, forward, backward, update)
    num_images: int = 0              # images in this step over all ranks
    skipped: bool = False            # non-finite loss, step dropped (solver.nonfinite=skip)
    eval: dict[str, Any] | None = None  # metrics of an evaluation run after this step (EvalHook)


class NonFinitePolicy:
    """What a step does when its loss is not finite on some rank (``solver.nonfinite``).

    ``stop``: saves ``checkpoints/nonfinite_debug.pth`` (the state that produced the loss, when
    a checkpointer is given) and raises :class:`NonFiniteLossError` naming the fixes. ``skip``:
    the step is dropped (no backward, no update; the LR schedule still advances) and counted in
    ``trainer.skipped_steps`` and ``trainer.skipped_in_a_row`` (reset by a finite step), which
    checkpoints keep; once more than ``max_skipped`` steps in a row were skipped (None: no limit;
    runs get ``solver.max_skipped_steps``, see gn_detect/config/validate.py) it stops as ``stop`` does.
    """

    def __init__(self, mode: str = "stop", checkpointer: Checkpointer | None = None,
                 max_skipped: int | None = None) -> None:
        if mode not in ("stop", "skip"):
            raise ValueError(f"solver.nonfinite={mode!r}: use stop or skip")
        self.mode, self.checkpointer, self.max_skipped = mode, checkpointer, max_skipped

    def __call__(self, trainer: "Trainer", losses: dict[str, float]) -> None:
        if self.mode == "skip":
            trainer.skipped_steps += 1
            trainer.skipped_in_a_row += 1
            log.warning("iteration %d: non-finite loss %s, step skipped (%d in a row, %d so far)",
                        trainer.iter, losses, trainer.skipped_in_a_row, trainer.skipped_steps)
            if self.max_skipped is None or trainer.skipped_in_a_row <= self.max_skipped:
                return
            self._stop(trainer, f"{trainer.skipped_in_a_row} steps in a row had a non-finite loss (more than "
                                f"solver.max_skipped_steps={self.max_skipped}; last: {losses})")
        self._stop(trainer, f"loss is not finite ({losses})")

    def _stop(self, trainer: "Trainer", problem: str) -> NoReturn:
        saved = "No state was saved."
        if self.checkpointer is not None:
            self.checkpointer.save(NONFINITE_DEBUG, trainer.iters_done, **trainer.checkpoint_extra())
            saved = f"State saved to {self.checkpointer.path(NONFINITE_DEBUG)}."
        skip = ("raise solver.max_skipped_steps to tolerate more" if self.mode == "skip"
                else "solver.nonfinite=skip to skip such steps")
        raise NonFiniteLossError(
            f"iteration {trainer.iter}: {problem}. {saved} Lower solver.base_lr, raise solver.warmup_iters, "
            f"set solver.clip_grad_norm, or {skip}."
        )


class Trainer:
    """Owns the loop and the step; everything else is a hook.

    ``model`` is what the step calls (DDP-wrapped under torchrun); ``bare_model`` the module
    inside. ``data_loader`` yields ``(images, targets, image_sizes)`` batches (endless);
    ``ims_per_batch`` is the number of images of one step over all ranks (for timing),
    ``ims_per_device`` those of one rank (for messages); both from ``config.resolve_batch``.
    """

    def __init__(self, model: nn.Module, data_loader: Iterable[Any], optimizer: torch.optim.Optimizer, *,
                 device: torch.device, amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                 clip_grad_norm: float | None = None, nonfinite: NonFinitePolicy | None = None,
                 ims_per_batch: int = 0, ims_per_device: int = 0) -> None:
        # fp16 gradients underflow to zero without loss scaling; bf16 and fp32 need none (disabled: a no-op)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.model, self.bare_model = model, unwrap_model(model)
        self.data_loader, self.optimizer = data_loader, optimizer
        self.device, self.amp_dtype, self.channels_last = device, amp_dtype, channels_last
        self.clip_grad_norm = clip_grad_norm
        self.nonfinite = nonfinite or NonFinitePolicy("stop")
        self.ims_per_batch, self.ims_per_device = ims_per_batch, ims_per_device
        self.hooks: list[HookBase] = []
        self.start_iter = self.max_iter = 0
        self.iter = -1
        self.iters_done = 0  # completed iterations: what a checkpoint taken now stores
        self.skipped_steps = 0
        self.skipped_in_a_row = 0  # non-finite steps since the last finite one
        self.storage = StepStorage()
        self.state: TrainState = "idle"
        self.stopping = False
        self.evaluating = False  # an evaluation runs (EvalHook): a stop signal then raises StopRequested
        self.stop_reason: str | None = None  # set locally by request_stop
        self.stop_exit_code = EXIT_INTERRUPTED  # the process's exit status after an early stop
        self.run_lock: Any = None  # the run folder's lock (build_trainer), released by train()
        self.results: dict[str, Any] = {}     # final numbers hooks contribute (eval metrics, timing)
        self._data_iter: Any = None

    # ------------------------------------------------------------------ hooks
    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        """Appends hooks (None entries are ignored); they run in the order registered."""
        for h in hooks:
            if h is None:
                continue
            if not isinstance(h, HookBase):
                raise TypeError(f"{type(h).__name__} is not a hook: subclass gn_detect.engine.train_loop.HookBase")
            h.trainer = self
            self.hooks.append(h)

    def remove_hooks(self, kind: type[HookBase]) -> list[HookBase]:
        """Removes and returns every registered hook that is an instance of ``kind``."""
        removed = [h for h in self.hooks if isinstance(h, kind)]
        self.hooks = [h for h in self.hooks if not isinstance(h, kind)]
        return removed

    def get_hook(self, kind: type[HookBase]) -> HookBase | None:
        """The first registered hook that is an instance of ``kind``, or None."""
        return next((h for h in self.hooks if isinstance(h, kind)), None)

    def checkpoint_extra(self) -> dict[str, Any]:
        """Loop state that checkpoints carry besides model, optimizer, scheduler and RNG (the fp16
        loss scale under ``grad_scaler``); :meth:`restore_extra` reads it back."""
        extra: dict[str, Any] = {"skipped_steps": self.skipped_steps, "skipped_in_a_row": self.skipped_in_a_row}
        if self.scaler.is_enabled():
            extra["grad_scaler"] = self.scaler.state_dict()
        return extra

    def restore_extra(self, extra: dict[str, Any]) -> None:
        """The loop state of :meth:`checkpoint_extra` from a resumed checkpoint's ``extra``."""
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        self.skipped_in_a_row = int(extra.get("skipped_in_a_row", 0))
        if self.scaler.is_enabled() and extra.get("grad_scaler"):
            self.scaler.load_state_dict(extra["grad_scaler"])

    def request_stop(self, reason: str, exit_code: int = EXIT_INTERRUPTED) -> None:
        """Ask the loop to stop after the current step (decided with the other ranks, see module doc);
        ``exit_code`` is the status the process should exit with (128 + signal number for a signal)."""
        self.stop_reason, self.stop_exit_code = reason, exit_code

    # ------------------------------------------------------------------ loop
    def train(self, start_iter: int, max_iter: int) -> None:
        """Runs iterations ``start_iter .. max_iter - 1``; ``self.state`` tells how it ended."""
        self.start_iter, self.max_iter = start_iter, max_iter
        self.iter, self.iters_done, self.state, self.stopping = start_iter - 1, start_iter, "running", False
        self.stop_reason, self.stop_exit_code, self.results = None, EXIT_INTERRUPTED, {}
        log.info("training from iteration %d to %d", start_iter, max_iter)
        try:
            self._call("before_train")
            self._data_iter = iter(self.data_loader)
            for self.iter in range(start_iter, max_iter):
                self._call("before_step")
                self.run_step()
                self.iters_done = self.iter + 1
                self._call("after_step")
                if self.stopping:
                    break
            self.state = "interrupted" if self.iters_done < max_iter else "done"
        except StopRequested as stop:  # a signal during a periodic evaluation: stop as after a step
            self._stopped(stop)
            self.state = "interrupted"
        except BaseException:
            self.state, self._data_iter = "failed", None
            self.after_train()
            raise
        self._data_iter = None  # the loader's workers can exit before the final evaluation
        self.after_train()

    def _stopped(self, stop: StopRequested) -> None:
        self.stop_reason, self.stop_exit_code, self.evaluating = stop.reason, stop.exit_code, False
        log.warning("%s during the evaluation after iteration %d: stopping", stop.reason, self.iter)

    def _call(self, name: str) -> None:
        for h in self.hooks:
            getattr(h, name)()

    def after_train(self) -> None:
        """Every hook's ``after_train``, even when one raises (the first error is re-raised
        after the others ran, with ``state`` set to failed); errors during a failed run's
        clean-up are logged, the original error propagates."""
        first: BaseException | None = None
        for h in self.hooks:
            try:
                h.after_train()
            except StopRequested as stop:  # a signal in the final evaluation: interrupted, the others still run
                self._stopped(stop)
                self.state = "interrupted"
            except BaseException as exc:  # noqa: BLE001 - the others still release their resources
                if first is None and self.state != "failed":
                    first = exc
                else:
                    log.error("%s.after_train failed: %s: %s", type(h).__name__, type(exc).__name__, exc)
                self.state = "failed"
        if first is not None:
            raise first

    # ------------------------------------------------------------------ step
    def prepare_batch(self, batch: Any) -> tuple[torch.Tensor, list[dict[str, Any]], list[tuple[int, int]]]:
        """A loader batch on the device (channels_last when enabled)."""
        images, targets, image_sizes = batch
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        return images, targets, image_sizes

    def forward(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """The loss terms of ``model`` (training mode) on ``batch``, under the run's autocast."""
        images, targets, image_sizes = self.prepare_batch(batch)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            return model(images, image_sizes, targets)

    def _agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag True on every rank when any rank raised it, in one all-reduce: a decision one
        rank took alone (skip a step, stop) would leave the others waiting in DDP's all-reduce."""
        if gdist.get_world_size() == 1:
            return flags
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self.device)
        dist.all_reduce(t)
        return tuple(bool(v > 0) for v in t.tolist())

    def run_step(self) -> None:
        """:meth:`step`, with an out-of-memory error in the first :data:`OOM_STEPS` steps of this
        start turned into :class:`BatchTooLargeError` (one line naming the batch and the memory)."""
        try:
            self.step()
        except torch.OutOfMemoryError as e:
            if self.iter - self.start_iter >= OOM_STEPS:
                raise
            per_device = self.ims_per_device
            memory = ""
            if self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory / 2**30
                memory = f", {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB of {total:.1f} GiB in use"
            raise BatchTooLargeError(
                f"{self.device.type} out of memory in iteration {self.iter} with {per_device} images per device"
                f"{memory}: the batch does not fit. Fix: lower data.ims_per_device (now {per_device}) or "
                f"data.max_size") from e

    def step(self) -> None:
        """Batch, forward, loss; the one collective deciding non-finite and stop; then backward
        (loss-scaled under fp16), clipping and the optimizer step (or the non-finite policy).
        Fills ``self.storage``."""
        t0 = time.perf_counter()
        batch = next(self._data_iter)
        data_time = time.perf_counter() - t0
        losses = self.forward(self.model, batch)
        loss = sum(losses.values())
        values = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()}}
        nonfinite, stop = self._agree(not bool(torch.isfinite(loss)), self.stop_reason is not None)
        self.stopping = stop and self.iter + 1 < self.max_iter
        self.storage = StepStorage(losses=values, data_time=data_time, num_images=self.ims_per_batch)
        self.optimizer.zero_grad(set_to_none=True)
        if nonfinite:
            self.nonfinite(self, values)  # raises, or counts the skip
            self.storage.skipped = True
        else:
            self.skipped_in_a_row = 0
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # true gradients for clipping and grad_norm
            self.storage.grad_norm = clip_gradients(self.bare_model, self.clip_grad_norm)
            self.storage.lr = self.optimizer.param_groups[0]["lr"]
            self.scaler.step(self.optimizer)  # skipped by the scaler when an fp16 gradient overflowed
            self.scaler.update()
        self.storage.step_time = time.perf_counter() - t0
