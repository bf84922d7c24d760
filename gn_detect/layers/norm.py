"""Norm layer builders: one function per entry of the norm table (gn_detect/norms.py), and
``get_norm`` / ``get_norm_act``, which look a name up there. See the table for the names.

Options that belong to another family (e.g. ``num_groups`` for ``bn``) are ignored so that a
single options dict can be passed to every layer; ``bn_group_size`` with ``syncbn`` is an error
because its meaning there would be ambiguous.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from gn_detect.norms import build_norm, canonical_name, norm_spec, split_norm_name

from .activation import ProxyNormAct, get_activation
from .affine import AffineChannel
from .batch_norm import BatchNorm2d
from .group_norm import GroupNormAct, check_impl, group_norm
from .sync_batch_norm import SyncBatchNorm, check_syncbn_usable

__all__ = ["get_norm", "get_norm_act", "split_norm_name", "NORM_TYPES"]

# Modules whose parameters are norm parameters (the solver gives them their own weight decay).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    _BatchNorm,  # BatchNorm2d (incl. ghost), SyncBatchNorm, torch's BN / SyncBN
    nn.GroupNorm,  # gn, gn_ws, ln, in
    nn.LayerNorm,
    _InstanceNorm,
    AffineChannel,
    ProxyNormAct,  # gamma/beta and the post affine of the PN activation
)


def _where(layer_name: str) -> str:
    return f"layer {layer_name!r}" if layer_name else "get_norm"


def build_none(channels: int, **_: Any) -> nn.Module:
    return nn.Identity()


def build_affine(channels: int, *, eps: float = 1e-5, trainable: bool = False, affine: bool = True,
                 layer_name: str = "", **_: Any) -> nn.Module:
    if not affine:
        raise ValueError(
            f"{_where(layer_name)}: norm 'affine' with affine=False would be an identity and "
            f"does not normalize; use norm 'none', or gn/bn before a proxy-normalized activation"
        )
    return AffineChannel(channels, eps=eps, trainable=trainable)


def build_bn(channels: int, *, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
             bn_group_size: int | None = None, layer_name: str = "", **_: Any) -> nn.Module:
    return BatchNorm2d(channels, eps=eps, momentum=momentum, affine=affine,
                       bn_group_size=bn_group_size, layer_name=layer_name)


def build_syncbn(channels: int, *, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 bn_group_size: int | None = None, layer_name: str = "", **_: Any) -> nn.Module:
    if bn_group_size is not None:
        raise ValueError(
            f"{_where(layer_name)}: bn_group_size={bn_group_size} is for ghost-batch BN on one "
            f"device; syncbn always uses the batch of all ranks"
        )
    check_syncbn_usable()  # raises now, at build time, if the process group cannot work
    return SyncBatchNorm(channels, eps=eps, momentum=momentum, affine=affine, layer_name=layer_name)


def build_gn(channels: int, *, num_groups: int | None = None, channels_per_group: int | None = None,
             eps: float = 1e-5, affine: bool = True, impl: str | None = "auto", layer_name: str = "",
             act: str | None = None, **_: Any) -> nn.Module:
    norm = group_norm(channels, num_groups, channels_per_group, eps=eps, affine=affine,
                      layer_name=layer_name, impl="auto" if impl is None else impl)
    return norm if act is None else GroupNormAct.from_group_norm(norm, act=act)


def build_ln(channels: int, **opts: Any) -> nn.Module:
    """GroupNorm with one group; the num_groups options are ignored."""
    opts.pop("num_groups", None), opts.pop("channels_per_group", None)
    return build_gn(channels, num_groups=1, **opts)


def build_in(channels: int, **opts: Any) -> nn.Module:
    """GroupNorm with one channel per group; the num_groups options are ignored."""
    opts.pop("num_groups", None), opts.pop("channels_per_group", None)
    return build_gn(channels, num_groups=channels, **opts)


def get_norm(name: str | None, channels: int, *, impl: str | None = "auto", layer_name: str = "",
             **opts: Any) -> nn.Module:
    """Build the norm ``name`` (see gn_detect/norms.py for names) for ``channels`` channels.

    Options (each builder takes its own and ignores the rest): ``num_groups`` /
    ``channels_per_group`` (GN's G or C/G, default G = 32), ``eps``, ``momentum``,
    ``bn_group_size`` (ghost batch size for ``bn``), ``trainable`` (``affine``: Parameters instead
    of frozen buffers), ``affine`` (False builds a normalizing norm without its elementwise
    affine, before a proxy-normalized activation), ``impl`` (GroupNorm code: auto, torch, triton;
    checked for every norm), ``layer_name`` (named in errors).
    """
    impl = check_impl("auto" if impl is None else impl, layer_name=layer_name)
    channels = int(channels)
    if channels < 1:
        raise ValueError(f"{_where(layer_name)}: channels must be positive, got {channels}")
    return build_norm(name, channels, impl=impl, layer_name=layer_name, **opts)


def get_norm_act(name: str | None, channels: int, act: str | None, **opts) -> tuple[nn.Module, nn.Module]:
    """``(norm, activation)`` modules for ``act(norm(x))``, fusing where the norm can.

    A norm whose table entry lists ``act`` in ``fused_acts`` is built with ``act=`` by its own
    builder (``GroupNormAct`` for the GN family, any registered norm alike):
    ``(fused, nn.Identity())``, same ``weight``/``bias`` keys as the unfused pair. Anything else
    gives ``(get_norm(name, channels, **opts), get_activation(act, channels))``.
    """
    act_key = canonical_name(act)
    if act_key != "none" and act_key in norm_spec(name).fused_acts:
        return get_norm(name, channels, act=act_key, **opts), nn.Identity()
    return get_norm(name, channels, **opts), get_activation(act, channels)
