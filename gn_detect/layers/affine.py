"""AffineChannel: Detectron's frozen per-channel affine, the "BN folded into an affine" norm.

``y = x * weight[c] + bias[c]``. It is what an eval-mode BatchNorm computes once its statistics
are folded in::

    weight = gamma / sqrt(running_var + eps)
    bias   = beta - running_mean * weight

so a BatchNorm checkpoint (e.g. torchvision's ImageNet ResNets) loads straight into it; the
conversion happens on load (see ``_load_from_state_dict``). The state-dict keys stay
``weight``/``bias`` whether they are buffers (frozen, default) or parameters (``trainable``),
so checkpoints move between the two variants and to/from BN-keyed code without renaming.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["AffineChannel"]

_BN_STAT_KEYS = ("running_mean", "running_var")


class AffineChannel(nn.Module):
    """Per-channel ``y = x * weight + bias`` over dim 1 of an ``(N, C, ...)`` tensor.

    Args:
        num_features: number of channels C.
        eps: the epsilon used to fold BatchNorm statistics when a BN state dict is loaded.
            BN's eps is not part of its state dict, so it has to be
            known here; 1e-5 matches torchvision's and Detectron's ResNets.
        trainable: False (default, Detectron's setting) keeps weight/bias as buffers: no
            gradients, nothing for the optimizer, no statistics. True makes them Parameters.

    A fresh layer is an exact identity (``x * 1 + 0``).
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, trainable: bool = False) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.trainable = bool(trainable)
        weight = torch.ones(self.num_features)
        bias = torch.zeros(self.num_features)
        if self.trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)

    def fold_scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 ``(s, t)`` with ``self(x) == x * s + t`` (deploy/fold.py; the norm table's
        ``foldable``)."""
        return self.weight.detach().double(), self.bias.detach().double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"AffineChannel expects (N, {self.num_features}, ...) input, got {tuple(x.shape)}"
            )
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # addcmul is a single fused kernel (bias + x * weight); cast so fp16 inputs keep their dtype.
        return torch.addcmul(
            self.bias.to(x.dtype).view(shape), x, self.weight.to(x.dtype).view(shape)
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, trainable={self.trainable}"

    # ------------------------------------------------------------------ BN conversion
    @staticmethod
    def _fold(
        gamma: torch.Tensor | None,
        beta: torch.Tensor | None,
        mean: torch.Tensor,
        var: torch.Tensor,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Fold in float64 so a float32 checkpoint folds without extra rounding.
        mean64, var64 = mean.detach().double(), var.detach().double()
        g = torch.ones_like(mean64) if gamma is None else gamma.detach().double()
        b = torch.zeros_like(mean64) if beta is None else beta.detach().double()
        scale = g / torch.sqrt(var64 + eps)
        return scale, b - mean64 * scale

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm, trainable: bool = False) -> "AffineChannel":
        """The AffineChannel equal to ``bn`` in eval mode (uses ``bn.eps``)."""
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("from_batchnorm needs a BatchNorm that tracks running statistics")
        out = cls(bn.num_features, eps=bn.eps, trainable=trainable).to(
            device=bn.running_mean.device, dtype=bn.running_mean.dtype
        )
        scale, bias = cls._fold(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
        with torch.no_grad():
            out.weight.copy_(scale)
            out.bias.copy_(bias)
        return out

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A BatchNorm state dict (weight, bias, running_mean, running_var, num_batches_tracked)
        # is folded into (weight, bias) here, so that `model.load_state_dict(bn_checkpoint)`
        # works for an affine backbone with unchanged key names. torch's load_state_dict
        # hands every module a shallow copy of the dict, so editing it here is safe.
        present = [k for k in _BN_STAT_KEYS if prefix + k in state_dict]
        if len(present) == 1:
            error_msgs.append(
                f"AffineChannel {prefix!r}: state dict has {prefix + present[0]} but not the other "
                f"BatchNorm statistic; need both running_mean and running_var to fold BN into affine"
            )
        elif len(present) == 2:
            mean = state_dict.pop(prefix + "running_mean")
            var = state_dict.pop(prefix + "running_var")
            scale, bias = self._fold(
                state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias"), mean, var, self.eps
            )
            state_dict[prefix + "weight"] = scale.to(self.weight.dtype)
            state_dict[prefix + "bias"] = bias.to(self.bias.dtype)
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
