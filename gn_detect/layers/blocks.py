"""ConvNormAct: conv -> norm -> activation with fixed child names ``conv``, ``norm``, ``act``,
optionally with one norm and activation per pyramid level behind one shared conv."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .conv import Conv2d
from gn_detect.norms import canonical_name, norm_names, norm_spec, split_norm_name

from .norm import get_norm_act

__all__ = ["ConvNormAct"]



def _normalizing() -> str:
    """The names of norms that compute statistics of their input (what WS and pn_relu need)."""
    return ", ".join(n for n in norm_names() if norm_spec(n).normalizes and not norm_spec(n).ws)


class ConvNormAct(nn.Module):
    """``act(norm(conv(x)))``; absent parts are ``nn.Identity`` so the state-dict keys
    (``conv.weight``, ``conv.bias``, ``norm.*``, ``act.*``) never depend on the choice of norm.
    A norm whose table entry lists the activation in ``fused_acts`` applies it itself
    (``get_norm_act``; ``act`` is then Identity).

    Args:
        norm: a ``get_norm`` name. ``"gn_ws"`` means GN plus ``ws=True``.
        ws: weight-standardize the conv; None derives it from ``norm``.
        act: ``relu``, ``none`` or ``pn_relu``. With ``pn_relu`` the norm is built with
            ``affine=False`` (overriding ``norm_opts``) and the activation owns the affine;
            it needs a norm whose table entry ``normalizes``.
        norm_opts: extra keyword options for ``get_norm`` (num_groups, eps, ...).
        bias: conv bias; None means "only when the norm adds no shift" (its table entry).
        padding: default ``dilation * (kernel_size - 1) // 2`` (same size for odd kernels).
        num_levels: None for one norm; an int builds ``norm`` and ``act`` as ModuleLists with one
            entry per pyramid level (a conv shared across levels whose norm statistics must not
            be, e.g. BN in the RetinaNet head); ``forward(x, level)`` picks the level's.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        norm: str | None = "none",
        ws: bool | None = None,
        act: str | None = "relu",
        norm_opts: dict[str, Any] | None = None,
        layer_name: str = "",
        bias: bool | None = None,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        num_levels: int | None = None,
    ) -> None:
        super().__init__()
        norm_key, norm_ws = split_norm_name(norm, layer_name=layer_name)
        if ws is None:
            ws = norm_ws
        elif norm_ws and not ws:
            raise ValueError(f"layer {layer_name!r}: norm 'gn_ws' contradicts ws=False")
        act_key = canonical_name(act)
        opts = dict(norm_opts or {})
        opts.pop("layer_name", None)
        if act_key == "pn_relu":
            if not norm_spec(norm_key).normalizes:
                raise ValueError(
                    f"layer {layer_name!r}: act 'pn_relu' assumes a normalized input, but norm is "
                    f"{norm_key!r}; use one of {_normalizing()} or act 'relu'"
                )
            opts.update(affine=False)
        if ws and not norm_spec(norm_key).normalizes:
            warnings.warn(
                f"layer {layer_name!r}: weight standardization on a conv followed by norm "
                f"{norm_key!r}, which does not normalize; the output scale is then fixed by the "
                f"fan-in. Use ws with one of {_normalizing()}.",
                stacklevel=2,
            )
        if bias is None:
            bias = not norm_spec(norm_key).shift
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2

        self.layer_name = layer_name
        self.conv = Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=bias, ws=ws,
        )
        if num_levels is None:
            self.norm, self.act = get_norm_act(norm_key, out_channels, act_key, layer_name=layer_name, **opts)
        else:
            pairs = [get_norm_act(norm_key, out_channels, act_key, layer_name=f"{layer_name}.norm.{lvl}", **opts)
                     for lvl in range(num_levels)]
            self.norm = nn.ModuleList(n for n, _ in pairs)
            self.act = nn.ModuleList(a for _, a in pairs)

    def forward(self, x: torch.Tensor, level: int | None = None) -> torch.Tensor:
        if isinstance(self.norm, nn.ModuleList):
            if level is None:
                raise ValueError(f"layer {self.layer_name!r} has a norm per pyramid level: call it with level=")
            return self.act[level](self.norm[level](self.conv(x)))
        return self.act(self.norm(self.conv(x)))
