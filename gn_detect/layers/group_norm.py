"""GroupNorm layers: the number of groups, the implementation (``impl``), GN + ReLU fused.

GroupNorm (Wu & He, 2018): for each sample and each group of C/G channels,
``y = (x - mean) / sqrt(var + eps) * gamma[c] + beta[c]`` with mean and *biased* variance over
(C/G, H, W). LayerNorm over (C, H, W) is G = 1 and InstanceNorm is G = C.

``impl`` picks the code that runs, per call, from the input:
  auto    the op ``torch.ops.gn_detect.group_norm`` (``gn_op.py``): the Triton kernel
          (``gn_triton.py``) for CUDA float32/bfloat16/float16 inputs when triton is installed
          and the kernel's self-check passed, aten's GN otherwise (so CPU results are unchanged;
          eager calls off CUDA skip the op and call ``F.group_norm`` directly);
  torch   always ``F.group_norm`` (``get_norm`` then builds a plain ``nn.GroupNorm``);
  triton  the op, always with the kernel: CPU tensors only under ``TRITON_INTERPRET=1``, else
          a clear error.
The modules are ``nn.GroupNorm`` subclasses with the same ``weight``/``bias`` parameters, so
state dicts, ``NORM_TYPES`` and checkpoints do not depend on ``impl``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import gn_op
from .gn_op import group_norm_op

__all__ = ["resolve_num_groups", "group_norm", "GroupNorm", "GroupNormAct", "GN_IMPLS", "check_impl"]

DEFAULT_NUM_GROUPS = 32
GN_IMPLS: tuple[str, ...] = ("auto", "torch", "triton")
GN_ACTS: tuple[str, ...] = ("relu", "none")


def check_impl(impl: str, *, layer_name: str = "") -> str:
    """The canonical GroupNorm implementation name; ValueError naming the choices otherwise."""
    key = str(impl).strip().lower()
    if key not in GN_IMPLS:
        where = f"layer {layer_name!r}" if layer_name else "GroupNorm"
        raise ValueError(f"{where}: unknown impl {impl!r}; valid choices: {', '.join(GN_IMPLS)}")
    return key


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_num_groups(
    channels: int,
    num_groups: int | None = None,
    channels_per_group: int | None = None,
    *,
    layer_name: str = "",
) -> int:
    """The number of groups G for ``channels`` given either G or C/G (default G = 32)."""
    where = f"layer {layer_name!r}" if layer_name else "GroupNorm"
    if num_groups is not None and channels_per_group is not None:
        raise ValueError(
            f"{where}: give either num_groups ({num_groups}) or channels_per_group "
            f"({channels_per_group}), not both"
        )
    if channels_per_group is not None:
        if channels_per_group < 1 or channels % channels_per_group != 0:
            raise ValueError(
                f"{where}: channels_per_group={channels_per_group} does not divide the "
                f"{channels} channels. Fix: use channels_per_group in {_divisors(channels)} "
                f"or set num_groups instead."
            )
        return channels // channels_per_group
    groups = DEFAULT_NUM_GROUPS if num_groups is None else num_groups
    if groups < 1 or channels % groups != 0:
        raise ValueError(
            f"{where}: GroupNorm with {groups} groups cannot split {channels} channels into "
            f"equal groups. Fix: use num_groups in {_divisors(channels)} (or channels_per_group) "
            f"for this layer."
        )
    return groups


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that runs the Triton kernel or torch's GN per ``impl`` (module docstring)."""

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
        device=None, dtype=None, *, bias: bool = True, impl: str = "auto",
    ) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=affine, device=device, dtype=dtype,
                         bias=bias)
        self.impl = check_impl(impl)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.impl == "auto" else f", impl={self.impl}")

    def _plain_aten(self, x: torch.Tensor) -> bool:
        """impl=auto, eager, on a device the kernel never serves, parameters beside x and no
        autocast: the op would only call aten's GN (the same numbers) behind its dispatch."""
        return (self.impl == "auto" and x.device.type not in gn_op.KERNEL_DEVICES
                and not torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type)
                and all(p is None or p.device == x.device for p in (self.weight, self.bias)))

    def _group_norm(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        # Eager auto off CUDA runs aten's GN directly: the op would run the same code behind a
        # dispatch that costs about 5-8 % of a CPU training step (scripts/bench_model.py); compiled
        # graphs keep the op so that they are the same graph everywhere.
        if self.impl != "torch" and not self._plain_aten(x):
            return group_norm_op(x, self.num_groups, self.weight, self.bias, self.eps, relu=relu,
                                 impl=self.impl)
        y = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(y, inplace=True) if relu else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._group_norm(x, relu=False)


class GroupNormAct(GroupNorm):
    """GroupNorm followed by an activation in one call (timm's ``GroupNormAct``).

    ``act="relu"``: through the op, ReLU is applied in the same call and its backward mask is
    recomputed from x (no extra saved tensor); with impl='torch', ``F.relu`` in place. Same
    ``weight``/``bias`` keys as ``nn.GroupNorm``; an ``nn.GroupNorm`` subclass, so NORM_TYPES
    and the solver's norm weight decay see it.
    """

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
        device=None, dtype=None, *, bias: bool = True, act: str = "relu", impl: str = "auto",
    ) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias, impl=impl)
        key = str(act).strip().lower()
        if key not in GN_ACTS:
            raise ValueError(f"GroupNormAct: unknown act {act!r}; valid choices: {', '.join(GN_ACTS)}")
        self.act = key

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm, act: str = "relu") -> "GroupNormAct":
        """The same layer plus ``act``, taking over ``norm``'s Parameter objects (optimizer
        references and tied weights stay valid); ``impl`` is kept (plain nn.GroupNorm: torch)."""
        new = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine, device="meta",
                  bias=norm.bias is not None, act=act, impl=getattr(norm, "impl", "torch"))
        new.weight, new.bias = norm.weight, norm.bias
        new.train(norm.training)
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act={self.act}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._group_norm(x, relu=self.act == "relu")


def group_norm(
    channels: int,
    num_groups: int | None = None,
    channels_per_group: int | None = None,
    *,
    eps: float = 1e-5,
    affine: bool = True,
    layer_name: str = "",
    impl: str = "auto",
) -> nn.GroupNorm:
    """``nn.GroupNorm`` for impl='torch' (exactly torch's layer), else ``GroupNorm(impl=...)``."""
    impl = check_impl(impl, layer_name=layer_name)
    groups = resolve_num_groups(channels, num_groups, channels_per_group, layer_name=layer_name)
    if impl == "torch":
        return nn.GroupNorm(groups, channels, eps=eps, affine=affine)
    return GroupNorm(groups, channels, eps=eps, affine=affine, impl=impl)
