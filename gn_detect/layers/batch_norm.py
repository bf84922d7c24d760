"""BatchNorm2d with an optional ghost batch size (``bn_group_size``) and clear errors.

Training with ``bn_group_size=k`` normalizes every group of k consecutive images of the device
batch with that group's own statistics (mean and biased variance over (k, H, W)), as if the
device batch had been split into several devices of k images each. Eval mode is plain BN with
the running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BatchNorm2d"]


def _layer(layer_name: str) -> str:
    return f"layer {layer_name!r}" if layer_name else "a BatchNorm layer"


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` plus ghost batches; same parameters, buffers and state-dict keys.

    Args:
        bn_group_size: None uses the whole device batch (plain BN). ``k`` computes training
            statistics over groups of k images; the device batch must be a multiple of k.
        layer_name: used in error messages only.

    Running statistics with groups: each group's (mean, unbiased var) updates a copy of the
    running buffers exactly as PyTorch's BN would, and the copies are averaged, i.e.
    ``running = (1 - m) * running + m * mean_over_groups(stat_g)``. That is the same as the
    average of the running stats of G independent BNs each fed one group.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bn_group_size: int | None = None,
        layer_name: str = "",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        if bn_group_size is not None and (
            isinstance(bn_group_size, bool) or not isinstance(bn_group_size, int) or bn_group_size < 1
        ):
            raise ValueError(
                f"{_layer(layer_name)}: bn_group_size must be a positive int or None, "
                f"got {bn_group_size!r}"
            )
        self.bn_group_size = bn_group_size
        self.layer_name = layer_name

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", bn_group_size={self.bn_group_size}" if self.bn_group_size else "")

    def _check_batch(self, x: torch.Tensor, values_per_channel: int, what: str) -> None:
        # PyTorch raises a terse message here (and NaN stats in some paths); say why and how to fix.
        if values_per_channel == 1:
            raise ValueError(
                f"{_layer(self.layer_name)}: batch statistics over {what} of input shape "
                f"{tuple(x.shape)} have a single value per channel, so the variance is undefined. "
                f"Use more images per statistics group (larger per-device batch or bn_group_size), "
                f"a larger feature map, or a batch-independent norm (gn/ln) or 'affine'."
            )

    def _uses_batch_stats(self) -> bool:
        return self.training or (self.running_mean is None and self.running_var is None)

    def _momentum_factor(self) -> float:
        # Mirrors torch.nn.modules.batchnorm._BatchNorm.forward (momentum=None: cumulative average).
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        return factor

    def fold_scale_shift(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """float64 ``(s, t)`` with ``self(x) == x * s + t`` in eval mode, None without running
        statistics (deploy/fold.py; the norm table's ``foldable``; SyncBatchNorm inherits it)."""
        if self.running_mean is None or self.running_var is None:
            return None
        mean, var = self.running_mean.detach().double(), self.running_var.detach().double()
        gamma = torch.ones_like(mean) if self.weight is None else self.weight.detach().double()
        beta = torch.zeros_like(mean) if self.bias is None else self.bias.detach().double()
        s = gamma / torch.sqrt(var + self.eps)
        return s, beta - mean * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self._uses_batch_stats():
            return super().forward(x)
        n, c, h, w = x.shape
        k = self.bn_group_size or n
        if n == 0:
            # Nothing to normalize; torch returns the empty tensor and leaves the stats alone.
            return super().forward(x)
        if n % k != 0:
            raise ValueError(
                f"{_layer(self.layer_name)}: bn_group_size={k} does not divide the per-device "
                f"batch of {n} images, so the last statistics group would be incomplete. Use a "
                f"per-device batch that is a multiple of {k} (and drop_last in the sampler), or "
                f"set bn_group_size to a divisor of {n}, or None for the whole device batch."
            )
        self._check_batch(x, k * h * w, f"{k} image(s) x {h}x{w} pixels")
        if k == n:
            return super().forward(x)

        g = n // k
        factor = self._momentum_factor()
        # (G*k, C, H, W) -> (k, G*C, H, W): every (group, channel) pair becomes its own BN
        # channel, so a single fused F.batch_norm call computes all groups' statistics.
        xg = x.reshape(g, k, c, h, w).transpose(0, 1).reshape(k, g * c, h, w)
        weight = self.weight.repeat(g) if self.weight is not None else None
        bias = self.bias.repeat(g) if self.bias is not None else None
        track = self.training and self.running_mean is not None and self.running_var is not None
        rm = self.running_mean.repeat(g) if track else None
        rv = self.running_var.repeat(g) if track else None
        y = F.batch_norm(xg, rm, rv, weight, bias, True, factor, self.eps)
        if track:
            with torch.no_grad():
                # each copy was updated as (1-m)*old + m*stat_g; their mean is the update with
                # the mean over groups of the per-group statistics.
                self.running_mean.copy_(rm.view(g, c).mean(0))
                self.running_var.copy_(rv.view(g, c).mean(0))
        return y.reshape(k, g, c, h, w).transpose(0, 1).reshape(n, c, h, w)
