import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from gn_detect.engine.checkpoint import (
    CheckpointError,
    Checkpointer,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from gn_detect.engine.solver import build_lr_scheduler, build_optimizer


class _Interrupted(BaseException):
    """Stands in for a kill arriving in the middle of torch.save."""


def _draws():
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist())


def test_atomic_save_survives_interrupted_write(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pth"
    save_checkpoint(path, {"iteration": 1, "w": torch.arange(4.0)})
    good = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial zip bytes")  # what a killed torch.save leaves behind
        f.flush()
        raise _Interrupted

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(_Interrupted):
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(4)})
    monkeypatch.undo()

    assert path.read_bytes() == good
    assert load_checkpoint(path)["iteration"] == 1
    assert os.listdir(path.parent) == ["last.pth"]  # temp file cleaned up


@pytest.mark.slow
def test_sigkill_during_save_keeps_previous_file(tmp_path):
    # A real SIGKILL: no Python cleanup runs, so the temp file stays; last.pth must not change.
    path = tmp_path / "checkpoints" / "last.pth"
    save_checkpoint(path, {"iteration": 7})
    code = textwrap.dedent(f"""
        import os, signal, torch
        from gn_detect.engine.checkpoint import save_checkpoint
        def dying_save(obj, f, *a, **k):
            f.write(b"partial"); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        save_checkpoint({str(path)!r}, {{"iteration": 8}})
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(path)["iteration"] == 7
    leftovers = [p for p in os.listdir(path.parent) if p != "last.pth"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")
    Checkpointer(tmp_path, nn.Linear(1, 1))  # start-up removes the interrupted write
    assert os.listdir(path.parent) == ["last.pth"]


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(missing)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=r"bad\.pth.*(truncated|corrupt)"):
        load_checkpoint(bad)


def test_rng_round_trip_through_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _draws()  # move away from the seeded state
    save_checkpoint(tmp_path / "rng.pth", {"rng": capture_rng_state()})
    expected = [_draws() for _ in range(3)]
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    assert [_draws() for _ in range(3)] == expected
    # also a normal-distribution draw (NumPy keeps a cached Gaussian in its state)
    state = capture_rng_state()
    a = (np.random.randn(5).tolist(), torch.randn(5).tolist())
    restore_rng_state(state)
    assert (np.random.randn(5).tolist(), torch.randn(5).tolist()) == a


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = build_optimizer(model, lr=0.1, norm_types=(nn.GroupNorm,))
    sched = build_lr_scheduler(opt, max_iter=20, warmup_iters=3, steps=[8])
    return model, opt, sched


def _train(model, opt, sched, n):
    for _ in range(n):
        x = torch.randn(16, 4)  # RNG-dependent batch: resume must restore the stream
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_checkpointer_resume_is_bit_identical(tmp_path):
    model, opt, sched = _setup()
    ckpt = Checkpointer(tmp_path, nn.DataParallel(model), opt, sched)  # wrapper is unwrapped
    assert ckpt.resume_or_load(None) == {"iteration": 0}
    _train(model, opt, sched, 5)
    ckpt.save("last", 5, sampler={"epoch": 1, "pos": 80}, loss_norm=12.5)
    _train(model, opt, sched, 5)
    reference = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = _setup(seed=123)
    torch.manual_seed(456)
    extra = Checkpointer(tmp_path, model2, opt2, sched2).resume_or_load("ignored-when-resuming.pth")
    assert extra == {"iteration": 5, "sampler": {"epoch": 1, "pos": 80}, "loss_norm": 12.5}
    assert sched2.last_epoch == 5
    _train(model2, opt2, sched2, 5)
    for a, b in zip(reference, model2.parameters()):
        assert torch.equal(a, b)

    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert all(not k.startswith("module.") for k in saved["model"])


def test_model_final_and_weight_init(tmp_path):
    model, opt, sched = _setup()
    Checkpointer(tmp_path / "a", model, opt, sched).save("model_final", 20, model_only=True)
    final = load_checkpoint(tmp_path / "a" / "checkpoints" / "model_final.pth")
    assert "optimizer" not in final and "rng" not in final and final["iteration"] == 20

    model2, opt2, sched2 = _setup(seed=1)
    ck2 = Checkpointer(tmp_path / "b", model2, opt2, sched2)
    out = ck2.resume_or_load(tmp_path / "a" / "checkpoints" / "model_final.pth")
    assert out == {"iteration": 0}  # init weights, not a resume
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="do not fit"):
        Checkpointer(tmp_path / "c", nn.Linear(2, 2)).load_model(tmp_path / "a" / "checkpoints" / "model_final.pth")


def test_rank_side_file_only_used_when_iteration_matches(tmp_path, monkeypatch, caplog):
    from gn_detect.engine import checkpoint as ck_mod

    model, opt, sched = _setup()
    ck = Checkpointer(tmp_path, model, opt, sched)
    monkeypatch.setattr(ck_mod.gdist, "get_rank", lambda: 1)
    assert ck.save("last", 4) is None  # rank 1: side file only
    torch.manual_seed(5)
    expected = torch.rand(2).tolist()
    monkeypatch.setattr(ck_mod.gdist, "get_rank", lambda: 0)
    ck.save("last", 5)  # main file from a later save: the side file (iteration 4) is stale
    monkeypatch.setattr(ck_mod.gdist, "get_rank", lambda: 1)
    torch.manual_seed(0)
    assert ck.load(tmp_path / "checkpoints" / "last.pth")["iteration"] == 5
    assert "random streams are not resumed" in caplog.text
    assert torch.rand(2).tolist() != expected
