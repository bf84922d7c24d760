"""SyncBatchNorm in a real 2-process gloo group against BN on the concatenated batch.

Float64 cases check exactness (outputs, gradients, running statistics, also with channels-last
input, ``affine=False`` and an empty rank). A float32 case with mean 3000 and std 0.5 checks
numerical stability against a float64 reference: the error must be no worse than that of
torch's own float32 BN, and the uncentred ``E[x^2] - E[x]^2`` formula is shown to fail it.
"""

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
CASES = {  # images on rank 0 and rank 1, options
    "uneven": ((3, 2), {}),
    "empty": ((4, 0), {}),
    "channels_last": ((2, 3), {"channels_last": True}),
    "no_affine": ((3, 2), {"affine": False}),
}
# float32 input with mean 3000 and std 0.5: images on rank 0 and rank 1, (C, H, W)
LARGE_SPLIT, LARGE_SHAPE = (4, 3), (4, 8, 8)
REL_BOUND = 1e-5  # max abs error / max abs value of the float64 reference
TIMEOUT_S = 90


def _data(case: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(len(case))
    n = sum(CASES[case][0])
    x = torch.randn(n, C, H, W, generator=gen, dtype=torch.float64) * 2 + torch.arange(C).view(1, C, 1, 1)
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    weight = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
    bias = torch.randn(C, generator=gen, dtype=torch.float64)
    return x, dy, weight, bias


def _large_mean_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 values (the float64 reference sees exactly the same numbers)."""
    gen = torch.Generator().manual_seed(3000)
    shape = (sum(LARGE_SPLIT), *LARGE_SHAPE)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5 + 3000
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight = torch.rand(LARGE_SHAPE[0], generator=gen, dtype=torch.float64) + 0.5
    bias = torch.randn(LARGE_SHAPE[0], generator=gen, dtype=torch.float64)
    return x.float(), dy.float(), weight.float(), bias.float()


def _local(t: torch.Tensor, split: tuple[int, ...], rank: int) -> torch.Tensor:
    start = sum(split[:rank])
    return t[start:start + split[rank]]


def _run_case(case: str, rank: int, calls: dict) -> dict:
    split, opts = CASES[case]
    x_all, dy_all, weight, bias = _data(case)
    m = get_norm("syncbn", C, momentum=MOMENTUM, affine=opts.get("affine", True)).double()
    if m.weight is not None:
        with torch.no_grad():
            m.weight.copy_(weight)
            m.bias.copy_(bias)
    fmt = torch.channels_last if opts.get("channels_last") else torch.contiguous_format
    x = _local(x_all, split, rank).contiguous(memory_format=fmt).requires_grad_()
    calls["n"] = 0
    y = m(x)
    (y * _local(dy_all, split, rank)).sum().backward()
    train_calls = calls["n"]
    m.eval()
    calls["n"] = 0
    y_eval = m(_local(x_all, split, rank))
    return {
        "y": y.detach(), "dx": x.grad, "rm": m.running_mean.clone(), "rv": m.running_var.clone(),
        "dw": None if m.weight is None else m.weight.grad,
        "db": None if m.bias is None else m.bias.grad,
        "nbt": int(m.num_batches_tracked), "y_eval": y_eval.detach(),
        "train_calls": train_calls, "eval_calls": calls["n"],
        "channels_last": y.is_contiguous(memory_format=torch.channels_last)
        and x.grad.is_contiguous(memory_format=torch.channels_last),
    }


def _run_large_mean(rank: int) -> dict:
    x_all, dy_all, weight, bias = _large_mean_data()
    m = get_norm("syncbn", LARGE_SHAPE[0])
    with torch.no_grad():
        m.weight.copy_(weight)
        m.bias.copy_(bias)
    x = _local(x_all, LARGE_SPLIT, rank).clone().requires_grad_()
    y = m(x)
    (y * _local(dy_all, LARGE_SPLIT, rank)).sum().backward()
    return {"y": y.detach(), "dx": x.grad, "dw": m.weight.grad, "db": m.bias.grad}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    results: dict = {"usable": check_syncbn_usable(probe=True)}
    calls = {"n": 0}
    real = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def counting(name):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            return real[name](*args, **kwargs)
        return wrapped

    for name in real:
        setattr(dist, name, counting(name))
    for case in CASES:
        results[case] = _run_case(case, rank, calls)
    for name, fn in real.items():
        setattr(dist, name, fn)
    results["large_mean"] = _run_large_mean(rank)
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


def _bn_reference(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor | None,
                  bias: torch.Tensor | None, dtype: torch.dtype) -> dict:
    """torch's BN in ``dtype`` on the concatenated batch; results in float64."""
    bn = nn.BatchNorm2d(x.shape[1], momentum=MOMENTUM, affine=weight is not None).to(dtype)
    if weight is not None:
        with torch.no_grad():
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
    xg = x.to(dtype).clone().requires_grad_()
    y = bn(xg)
    (y * dy.to(dtype)).sum().backward()
    grads = {"dw": None, "db": None} if weight is None else {
        "dw": bn.weight.grad.double(), "db": bn.bias.grad.double()}
    bn.eval()
    return {"y": y.detach().double(), "dx": xg.grad.double(), **grads,
            "rm": bn.running_mean, "rv": bn.running_var, "y_eval": bn(x.to(dtype)).detach()}


pytestmark = pytest.mark.dist


@pytest.mark.parametrize("case", list(CASES))
def test_syncbn_matches_bn_on_concatenated_batch(dist_results, case):
    split, opts = CASES[case]
    x_all, dy_all, weight, bias = _data(case)
    affine = opts.get("affine", True)
    ref = _bn_reference(x_all, dy_all, weight if affine else None, bias, torch.float64)
    for rank, res in enumerate(dist_results):
        r = res[case]
        torch.testing.assert_close(r["y"], _local(ref["y"], split, rank))
        torch.testing.assert_close(r["dx"], _local(ref["dx"], split, rank))
        # running statistics are identical on every rank (also the one with no images)
        torch.testing.assert_close(r["rm"], ref["rm"])
        torch.testing.assert_close(r["rv"], ref["rv"])
        assert r["nbt"] == 1
        torch.testing.assert_close(r["y_eval"], _local(ref["y_eval"], split, rank))
        if opts.get("channels_last"):
            assert r["channels_last"], "output and input gradient keep the channels-last layout"
    if not affine:
        assert all(res[case]["dw"] is None and res[case]["db"] is None for res in dist_results)
        return
    # each rank's weight gradient is its local share; DDP sums them
    torch.testing.assert_close(sum(res[case]["dw"] for res in dist_results), ref["dw"])
    torch.testing.assert_close(sum(res[case]["db"] for res in dist_results), ref["db"])


def test_syncbn_group_is_usable_and_eval_does_not_communicate(dist_results):
    for res in dist_results:
        assert res["usable"] is True
        for case in CASES:
            # one all-gather of the statistics forward, one all-reduce of the sums backward
            assert res[case]["train_calls"] == 2
            assert res[case]["eval_calls"] == 0


def _errors(result: dict, ref: dict) -> dict[str, float]:
    return {k: (result[k].double() - ref[k]).abs().max().item() for k in ("y", "dx", "dw", "db")}


def _uncentred_float32(
    x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> dict:
    """BN from float32 sums S1 = sum x, S2 = sum x^2: var = S2/N - mean^2, autograd backward."""
    x = x.clone().requires_grad_()
    n, view = x.numel() // x.shape[1], (1, -1, 1, 1)
    mean = x.sum(dim=(0, 2, 3)) / n
    var = ((x * x).sum(dim=(0, 2, 3)) / n - mean * mean).clamp_min(0)
    w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    y = (x - mean.view(view)) * torch.rsqrt(var + 1e-5).view(view) * w.view(view) + b.view(view)
    (y * dy).sum().backward()
    return {"y": y.detach(), "dx": x.grad, "dw": w.grad, "db": b.grad}


def test_syncbn_float32_large_mean_is_as_accurate_as_torch_bn(dist_results):
    x, dy, weight, bias = _large_mean_data()
    ref = _bn_reference(x, dy, weight, bias, torch.float64)
    ours = {k: torch.cat([res["large_mean"][k] for res in dist_results]) for k in ("y", "dx")}
    for k in ("dw", "db"):  # each rank's share, summed as DDP would (in float64 here)
        ours[k] = sum(res["large_mean"][k].double() for res in dist_results)
    err = _errors(ours, ref)
    err_torch = _errors(_bn_reference(x, dy, weight, bias, torch.float32), ref)
    for k, e in err.items():
        scale = ref[k].abs().max().item()
        # torch's error, floored at one float32 rounding of the largest value (db = sum dy is
        # plain float32 summation for both; torch's can be luckier than one ulp)
        bound = 3 * max(err_torch[k], torch.finfo(torch.float32).eps * scale)
        assert e <= bound, f"{k}: max error {e:.3g} vs torch float32 BN {err_torch[k]:.3g}"
        assert e <= REL_BOUND * scale, f"{k}: max error {e:.3g} for values up to {scale:.3g}"
    # the bound is meaningful: the uncentred float32 formula fails it by orders of magnitude
    err_uncentred = _errors(_uncentred_float32(x, dy, weight, bias), ref)
    for k in ("y", "dx", "dw"):
        assert err_uncentred[k] > 100 * max(3 * err_torch[k], REL_BOUND * ref[k].abs().max().item())


def test_syncbn_is_plain_bn_without_process_group():
    assert not dist.is_initialized()
    gen = torch.Generator().manual_seed(0)
    m = SyncBatchNorm(C).double()
    ref = nn.BatchNorm2d(C).double()
    x = torch.randn(4, C, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(m(x), ref(x))
    torch.testing.assert_close(m.running_var, ref.running_var)
