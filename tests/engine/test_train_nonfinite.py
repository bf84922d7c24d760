"""A diverging run (gigantic LR, no warm-up) is caught: solver.nonfinite=stop fails with a message
naming the fixes and keeps the state for debugging; solver.nonfinite=skip drops the steps and
finishes, counting them in the final record."""
from __future__ import annotations

import pytest
import torch

from gn_detect.engine.trainer import NonFiniteLossError, train

from ._train_utils import one_thread, read_status, records, shapes_root, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

DIVERGE = {"solver.base_lr": 1e6, "solver.warmup_iters": 0, "solver.max_iter": 6,
           # a blown-up model scores every anchor high: keep its (irrelevant) evaluation small
           "model.test.topk_candidates": 50, "model.test.detections_per_image": 10}


def test_nonfinite_stop(shapes_root, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(shapes_root, **DIVERGE, **{"solver.nonfinite": "stop"})
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, run_dir, base_dir=tmp_path)
    msg = str(info.value)
    for fix in ("solver.base_lr", "solver.warmup_iters", "solver.clip_grad_norm", "solver.nonfinite=skip"):
        assert fix in msg, (fix, msg)
    debug = run_dir / "checkpoints" / "nonfinite_debug.pth"
    assert str(debug) in msg and debug.is_file()

    status = read_status(run_dir)
    assert status["state"] == "failed" and "not finite" in status["error"], status
    stopped_at = int(status["iteration"])
    assert 0 <= stopped_at < DIVERGE["solver.max_iter"]
    # the debug state is the one that produced the non-finite loss: iteration and all parts to resume
    state = torch.load(debug, map_location="cpu", weights_only=True)
    assert state["iteration"] == stopped_at
    assert {"model", "optimizer", "scheduler", "rng"} <= state.keys()
    assert len(records(run_dir, "train")) == stopped_at  # completed iterations only
    assert not records(run_dir, "final") and not (run_dir / "checkpoints" / "model_final.pth").exists()


def test_nonfinite_skip(shapes_root, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(shapes_root, **DIVERGE, **{"solver.nonfinite": "skip"})
    final = train(cfg, run_dir, base_dir=tmp_path)
    assert read_status(run_dir)["state"] == "done"
    finals = records(run_dir, "final")
    assert len(finals) == 1 and finals[0]["iter"] == DIVERGE["solver.max_iter"] - 1
    skipped = finals[0]["skipped_steps"]
    assert final["skipped_steps"] == skipped
    assert 0 < skipped <= DIVERGE["solver.max_iter"]
    # skipped steps are not logged as trained iterations
    assert len(records(run_dir, "train")) == DIVERGE["solver.max_iter"] - skipped
    assert (run_dir / "checkpoints" / "model_final.pth").is_file()
    assert not (run_dir / "checkpoints" / "nonfinite_debug.pth").exists()


@pytest.mark.parametrize("limit", [2, None], ids=["explicit", "default"])
def test_nonfinite_skip_stops_beyond_max_skipped_steps(shapes_root, tmp_path, limit):  # noqa: F811
    """A run that skips step after step is diverged, not done: beyond solver.max_skipped_steps
    in a row (default for 60 iterations: 10) it stops as solver.nonfinite=stop does."""
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(shapes_root, **{**DIVERGE, "solver.max_iter": 60, "solver.nonfinite": "skip",
                                   "solver.max_skipped_steps": limit})
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, run_dir, base_dir=tmp_path)
    allowed = 10 if limit is None else limit
    msg = str(info.value)
    assert f"{allowed + 1} steps in a row had a non-finite loss" in msg
    assert f"solver.max_skipped_steps={allowed}" in msg and "raise solver.max_skipped_steps" in msg
    debug = run_dir / "checkpoints" / "nonfinite_debug.pth"
    assert str(debug) in msg and debug.is_file()
    state = torch.load(debug, map_location="cpu", weights_only=True)
    assert state["extra"]["skipped_in_a_row"] == allowed + 1
    status = read_status(run_dir)
    assert status["state"] == "failed" and status["iteration"] < 60, status
    assert not records(run_dir, "final") and not (run_dir / "checkpoints" / "model_final.pth").exists()
