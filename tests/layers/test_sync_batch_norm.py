"""SyncBatchNorm in a real 2-process gloo group against BN on the concatenated batch."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gn_detect.layers import SyncBatchNorm, check_syncbn_usable, get_norm

C, H, W = 3, 3, 2
MOMENTUM = 0.3
CASES = {"uneven": (3, 2), "empty": (4, 0)}  # images on rank 0, rank 1
TIMEOUT_S = 90


def _data(case: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(len(case))
    n = sum(CASES[case])
    x = torch.randn(n, C, H, W, generator=gen, dtype=torch.float64) * 2 + torch.arange(C).view(1, C, 1, 1)
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    weight = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
    bias = torch.randn(C, generator=gen, dtype=torch.float64)
    return x, dy, weight, bias


def _local(t: torch.Tensor, case: str, rank: int) -> torch.Tensor:
    start = sum(CASES[case][:rank])
    return t[start:start + CASES[case][rank]]


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    results: dict = {"usable": check_syncbn_usable(probe=True)}
    calls = {"n": 0}
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls["n"] += 1
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce
    for case in CASES:
        x_all, dy_all, weight, bias = _data(case)
        m = get_norm("syncbn", C, momentum=MOMENTUM).double()
        with torch.no_grad():
            m.weight.copy_(weight)
            m.bias.copy_(bias)
        x = _local(x_all, case, rank).clone().requires_grad_()
        calls["n"] = 0
        y = m(x)
        (y * _local(dy_all, case, rank)).sum().backward()
        train_calls = calls["n"]
        m.eval()
        calls["n"] = 0
        y_eval = m(_local(x_all, case, rank))
        results[case] = {
            "y": y.detach(), "dx": x.grad, "dw": m.weight.grad, "db": m.bias.grad,
            "rm": m.running_mean.clone(), "rv": m.running_var.clone(),
            "nbt": int(m.num_batches_tracked), "y_eval": y_eval.detach(),
            "train_calls": train_calls, "eval_calls": calls["n"],
        }
    dist.all_reduce = real_all_reduce
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("syncbn")
    ctx = mp.start_processes(
        _worker, args=(2, str(tmp / "init"), str(tmp)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"2-process syncbn run did not finish in {TIMEOUT_S}s (hang?)")
    return [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(2)]


def _reference(case: str) -> dict:
    x_all, dy_all, weight, bias = _data(case)
    bn = nn.BatchNorm2d(C, momentum=MOMENTUM).double()
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    x = x_all.clone().requires_grad_()
    y = bn(x)
    (y * dy_all).sum().backward()
    bn.eval()
    return {"y": y.detach(), "dx": x.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
            "rm": bn.running_mean, "rv": bn.running_var, "y_eval": bn(x_all).detach(), "x": x_all}


pytestmark = pytest.mark.dist


@pytest.mark.parametrize("case", list(CASES))
def test_syncbn_matches_bn_on_concatenated_batch(dist_results, case):
    ref = _reference(case)
    for rank, res in enumerate(dist_results):
        r = res[case]
        torch.testing.assert_close(r["y"], _local(ref["y"], case, rank))
        torch.testing.assert_close(r["dx"], _local(ref["dx"], case, rank))
        # running statistics are identical on every rank (also the one with no images)
        torch.testing.assert_close(r["rm"], ref["rm"])
        torch.testing.assert_close(r["rv"], ref["rv"])
        assert r["nbt"] == 1
        torch.testing.assert_close(r["y_eval"], _local(ref["y_eval"], case, rank))
    # each rank's weight gradient is its local share; DDP sums them
    torch.testing.assert_close(sum(res[case]["dw"] for res in dist_results), ref["dw"])
    torch.testing.assert_close(sum(res[case]["db"] for res in dist_results), ref["db"])


def test_syncbn_group_is_usable_and_eval_does_not_communicate(dist_results):
    for res in dist_results:
        assert res["usable"] is True
        for case in CASES:
            assert res[case]["train_calls"] == 2  # forward stats + backward grads
            assert res[case]["eval_calls"] == 0


def test_syncbn_is_plain_bn_without_process_group():
    assert not dist.is_initialized()
    gen = torch.Generator().manual_seed(0)
    m = SyncBatchNorm(C).double()
    ref = nn.BatchNorm2d(C).double()
    x = torch.randn(4, C, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(m(x), ref(x))
    torch.testing.assert_close(m.running_var, ref.running_var)
