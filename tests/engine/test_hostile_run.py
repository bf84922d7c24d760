"""Failures after the start of a run (issue 20): SIGTERM during the final evaluation, a full disk
while saving, an out-of-memory batch, and fp16 gradients that underflow without loss scaling."""
from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from gn_detect.engine import trainer as trainer_module
from gn_detect.engine.checkpoint import load_checkpoint
from gn_detect.io import DiskFullError, write_json_atomic
from gn_detect.engine.train_loop import BatchTooLargeError, Trainer
from gn_detect.engine.trainer import train

from ._train_utils import one_thread, read_status, records, shapes_root, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sigterm_during_final_evaluation_is_interrupted_and_a_rerun_evaluates(shapes_root, tmp_path, monkeypatch):  # noqa: F811
    """Before: the signal was swallowed and the run ended done (exit 0). Now the evaluation stops at
    once, the run is 'interrupted' with 143, model_final.pth is kept, and the same command evaluates."""
    real = trainer_module.evaluate_model
    calls = []

    def evaluate_then_sigterm(*args, **kwargs):
        calls.append(kwargs.get("full_report"))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at once, inside the evaluation
            pytest.fail("the evaluation went on after SIGTERM")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_model", evaluate_then_sigterm)
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(shapes_root, **{"solver.max_iter": 2})
    out = train(cfg, run_dir, base_dir=tmp_path)
    status = read_status(run_dir)
    assert out["interrupted"] and out["exit_code"] == 143 and out["iter"] == 2
    assert status["state"] == "interrupted" and "final evaluation" in status["error"]
    assert "model_final.pth" in out["message"] and out["message"] == status["error"]
    assert (run_dir / "checkpoints" / "model_final.pth").is_file() and not (run_dir / "report.json").exists()
    assert not records(run_dir, "final")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers were given back
    result = train(cfg, run_dir, base_dir=tmp_path)  # the same command: nothing to train, evaluates
    assert read_status(run_dir)["state"] == "done" and "AP" in result and (run_dir / "report.json").is_file()
    assert len(records(run_dir, "train")) == 2 and len(records(run_dir, "final")) == 1


def test_disk_full_while_saving_is_one_line_with_the_path(shapes_root, tmp_path, monkeypatch):  # noqa: F811
    """torch.save reports ENOSPC as a RuntimeError whose cause says it: the run fails with
    DiskFullError naming the file, status.json says so, and the last good checkpoint stays."""
    real_save = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 1:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as cause:
                raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0") from cause
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run_dir = tmp_path / "run"
    with pytest.raises(DiskFullError) as info:
        train(tiny_cfg(shapes_root, **{"solver.max_iter": 4, "checkpoint.period": 2}), run_dir, base_dir=tmp_path)
    last = run_dir / "checkpoints" / "last.pth"
    assert str(last) in str(info.value) and "\n" not in str(info.value) and info.value.errno == errno.ENOSPC
    status = read_status(run_dir)
    assert status["state"] == "failed" and "no space left on device" in status["error"] and str(last) in status["error"]
    assert load_checkpoint(last)["iteration"] == 2  # the good one is kept
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_disk_full_in_the_json_writer_names_the_file(tmp_path, monkeypatch):
    path = write_json_atomic(tmp_path / "status.json", {"state": "running"})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gn_detect.io.json.dump", full)
    with pytest.raises(DiskFullError, match=f"ENOSPC.*{path}"):
        write_json_atomic(path, {"state": "done"})
    assert path.read_text().strip().endswith("}") and "running" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


class _Toy(nn.Module):
    """Returns one loss term from a linear layer; ``scale`` makes it (and its fp16 gradients) tiny."""

    def __init__(self, scale: float = 1.0, oom_after: int | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.scale, self.oom_after, self.calls = scale, oom_after, 0

    def forward(self, images, image_sizes, targets):
        self.calls += 1
        if self.oom_after is not None and self.calls > self.oom_after:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {"loss": self.lin(images).float().pow(2).mean() * self.scale}


def _batches():
    g = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(4, 8, generator=g), [{}], [(1, 1)]


def test_oom_in_the_first_steps_names_the_batch_key():
    t = Trainer(_Toy(oom_after=1), _batches(), torch.optim.SGD(_Toy().parameters(), lr=0.1),
                device=torch.device("cpu"), ims_per_batch=16, ims_per_device=16)
    with pytest.raises(BatchTooLargeError, match=r"data\.ims_per_device \(now 16\)") as info:
        t.train(0, 5)
    assert "iteration 1" in str(info.value) and t.state == "failed"


def _grads_after_one_step(amp: torch.dtype | None, scaled: bool) -> torch.Tensor:
    torch.manual_seed(0)
    model = _Toy(scale=1e-7)
    t = Trainer(model, _batches(), torch.optim.SGD(model.parameters(), lr=0.0), device=torch.device("cpu"),
                amp_dtype=amp)
    t.scaler = torch.amp.GradScaler("cpu", enabled=scaled)
    t.start_iter, t.max_iter, t.iter = 0, 1, 0
    t._data_iter = iter(t.data_loader)
    t.run_step()
    return model.lin.weight.grad


def test_fp16_grad_scaler_keeps_gradients_that_underflow_unscaled():
    """CPU autocast in fp16 with a loss of ~1e-7: unscaled, the fp16 gradients of the linear layer
    flush to zero; the GradScaler's (65536x) step keeps them finite and non-zero, and equal to the
    fp32 gradients to fp16 precision. solver.amp=fp16 gets the scaler, bf16 and fp32 do not."""
    reference = _grads_after_one_step(None, scaled=False)
    unscaled = _grads_after_one_step(torch.float16, scaled=False)
    scaled = _grads_after_one_step(torch.float16, scaled=True)
    assert reference.abs().max() > 0
    assert (unscaled == 0).float().mean() > 0.5  # most of them lost
    assert torch.isfinite(scaled).all() and (scaled != 0).all()
    torch.testing.assert_close(scaled, reference, rtol=5e-2, atol=float(reference.abs().max()) * 1e-2)
    cpu = torch.device("cpu")
    assert Trainer(_Toy(), [], torch.optim.SGD(_Toy().parameters(), lr=0.1), device=cpu,
                   amp_dtype=torch.float16).scaler.is_enabled()
    assert not Trainer(_Toy(), [], torch.optim.SGD(_Toy().parameters(), lr=0.1), device=cpu,
                       amp_dtype=torch.bfloat16).scaler.is_enabled()


def test_grad_scaler_state_is_in_checkpoints(tmp_path: Path):
    model = _Toy()
    t = Trainer(model, _batches(), torch.optim.SGD(model.parameters(), lr=0.1), device=torch.device("cpu"),
                amp_dtype=torch.float16)
    t.train(0, 3)
    extra = t.checkpoint_extra()
    assert extra["grad_scaler"]["scale"] == t.scaler.get_scale() and extra["grad_scaler"]["_growth_tracker"] == 3
    torch.save(extra, tmp_path / "x.pth")
    other = Trainer(_Toy(), [], torch.optim.SGD(_Toy().parameters(), lr=0.1), device=torch.device("cpu"),
                    amp_dtype=torch.float16)
    other.restore_extra(torch.load(tmp_path / "x.pth", weights_only=True))
    assert other.scaler.state_dict() == t.scaler.state_dict()


def test_the_failed_run_line_says_what_status_json_holds(tmp_path, monkeypatch):
    """A full disk can stop the run while status.json itself is written: the last line must not
    claim that status.json says failed when it still says running."""
    from gn_detect.engine import launch
    from gn_detect.runs import write_status

    def train_then_disk_full(cfg, run_dir, base_dir, parsed=None, hparams=None):
        write_status(run_dir, "running", iteration=3)
        raise DiskFullError(run_dir / "status.json")

    monkeypatch.setattr(launch, "train", train_then_disk_full)
    monkeypatch.setattr(launch, "_rank0_run_dir", lambda cfg, run_dir: run_dir)
    monkeypatch.setattr(launch, "_OUTCOME", launch._Outcome())
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    launch._single_run(None, tmp_path, tmp_path, None)
    assert launch._OUTCOME.exit_code == 1
    assert f"(status.json in {tmp_path} could not be updated and says running)" in launch._OUTCOME.reason
    def train_recorded_failed(cfg, run_dir, base_dir, parsed=None, hparams=None):
        write_status(run_dir, "failed", error="x")
        raise DiskFullError(run_dir / "checkpoints" / "last.pth")

    monkeypatch.setattr(launch, "train", train_recorded_failed)
    launch._single_run(None, tmp_path, tmp_path, None)
    assert f"(status.json in {tmp_path} says failed)" in launch._OUTCOME.reason
