"""DDP on CPU (gloo, 2 processes through torchrun): a few steps on uneven data, PreciseBN and a
periodic evaluation, the final evaluation on uneven inference shards, one run folder written
by rank 0 only, no hang."""
from __future__ import annotations

import json

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ._train_utils import SHAPES, TRAIN_PY, child_env, read_status, records, shapes_root, tiny_overrides  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.dist]

MAX_ITER = 4
IMS_PER_DEVICE = 2
WORLD = 2


def _torchrun(overrides: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(TRAIN_PY), *overrides]
    try:
        return subprocess.run(cmd, cwd=str(cwd), env=child_env(), timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired as exc:  # a hang (e.g. a collective one rank never reaches)
        out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else (exc.output or "")
        pytest.fail(f"torchrun did not finish within {timeout}s (hang?):\n{out[-4000:]}")


@pytest.mark.parametrize("norm", ["syncbn", "bn"])
def test_ddp_two_ranks(shapes_root, tmp_path, norm):  # noqa: F811
    # uneven on purpose: 13 train images (global batch 4) and 7 val images (shards of 4 and 3,
    # i.e. 4 and 3 inference batches of one image: no collective may hide in a forward pass)
    assert SHAPES["num_train"] % 2 and SHAPES["num_train"] % (IMS_PER_DEVICE * WORLD)
    assert SHAPES["num_val"] % 2
    # the default run-folder pattern (relative to the launch dir): every rank must agree on it
    overrides = tiny_overrides(shapes_root, **{
        "norm": norm, "solver.max_iter": MAX_ITER, "data.ims_per_device": IMS_PER_DEVICE,
        "checkpoint.period": 2, "eval.ims_per_device": 1,
        # a periodic evaluation with PreciseBN before it: every rank runs both, none hangs
        "eval.period": 2, "solver.precise_bn.enabled": "true", "solver.precise_bn.num_iter": 2,
    })
    proc = _torchrun(overrides, tmp_path, timeout=90)
    assert proc.returncode == 0, proc.stdout[-6000:]

    metrics_files = sorted(tmp_path.rglob("metrics.jsonl"))
    assert len(metrics_files) == 1, metrics_files  # one run folder, written by rank 0 only
    run_dir = metrics_files[0].parent
    run_dirs = [p.parent for p in tmp_path.rglob(".hydra")]
    assert run_dirs == [run_dir], f"ranks disagree on the run folder: {run_dirs}"
    assert read_status(run_dir)["state"] == "done"
    files = sorted(str(f.relative_to(run_dir)) for f in run_dir.rglob("*")
                   if f.is_file() and ".hydra" not in f.parts)
    assert len([f for f in files if f.startswith("tb/events")]) == 1, files  # one TensorBoard writer
    assert len([f for f in files if f.startswith("tb/hparams/")]) == 1, files  # and rank 0's HParams row
    # rank 1 only leaves its log and its RNG side file next to rank 0's checkpoint (exact resume)
    assert [f for f in files if "rank" in f] == ["checkpoints/last.rank1.rng.pth", "launch.rank1.log"], files
    for name in ("status.json", "config.yaml", "env.json", "report.json", "report.md", "per_class.csv",
                 "data_skipped.json", "checkpoints/last.pth", "checkpoints/model_final.pth"):
        assert name in files, (name, files)

    train_iters = [r["iter"] for r in records(run_dir, "train")]
    assert train_iters == list(range(MAX_ITER)), Counter(train_iters)  # no duplicated records
    finals = records(run_dir, "final")
    assert len(finals) == 1, finals
    final = finals[0]
    assert final["world_size"] == WORLD
    assert final["iter"] == MAX_ITER - 1
    # syncbn: statistics pooled over both ranks; bn: DDP broadcasts rank 0's buffers (at the
    # first evaluation forward too), so every rank evaluates with the statistics that were saved
    assert final["norm_buffers_agree"] is True, final

    cfg_text = (run_dir / "config.yaml").read_text()
    assert "ims_per_batch: 4" in cfg_text
    # both ranks took part in the final evaluation, on uneven shards of the 7 val images; only
    # rank 0 speaks (one inference line per evaluation, for its own shard), and no DDP
    # deprecation warning reaches the console
    assert json.loads((run_dir / "report.json").read_text())["coverage"]["ap"]["images"] == SHAPES["num_val"]
    assert proc.stdout.count("inference: ") == 2, proc.stdout[-3000:]
    assert proc.stdout.count("model: retinanet_tiny") == 1 and "FutureWarning" not in proc.stdout
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]
    # PreciseBN (logged by rank 0), before the evaluation at iter 1 and the final one
    assert proc.stdout.count("PreciseBN: statistics of") == 2, proc.stdout[-3000:]
    assert [r["iter"] for r in records(run_dir, "eval")] == [1, MAX_ITER - 1]


def test_preflight_and_run_agree_on_the_world_size_under_torchrun(shapes_root, tmp_path):  # noqa: F811
    """``solver.ims_per_batch=4`` with 2 images per device is right for 2 processes: the pre-flight
    (which once validated with world size 1 and refused it) and the run agree, and the run trains."""
    overrides = tiny_overrides(shapes_root, **{"solver.max_iter": 2, "data.ims_per_device": IMS_PER_DEVICE,
                                               "solver.ims_per_batch": IMS_PER_DEVICE * WORLD, "eval.period": 0})
    proc = _torchrun(overrides, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:]
    (run_dir,) = [p.parent for p in tmp_path.rglob("metrics.jsonl")]
    assert read_status(run_dir)["state"] == "done"
    assert "ims_per_batch: 4" in (run_dir / "config.yaml").read_text()


def test_the_preflight_validates_with_the_world_size_of_the_run(monkeypatch):
    """One rule (config.resolve_batch) with the run's world size: WORLD_SIZE under torchrun, the
    tasks of a submitit Slurm launcher's job, else 1."""
    from gn_detect.config import validate_train_config
    from gn_detect.engine.launch import CONFIG_DIR
    from gn_detect.preflight import check_command_line

    args = ["data.ims_per_device=2", "solver.ims_per_batch=4"]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert "1 process(es)" in check_command_line(CONFIG_DIR, "config", args, validate_train_config)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert check_command_line(CONFIG_DIR, "config", args, validate_train_config) is None
    monkeypatch.delenv("WORLD_SIZE")
    slurm = ["hydra/launcher=slurm_8gpu", "data.ims_per_device=2"]
    assert check_command_line(CONFIG_DIR, "config", ["-m", *slurm, "solver.ims_per_batch=16"],
                              validate_train_config) is None
    assert "8 process(es)" in check_command_line(CONFIG_DIR, "config", ["-m", *slurm, "solver.ims_per_batch=4"],
                                                 validate_train_config)
