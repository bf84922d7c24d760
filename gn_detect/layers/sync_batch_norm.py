"""SyncBatchNorm for CPU (gloo) and GPU (NCCL): BN statistics over the batch of all ranks.

``torch.nn.SyncBatchNorm`` refuses CPU tensors, so this is a small implementation with the same
structure (a custom autograd Function, one collective each way). All statistics are centred;
no ``E[x^2] - E[x]^2`` appears anywhere, so inputs with ``|mean| >> std`` stay accurate.

* forward, statistics: every rank computes per channel its count ``n``, its mean (a float64
  sum, so exact to float64 even for float32 input) and ``M2 = n * var_local`` (centred,
  ``torch.var_mean`` in the compute dtype: float32, or float64 for float64 input; half and
  bfloat16 are upcast to float32). One all-gather of ``[n, mean, M2]`` per rank, combined in
  float64 with Chan's parallel formula: ``N = sum n_r``, ``mean = sum n_r mean_r / N``,
  ``M2 = sum (M2_r + n_r (mean_r - mean)^2)``, ``var = M2 / N`` (biased, used to normalize).
* forward, output: ``y = (x - mean) * invstd * gamma + beta`` with ``mean`` split into a
  compute-dtype part and its float64 remainder (``mean_hi + mean_lo``): ``x - mean_hi`` is
  exact for values near the mean and ``mean_lo`` goes into the per-channel shift, so the
  centring keeps float64 accuracy. ``invstd = 1 / sqrt(var + eps)``.
* backward: the standard BN backward. Each rank sums ``dy`` and ``dy * (x - mean)`` over its
  batch, one all-reduce SUM gives the global sums, and
  ``dx = (dy - sum_dy / N - xhat * sum_dy_xhat / N) * invstd * gamma``. ``dgamma``/``dbeta``
  are the rank's local share (``sum dy * xhat``, ``sum dy``); DDP sums them over ranks. The
  all-reduce runs only when ``x`` needs a gradient. No double backward.
* running statistics: ``running_var`` gets the unbiased variance over the global count
  ``N / (N - 1) * var``, so they equal those of BN run on the concatenated batch.

A rank with an empty batch contributes ``n = 0`` and still takes part in both collectives, so
nobody hangs -- provided its loss depends on this layer's (empty) output, as any rank's loss
must under DDP anyway. Eval mode uses the running statistics and never communicates.
Without an initialized process group, or with world size 1, this is plain BN.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .batch_norm import BatchNorm2d

__all__ = ["SyncBatchNorm", "check_syncbn_usable"]

logger = logging.getLogger(__name__)
_fallback_noted = False


def _distributed_world_size(group: Any = None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; float32, half and bfloat16 are computed in float32."""
    return torch.promote_types(x.dtype, torch.float32)


def _split_mean(mean: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 ``mean`` as ``hi + lo``: ``hi`` rounded to ``dtype``, ``lo`` the float64 rest."""
    hi = mean.to(dtype)
    return hi, mean - hi.double()


def _reduce_dims(x: torch.Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _global_moments(x: torch.Tensor, group: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-channel float64 (mean, biased var) over the batches of all ranks, and the count N.

    Collective (one all-gather; an empty rank joins with count 0). Not differentiable: the
    Function's backward accounts for the dependence of the statistics on ``x``.
    """
    c = x.shape[1]
    dims = _reduce_dims(x)
    n = x.numel() // c if c else 0
    if n > 0:
        var_l, _ = torch.var_mean(x.to(_compute_dtype(x)), dim=dims, correction=0)
        mean_l = x.sum(dim=dims, dtype=torch.float64) / n  # float64 accumulation: exact mean
        m2_l = var_l.double() * n
    else:
        mean_l = m2_l = torch.zeros(c, dtype=torch.float64, device=x.device)
    count = torch.full((1,), float(n), dtype=torch.float64, device=x.device)
    local = torch.cat([count, mean_l, m2_l])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    stats = torch.stack(gathered)  # (world, 1 + 2C)
    counts, means, m2s = stats[:, :1], stats[:, 1 : c + 1], stats[:, c + 1 :]
    total = float(counts.sum().item())
    mean = (counts * means).sum(0) / max(total, 1.0)
    m2 = (m2s + counts * (means - mean).square()).sum(0)  # Chan et al.'s parallel combination
    return mean, m2 / max(total, 1.0), total


class _SyncBatchNormFn(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with global float64 (mean, invstd); BN backward.

    ``mean``/``invstd`` come from ``_global_moments`` and are treated as functions of ``x``
    by the backward (the standard BN gradient with all-reduced sums), not as constants.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                mean: torch.Tensor, invstd: torch.Tensor, total: float, group: Any) -> torch.Tensor:
        cdtype = _compute_dtype(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean_hi, mean_lo = _split_mean(mean, cdtype)
        scale = invstd if weight is None else invstd * weight.double()
        shift = -mean_lo * scale if bias is None else bias.double() - mean_lo * scale
        xmu = x.to(cdtype) - mean_hi.view(shape)  # exact near the mean; mean_lo is in the shift
        y = torch.addcmul(shift.to(cdtype).view(shape), xmu, scale.to(cdtype).view(shape))
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.total, ctx.group = total, group
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        cdtype, dims, c = _compute_dtype(x), _reduce_dims(x), x.shape[1]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean_hi, mean_lo = _split_mean(mean, cdtype)
        dy_c = dy.to(cdtype)
        xmu = x.to(cdtype) - mean_hi.view(shape)  # x - mean + mean_lo
        sum_dy = dy_c.sum(dim=dims).double()
        sum_dy_xmu = (dy_c * xmu).sum(dim=dims).double() - mean_lo * sum_dy
        dx = None
        if ctx.needs_input_grad[0]:
            sums = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
            mean_dy, mean_dy_xmu = sums[:c] / ctx.total, sums[c:] / ctx.total
            # dx = (dy - mean_dy - xmu * invstd^2 * mean_dy_xmu) * invstd * weight
            #    = dy * a + (x - mean_hi) * b + (-mean_dy * a - mean_lo * b)
            a = invstd if weight is None else invstd * weight.double()
            b = -a * invstd * invstd * mean_dy_xmu
            const = -mean_dy * a - mean_lo * b
            dx = xmu.mul_(b.to(cdtype).view(shape)).add_(const.to(cdtype).view(shape))
            dx = dx.addcmul_(dy_c, a.to(cdtype).view(shape)).to(x.dtype)
        dw = db = None  # this rank's shares (affine=False: no weight, no bias); DDP sums them
        if weight is not None and ctx.needs_input_grad[1]:
            dw = (sum_dy_xmu * invstd).to(weight.dtype)
        if weight is not None and ctx.needs_input_grad[2]:
            db = sum_dy.to(weight.dtype)
        return dx, dw, db, None, None, None, None


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

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        """``BatchNorm2d``'s arguments except ``bn_group_size`` (the group is every rank's batch),
        plus ``process_group``."""
        if kwargs.get("bn_group_size") is not None:
            raise ValueError("SyncBatchNorm: bn_group_size is for ghost-batch BN on one device; "
                             "syncbn always uses the batch of all ranks")
        super().__init__(*args, **kwargs)
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
        with torch.no_grad():
            mean, var, total = _global_moments(x, self.process_group)
        if total <= 1:
            raise ValueError(
                f"layer {self.layer_name!r}: SyncBatchNorm got {int(total)} value(s) per channel "
                f"over all ranks (input {tuple(x.shape)}); the variance is undefined. Use more "
                f"images or a batch-independent norm (gn/ln)."
            )
        factor = self._momentum_factor()
        if self.training and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                unbiased = var * (total / (total - 1))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        invstd = torch.rsqrt(var + self.eps)
        return _SyncBatchNormFn.apply(
            x, self.weight, self.bias, mean, invstd, total, self.process_group
        )
