"""SyncBatchNorm for CPU (gloo) and GPU (NCCL): BN statistics over the batch of all ranks.

``torch.nn.SyncBatchNorm`` refuses CPU tensors, so this is a small implementation built on a
differentiable all-reduce:

* forward: every rank computes per-channel ``[count * mean, count * (var + mean^2), count]``
  of its local batch (i.e. sum, sum of squares and count), one all-reduce SUM gives the global
  ones, and ``mean = S1 / N``, ``var = S2 / N - mean^2`` (biased, used to normalize). The
  combination is done in float64 to keep the ``E[x^2] - E[x]^2`` cancellation harmless.
* backward: autograd differentiates that formula; the gradient of an all-reduce SUM is the
  all-reduce SUM of the incoming gradients (every rank's loss depends on every rank's sums).
* running statistics: ``running_var`` gets the unbiased variance over the global count
  ``N / (N - 1) * var``, so they equal those of BN run on the concatenated batch.

A rank with an empty batch contributes count 0 and still takes part in both all-reduces, so
nobody hangs -- provided its loss depends on this layer's (empty) output, as any rank's loss
must under DDP anyway. Eval mode uses the running statistics and never communicates.
Without an initialized process group, or with world size 1, this is plain BN.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

from .batch_norm import BatchNorm2d

__all__ = ["SyncBatchNorm", "all_reduce_sum", "check_syncbn_usable"]

logger = logging.getLogger(__name__)
_fallback_noted = False


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x (on every rank); dL/dx = sum over ranks of dL/dy."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Differentiable all-reduce SUM (gloo and NCCL). Collective: every rank must call it."""
    return _AllReduceSum.apply(x, group)


def _distributed_world_size(group: Any = None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def check_syncbn_usable(process_group: Any = None, *, probe: bool = False) -> bool:
    """Whether ``syncbn`` will really synchronize; raise if the process group cannot work.

    Returns False (and logs a note once) when torch.distributed is not initialized or the
    group has a single rank: SyncBatchNorm then is plain BN. Returns True for a usable group.
    Raises RuntimeError when the group is initialized but cannot run the all-reduce SyncBN
    needs (NCCL without CUDA, unknown backend, or -- with ``probe=True`` -- a failing test
    all-reduce). ``probe=True`` is a collective: call it on every rank or not at all.
    """
    global _fallback_noted
    if not (dist.is_available() and dist.is_initialized()):
        if not _fallback_noted:
            logger.info("syncbn: torch.distributed is not initialized; SyncBatchNorm acts as BatchNorm")
            _fallback_noted = True
        return False
    backend = str(dist.get_backend(process_group)).lower()
    if not any(b in backend for b in ("gloo", "nccl", "mpi", "ucc")):
        raise RuntimeError(f"syncbn: unsupported process-group backend {backend!r} (use gloo or nccl)")
    cuda_only = "nccl" in backend and "gloo" not in backend
    if cuda_only and not torch.cuda.is_available():
        raise RuntimeError(
            f"syncbn: the process group uses backend {backend!r}, which needs CUDA tensors, but "
            f"CUDA is not available. Initialize the process group with backend='gloo' for CPU "
            f"runs, or use norm 'bn' / 'gn'."
        )
    world = dist.get_world_size(process_group)
    if probe:
        device = torch.device("cuda", torch.cuda.current_device()) if cuda_only else torch.device("cpu")
        t = torch.ones(1, device=device, dtype=torch.float64)
        try:
            dist.all_reduce(t, group=process_group)
        except Exception as e:  # noqa: BLE001 - re-raised with the cause attached
            raise RuntimeError(f"syncbn: test all-reduce on backend {backend!r} failed: {e}") from e
        if int(t.item()) != world:
            raise RuntimeError(f"syncbn: test all-reduce returned {t.item()} instead of {world}")
    if world == 1:
        if not _fallback_noted:
            logger.info("syncbn: world size is 1; SyncBatchNorm acts as BatchNorm")
            _fallback_noted = True
        return False
    return True


class SyncBatchNorm(BatchNorm2d):
    """BatchNorm2d whose training statistics span all ranks of ``process_group`` (None = world).

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        process_group: Any = None,
        layer_name: str = "",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats,
            layer_name=layer_name, device=device, dtype=dtype,
        )
        self.process_group = process_group

    def __getstate__(self) -> dict[str, Any]:
        # Process groups cannot be pickled (deepcopy / torch.save of the whole module).
        state = self.__dict__.copy()
        state["process_group"] = None
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._uses_batch_stats() or _distributed_world_size(self.process_group) == 1:
            return super().forward(x)  # eval (no communication) or nothing to sync with
        # Hook: on CUDA, torch.nn.SyncBatchNorm's fused kernels could be used instead; keep this
        # path until a GPU benchmark shows the native one is measurably faster.
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        local_n = x.numel() // c if c else 0
        if local_n > 0:
            var_l, mean_l = torch.var_mean(x, dim=dims, unbiased=False)
        else:
            # Empty batch: zero sums that are still connected to x, so backward reaches the
            # all-reduce on this rank too.
            mean_l = var_l = x.sum(dim=dims)
        mean_l, var_l = mean_l.double(), var_l.double()
        n_l = torch.full((1,), float(local_n), dtype=torch.float64, device=x.device)
        stats = torch.cat([n_l * mean_l, n_l * (var_l + mean_l * mean_l), n_l])
        stats = all_reduce_sum(stats, self.process_group)
        total = float(stats[-1].item())
        if total <= 1:
            raise ValueError(
                f"layer {self.layer_name!r}: SyncBatchNorm got {int(total)} value(s) per channel "
                f"over all ranks (input {tuple(x.shape)}); the variance is undefined. Use more "
                f"images or a batch-independent norm (gn/ln)."
            )
        mean = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean * mean).clamp_min(0.0)

        factor = self._momentum_factor()
        if self.training and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                unbiased = var * (total / (total - 1))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))

        # y = x * scale + shift: two elementwise ops; autograd saves x and the per-channel scale.
        invstd = torch.rsqrt(var + self.eps)
        scale = invstd if self.weight is None else invstd * self.weight.double()
        shift = -mean * scale if self.bias is None else self.bias.double() - mean * scale
        shape = (1, c) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))
