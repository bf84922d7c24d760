"""PreciseBN against statistics computed by hand: running_mean = mean over batches of the batch
means, running_var = mean over batches of the unbiased batch variances -- per ghost group for
bn_group_size, over all ranks' images for SyncBN, averaged over ranks for plain BN under DDP."""
from __future__ import annotations

import json
import logging
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from gn_detect.engine.precise_bn import update_bn_stats
from gn_detect.layers import BatchNorm2d, SyncBatchNorm


class ConvBN(nn.Module):
    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = bn
        self.register_buffer("ema", torch.tensor(1.0))  # like the loss normalizer: forward changes it

    def forward(self, x):
        self.ema.mul_(0.5)
        return self.bn(self.conv(x))


def _forward(model, batch):
    return model(batch)


def _batches(n: int, seed: int = 0, size: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 5, 5, generator=g) * (i + 1) + i for i in range(n)]


def _expected(model: ConvBN, batches: list[torch.Tensor], group: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    means, vars_ = [], []
    with torch.no_grad():
        for x in batches:
            y = model.conv(x)
            k = group or len(y)
            groups = y.split(k)  # ghost batches: consecutive images
            means.append(torch.stack([g.mean((0, 2, 3)) for g in groups]).mean(0))
            vars_.append(torch.stack([g.var((0, 2, 3), unbiased=True) for g in groups]).mean(0))
    return torch.stack(means).mean(0), torch.stack(vars_).mean(0)


@pytest.mark.parametrize("make_bn, group", [
    (lambda: nn.BatchNorm2d(4), None),
    (lambda: BatchNorm2d(4), None),
    (lambda: BatchNorm2d(4, bn_group_size=2), 2),
    (lambda: SyncBatchNorm(4), None),  # one process: plain BN statistics
    (lambda: BatchNorm2d(4, momentum=None), None),  # cumulative-average BN
], ids=["torch_bn", "bn", "ghost_bn", "syncbn_single", "bn_momentum_none"])
def test_statistics_are_the_average_of_batch_statistics(make_bn, group):
    model = ConvBN(make_bn())
    model.train()
    model(torch.randn(4, 3, 5, 5))  # some history in the running stats and counters
    momentum, tracked = model.bn.momentum, model.bn.num_batches_tracked.clone()
    weights = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("bn.running")}
    batches = _batches(5)
    assert update_bn_stats(model, iter(batches), _forward, num_iter=5) == 1
    mean, var = _expected(model, batches, group)
    torch.testing.assert_close(model.bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.running_var, var, rtol=1e-5, atol=1e-6)
    # only the running statistics changed: momentum, counter, other buffers and weights are back
    assert model.bn.momentum == momentum and torch.equal(model.bn.num_batches_tracked, tracked)
    for k, v in model.state_dict().items():
        if not k.startswith("bn.running"):
            assert torch.equal(v, weights[k]), k
    assert model.training


def test_uses_only_num_iter_batches_and_keeps_random_streams():
    model = ConvBN(nn.BatchNorm2d(4))
    batches = _batches(6)
    torch.manual_seed(123)
    update_bn_stats(model, iter(batches), _forward, num_iter=3)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)
    torch.testing.assert_close(model.bn.running_mean, _expected(model, batches[:3], None)[0])


def test_frozen_bn_in_eval_mode_is_left_alone():
    class Frozen(ConvBN):
        def train(self, mode: bool = True):  # like a frozen backbone stage
            super().train(mode)
            self.bn.eval()
            return self

    model = Frozen(nn.BatchNorm2d(4))
    before = model.bn.running_mean.clone()
    assert update_bn_stats(model, iter(_batches(2)), _forward, num_iter=2) == 0
    assert torch.equal(model.bn.running_mean, before)


def test_no_bn_is_a_logged_noop(caplog):
    caplog.set_level(logging.INFO, logger="gn_detect.engine.precise_bn")
    model = ConvBN(nn.GroupNorm(2, 4)).eval()
    assert update_bn_stats(model, iter(_batches(2)), _forward, num_iter=2) == 0
    assert "no BatchNorm layer" in caplog.text and not model.training  # mode restored


def test_too_few_batches_fails_and_changes_nothing():
    model = ConvBN(BatchNorm2d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"gave 2 of solver.precise_bn.num_iter=3 batches"):
        update_bn_stats(model, iter(_batches(2)), _forward, num_iter=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.bn.momentum == 0.1


# ----------------------------------------------------------------------------- DDP (gloo)


class TwoBN(nn.Module):
    """The same conv output into a plain BN and a SyncBN."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn, self.sync = BatchNorm2d(4), SyncBatchNorm(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + self.sync(y)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    model = TwoBN()
    update_bn_stats(model, iter(_batches(3, seed=rank, size=2)), _forward, num_iter=3)
    out = {k: v.tolist() for k, v in model.state_dict().items() if "running" in k}
    torch.distributed.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


@pytest.mark.slow
@pytest.mark.dist
def test_ddp_plain_bn_averaged_over_ranks_syncbn_over_all_images(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [mp.get_context("spawn").Process(target=_worker, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert got[0] == got[1]  # every rank ends with the same statistics

    model = TwoBN()
    per_rank = [_batches(3, seed=r, size=2) for r in range(2)]
    bn = [_expected(model, b, None) for b in per_rank]
    # syncbn: batch i of the step is both ranks' batch i together
    sync = _expected(model, [torch.cat([per_rank[0][i], per_rank[1][i]]) for i in range(3)], None)
    torch.testing.assert_close(torch.tensor(got[0]["bn.running_mean"]), (bn[0][0] + bn[1][0]) / 2)
    torch.testing.assert_close(torch.tensor(got[0]["bn.running_var"]), (bn[0][1] + bn[1][1]) / 2)
    torch.testing.assert_close(torch.tensor(got[0]["sync.running_mean"]), sync[0])
    torch.testing.assert_close(torch.tensor(got[0]["sync.running_var"]), sync[1])
