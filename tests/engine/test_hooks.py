"""Each standard hook on its own, driven by a stand-in trainer (milliseconds each), and the
data-loader workers' signal disposition."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gn_detect.engine.hooks import (
    EvalHook,
    IterationTimer,
    LRScheduler,
    MetricsWriter,
    PeriodicCheckpointer,
    PreciseBN,
    SignalHandler,
)
from gn_detect.engine.signals import ignore_stop_signals
from gn_detect.engine.train_loop import StepStorage
from gn_detect.engine.writers import MetricWriter

from ._train_utils import tb_scalars


def fake_trainer(max_iter: int = 5, start_iter: int = 0, **kw) -> SimpleNamespace:
    t = SimpleNamespace(start_iter=start_iter, max_iter=max_iter, iter=start_iter - 1, iters_done=start_iter,
                        stopping=False, state="running", storage=StepStorage(), results={}, skipped_steps=0,
                        stop_reason=None, bare_model=nn.Linear(1, 1))
    t.checkpoint_extra = lambda: {"skipped_steps": t.skipped_steps}
    t.request_stop = lambda reason, exit_code=1: t.__dict__.update(stop_reason=reason, stop_exit_code=exit_code)
    t.__dict__.update(kw)
    return t


def run(hook, t, *, state: str = "done", stop_after: int | None = None, storage=None) -> None:
    """The Trainer's calls for iterations start_iter .. max_iter-1 (or until stop_after)."""
    hook.trainer = t
    hook.before_train()
    for i in range(t.start_iter, t.max_iter):
        t.iter = i
        hook.before_step()
        t.storage = storage(i) if storage else StepStorage(losses={"loss": float(i)}, lr=0.1, num_images=2)
        t.iters_done = i + 1
        t.stopping = stop_after == i
        hook.after_step()
        if t.stopping:
            break
    t.state = state
    hook.after_train()


class FakeCheckpointer:
    def __init__(self) -> None:
        self.saved = []

    def save(self, name, iteration, *, model_only=False, **extra):
        self.saved.append((name, iteration, model_only, extra))


def test_lr_scheduler_steps_after_every_step():
    sched = SimpleNamespace(steps=0)
    sched.step = lambda: setattr(sched, "steps", sched.steps + 1)
    run(LRScheduler(sched), fake_trainer(max_iter=4))
    assert sched.steps == 4


@pytest.mark.parametrize("state, stop_after, expected", [
    ("done", None, [("last", 2), ("last", 4), ("last", 5), ("model_final", 5)]),
    ("interrupted", 2, [("last", 2), ("last", 3)]),  # no periodic save in the stopping step
    ("failed", None, [("last", 2), ("last", 4)]),  # nothing more: the last good last.pth stays
])
def test_periodic_checkpointer(state, stop_after, expected):
    ck = FakeCheckpointer()
    t = fake_trainer(max_iter=5, skipped_steps=1)
    run(PeriodicCheckpointer(ck, period=2), t, state=state, stop_after=stop_after)
    assert [(n, it) for n, it, _, _ in ck.saved] == expected
    for name, _, model_only, extra in ck.saved:
        assert (model_only, extra) == ((True, {}) if name == "model_final" else (False, {"skipped_steps": 1}))


def test_eval_hook_periodic_and_final():
    calls = []

    def evaluate(it, final):
        calls.append((it, final))
        return {"AP": it / 10}

    t = fake_trainer(max_iter=5)
    evals = []
    hook = EvalHook(2, evaluate)
    hook.trainer = t
    for i in range(5):
        t.iter, t.iters_done, t.storage = i, i + 1, StepStorage()
        hook.after_step()
        evals.append(t.storage.eval)
    t.state = "done"
    hook.after_train()
    assert calls == [(1, False), (3, False), (4, True)]
    assert evals == [None, {"AP": 0.1}, None, {"AP": 0.3}, None]
    assert t.storage.eval == t.results == {"AP": 0.4}
    calls.clear()
    run(EvalHook(2, evaluate), fake_trainer(max_iter=5), state="interrupted", stop_after=1)
    assert calls == []  # not in the stopping step, not at the end of an interrupted run


def test_metrics_writer_records_and_tensorboard_once_per_evaluation(tmp_path):
    def storage(i):
        s = StepStorage(losses={"loss": 1.0 + i, "loss_cls": 0.5}, lr=0.01, data_time=0.001, num_images=2,
                        skipped=i == 2, grad_norm=3.0)
        s.eval = {"AP": 0.25} if i == 1 else None
        return s

    writer = MetricWriter(tmp_path, log_period=1, progress="none")
    t = fake_trainer(max_iter=4, results={"AP": 0.5, "ims_per_sec": 10.0})
    t.storage = StepStorage()
    hook = MetricsWriter(writer, torch.device("cpu"))

    class FinalEval:  # what EvalHook leaves after the final evaluation
        def after_train(self):
            t.storage.eval = {"AP": 0.5}

    hook.trainer = t
    for i in range(4):
        t.iter, t.iters_done, t.storage = i, i + 1, storage(i)
        hook.after_step()
    t.state = "done"
    FinalEval().after_train()
    hook.after_train()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["type"], r["iter"]) for r in recs] == [
        ("train", 0), ("train", 1), ("eval", 1), ("train", 3), ("eval", 3), ("final", 3)]  # 2 was skipped
    assert recs[0]["lr"] == 0.01 and recs[0]["grad_norm"] == 3.0 and recs[0]["peak_mem_mb"] > 0
    assert recs[-1] == {**recs[-1], "AP": 0.5, "ims_per_sec": 10.0, "skipped_steps": 0, "world_size": 1,
                        "norm_buffers_agree": None}
    assert tb_scalars(tmp_path, "eval/AP") == [(1, 0.25), (3, 0.5)]  # once each, at its iteration
    assert writer._file is None and writer.tb is None  # closed


def test_metrics_writer_closes_on_failure(tmp_path):
    writer = MetricWriter(tmp_path, log_period=1, progress="none", use_tensorboard=False)
    run(MetricsWriter(writer, torch.device("cpu")), fake_trainer(max_iter=2), state="failed")
    types = [json.loads(line)["type"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert types == ["train", "train"] and writer._file is None  # no final record


def test_signal_handler_turns_sigterm_into_a_stop_request():
    previous = signal.getsignal(signal.SIGTERM)
    t = fake_trainer()
    hook = SignalHandler()
    hook.trainer = t
    hook.before_train()
    try:
        assert signal.getsignal(signal.SIGTERM) == hook._handle  # else the kill below would end pytest
        os.kill(os.getpid(), signal.SIGTERM)
        assert t.stop_reason == "signal SIGTERM" and t.stop_exit_code == 143  # 128 + SIGTERM, as a shell reports it
    finally:
        hook.after_train()
    assert signal.getsignal(signal.SIGTERM) == previous


def test_iteration_timer_skips_warmup_and_skipped_steps():
    def storage(i):
        return StepStorage(step_time=100.0 if i < 2 else 0.5, num_images=4, skipped=i == 5)

    t = fake_trainer(max_iter=20, start_iter=10)  # resumed: warm-up counts from start_iter
    run(IterationTimer(torch.device("cpu")), t, storage=lambda i: storage(i - 10))
    # iterations 10, 11 are warm-up (min(5, 20 // 10) = 2); 15 was skipped: 7 timed steps
    assert t.results["ims_per_sec"] == pytest.approx(7 * 4 / (7 * 0.5))
    assert t.results["peak_mem_mb"] > 0 and t.results["peak_mem_kind"] == "process_rss"
    t = fake_trainer(max_iter=3)
    run(IterationTimer(torch.device("cpu")), t, state="interrupted")
    assert t.results == {}


def test_precise_bn_hook_before_evaluations_and_at_the_end():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    starts = []

    def make(start):
        g = torch.Generator().manual_seed(start)
        return [torch.randn(2, 3, 4, 4, generator=g) + start for _ in range(3)]

    def batches(start):
        starts.append(start)
        return iter(make(start))

    t = fake_trainer(max_iter=5, bare_model=model, forward=lambda m, b: m(b))
    run(PreciseBN(2, 3, batches), t)
    assert starts == [2, 4, 5]  # after iterations 1 and 3, and at the end
    with torch.no_grad():  # the last update: the batches from loader position 5
        expected = torch.stack([model[0](x).mean((0, 2, 3)) for x in make(5)]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected)
    starts.clear()
    run(PreciseBN(2, 3, batches), fake_trainer(max_iter=5, bare_model=model, forward=lambda m, b: m(b)),
        state="interrupted", stop_after=1)
    assert starts == []


def test_precise_bn_hook_without_bn_says_so_once(caplog):
    caplog.set_level(logging.INFO, logger="gn_detect.engine.hooks")
    t = fake_trainer(max_iter=4, bare_model=nn.Sequential(nn.Conv2d(3, 2, 1), nn.GroupNorm(1, 2)))
    hook = PreciseBN(2, 3, lambda start: pytest.fail("no batches needed without BN"))
    run(hook, t)
    assert not hook.enabled and caplog.text.count("solver.precise_bn does nothing") == 1


def _sleeping_worker(ready) -> None:
    ignore_stop_signals(0)
    ready.set()
    time.sleep(60)


def test_loader_worker_ignores_stop_signals_except_its_parents():
    ctx = multiprocessing.get_context("fork")  # how DataLoader starts workers on Linux
    ready = ctx.Event()
    worker = ctx.Process(target=_sleeping_worker, args=(ready,), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        for name in ("TERM", "INT"):  # from another process, as `kill -TERM -<group>` sends them
            subprocess.run(["kill", f"-{name}", str(worker.pid)], check=True)
        time.sleep(0.5)
        assert worker.is_alive()
        worker.terminate()  # the parent's SIGTERM (PyTorch's shutdown, multiprocessing at exit) still ends it
        worker.join(10)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
