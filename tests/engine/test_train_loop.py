"""The Trainer's loop and step, in-process on a toy model: hook order, what a step does, the
non-finite policy, stop requests, the one collective per step, clean-up when something fails."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import Checkpointer, load_checkpoint
from gn_detect.engine.hooks import LRScheduler
from gn_detect.engine.solver import build_lr_scheduler
from gn_detect.engine.train_loop import HookBase, NonFiniteLossError, NonFinitePolicy, Trainer


class ToyDetector(nn.Module):
    """model(images, image_sizes, targets) -> losses, like RetinaNet in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, images, image_sizes, targets):
        y = self.bn(self.conv(images))
        return {"loss_a": (y - 1).pow(2).mean(), "loss_b": 0.1 * y.abs().mean()}


class Batches:
    """An endless loader of (images, targets, image_sizes); batch i is NaN when i is in ``nan_at``."""

    def __init__(self, nan_at=(), n: int = 4) -> None:
        self.nan_at, self.n = set(nan_at), n

    def __iter__(self):
        i = 0
        while True:
            g = torch.Generator().manual_seed(i)
            images = torch.randn(2, 3, 6, 6, generator=g)
            if i in self.nan_at:
                images[0, 0, 0, 0] = float("nan")
            yield images, [{"id": i}, {"id": i}], [(6, 6), (6, 6)]
            i += 1


class Recorder(HookBase):
    def __init__(self, name: str, events: list) -> None:
        self.name, self.events = name, events

    def before_train(self):
        self.events.append((self.name, "before_train", self.trainer.iter))

    def before_step(self):
        self.events.append((self.name, "before_step", self.trainer.iter))

    def after_step(self):
        self.events.append((self.name, "after_step", self.trainer.iter))

    def after_train(self):
        self.events.append((self.name, "after_train", self.trainer.state))


def _trainer(model=None, loader=None, **kw) -> Trainer:
    model = model or ToyDetector()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainer(model, loader or Batches(), opt, device=torch.device("cpu"), ims_per_batch=2, **kw)


def test_hooks_run_in_order_around_each_step():
    events: list = []
    t = _trainer()
    t.register_hooks([Recorder("a", events), None, Recorder("b", events)])
    t.train(3, 5)
    assert events == [
        ("a", "before_train", 2), ("b", "before_train", 2),
        ("a", "before_step", 3), ("b", "before_step", 3), ("a", "after_step", 3), ("b", "after_step", 3),
        ("a", "before_step", 4), ("b", "before_step", 4), ("a", "after_step", 4), ("b", "after_step", 4),
        ("a", "after_train", "done"), ("b", "after_train", "done"),
    ]
    assert (t.iter, t.iters_done, t.state) == (4, 5, "done")
    s = t.storage
    assert set(s.losses) == {"loss", "loss_a", "loss_b"}
    assert s.losses["loss"] == pytest.approx(s.losses["loss_a"] + s.losses["loss_b"])
    assert s.lr == 0.1 and s.grad_norm is None and s.num_images == 2 and not s.skipped
    assert 0 <= s.data_time <= s.step_time


def test_run_step_is_one_sgd_step_with_clipping():
    model = ToyDetector()
    ref = copy.deepcopy(model)
    t = _trainer(model, clip_grad_norm=0.01)
    t.train(0, 1)
    # the same step by hand
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    images, targets, sizes = next(iter(Batches()))
    loss = sum(ref(images, sizes, targets).values())
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.01)
    opt.step()
    assert t.storage.grad_norm == pytest.approx(float(norm)) and float(norm) > 0.01  # clipping did act
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_nonfinite_skip_drops_the_step_and_still_steps_the_schedule():
    model = ToyDetector()
    t = _trainer(model, loader=Batches(nan_at={1}), nonfinite=NonFinitePolicy("skip"))
    sched = build_lr_scheduler(t.optimizer, max_iter=4, warmup_iters=4)
    seen = []

    class Watch(HookBase):
        def after_step(self):
            seen.append((self.trainer.storage.skipped, [p.detach().clone() for p in model.parameters()]))

    t.register_hooks([LRScheduler(sched), Watch()])
    t.train(0, 4)
    assert t.skipped_steps == 1 and t.state == "done"
    assert [s for s, _ in seen] == [False, True, False, False]
    assert all(torch.equal(a, b) for a, b in zip(seen[0][1], seen[1][1]))  # no update in the skipped step
    assert sched.last_epoch == 4  # the schedule advanced through the skipped step
    assert t.checkpoint_extra() == {"skipped_steps": 1, "skipped_in_a_row": 0}


def test_nonfinite_stop_saves_the_state_and_names_the_fixes(tmp_path):
    model = ToyDetector()
    t = _trainer(model, loader=Batches(nan_at={2}))
    t.nonfinite = NonFinitePolicy("stop", Checkpointer(tmp_path, model, t.optimizer))
    events: list = []
    t.register_hooks([Recorder("r", events)])
    with pytest.raises(NonFiniteLossError) as info:
        t.train(0, 5)
    msg = str(info.value)
    debug = tmp_path / "checkpoints" / "nonfinite_debug.pth"
    assert msg.startswith("iteration 2: loss is not finite") and str(debug) in msg
    for fix in ("solver.base_lr", "solver.warmup_iters", "solver.clip_grad_norm", "solver.nonfinite=skip"):
        assert fix in msg
    state = load_checkpoint(debug)
    assert state["iteration"] == 2 and "optimizer" in state  # the state that produced the loss
    assert events[-1] == ("r", "after_train", "failed") and t.iters_done == 2
    with pytest.raises(ValueError, match="solver.nonfinite='bogus'"):
        NonFinitePolicy("bogus")


class StopAt(HookBase):
    def __init__(self, at: int) -> None:
        self.at, self.stopping_seen = at, []

    def before_step(self):
        if self.trainer.iter == self.at:
            self.trainer.request_stop("test")

    def after_step(self):
        self.stopping_seen.append(self.trainer.stopping)


def test_a_stop_request_ends_the_loop_after_that_step():
    t = _trainer()
    stop = StopAt(2)
    t.register_hooks([stop])
    t.train(0, 6)
    assert (t.state, t.iter, t.iters_done, t.stop_reason) == ("interrupted", 2, 3, "test")
    assert stop.stopping_seen == [False, False, True]
    # a stop in the last iteration is just the end of the run
    t = _trainer()
    t.register_hooks([StopAt(3)])
    t.train(0, 4)
    assert t.state == "done" and t.iters_done == 4


def test_one_all_reduce_per_step_decides_for_all_ranks(monkeypatch):
    """Under DDP the non-finite and stop flags travel in one all-reduce a step; a stop raised on
    another rank (simulated by the fake all-reduce) stops this one too."""
    calls = []

    def fake_all_reduce(t):
        calls.append(t.tolist())
        if len(calls) == 2:
            t[1] += 1.0  # rank 1 got a SIGTERM before step 1

    monkeypatch.setattr(gdist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    t = _trainer()
    t.train(0, 5)
    assert calls == [[0.0, 0.0], [0.0, 0.0]]  # one per step: [non-finite, stop]
    assert t.state == "interrupted" and t.iters_done == 2 and t.stop_reason is None


class FailingAfterTrain(HookBase):
    def after_train(self):
        raise RuntimeError("writing the final record failed")


def test_every_after_train_runs_when_one_fails():
    events: list = []
    t = _trainer()
    t.register_hooks([FailingAfterTrain(), Recorder("r", events)])
    with pytest.raises(RuntimeError, match="final record"):
        t.train(0, 1)
    assert events[-1] == ("r", "after_train", "failed") and t.state == "failed"


def test_register_remove_and_get_hooks():
    t = _trainer()
    a, b = Recorder("a", []), LRScheduler(None)
    t.register_hooks([a, b])
    assert a.trainer is t and t.get_hook(LRScheduler) is b
    assert t.remove_hooks(LRScheduler) == [b] and t.hooks == [a] and t.get_hook(LRScheduler) is None
    with pytest.raises(TypeError, match="not a hook"):
        t.register_hooks([object()])
