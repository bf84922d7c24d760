"""``get_norm``: the only place norm layers are built, from a name and options.

Names (case-insensitive; '-' and ' ' read as '_'):

======== ==============================================================
affine   AffineChannel: frozen per-channel affine (BN folded, Detectron)
bn       BatchNorm2d, optional ghost batches (``bn_group_size``)
syncbn   SyncBatchNorm over all ranks (plain BN without a process group)
gn       GroupNorm, ``num_groups`` (default 32) or ``channels_per_group``
gn_ws    same module as ``gn``; the WS half belongs to the conv (split_norm_name)
ln       GroupNorm with G = 1 (LayerNorm over C, H, W)
in       GroupNorm with G = C (InstanceNorm with affine, no running stats)
none     nn.Identity ("" and None too)
======== ==============================================================

Options that belong to another family (e.g. ``num_groups`` for ``bn``) are ignored so that a
single options dict can be passed to every layer; ``bn_group_size`` with ``syncbn`` is an error
because its meaning there would be ambiguous.
"""

from __future__ import annotations


from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from .activation import ProxyNormAct, get_activation
from .affine import AffineChannel
from .batch_norm import BatchNorm2d
from .names import canonical_name
from .group_norm import GroupNormAct, check_impl, group_norm
from .sync_batch_norm import SyncBatchNorm, check_syncbn_usable

__all__ = ["get_norm", "get_norm_act", "split_norm_name", "NORM_NAMES", "NORM_TYPES"]

NORM_NAMES: tuple[str, ...] = ("affine", "bn", "syncbn", "gn", "gn_ws", "ln", "in", "none")

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


def split_norm_name(name: str | None, *, layer_name: str = "") -> tuple[str, bool]:
    """``"gn_ws" -> ("gn", True)``; any other valid name -> (normalized name, False).

    ``None`` and ``""`` give ``("none", False)``. Unknown names raise ValueError.
    """
    key = canonical_name(name)
    if key not in NORM_NAMES:
        raise ValueError(
            f"{_where(layer_name)}: unknown norm {name!r}; valid choices: {', '.join(NORM_NAMES)}"
        )
    if key == "gn_ws":
        return "gn", True
    return key, False


def get_norm(
    name: str | None,
    channels: int,
    *,
    num_groups: int | None = None,
    channels_per_group: int | None = None,
    eps: float = 1e-5,
    momentum: float = 0.1,
    bn_group_size: int | None = None,
    trainable: bool = False,
    affine: bool = True,
    impl: str | None = "auto",
    layer_name: str = "",
) -> nn.Module:
    """Build the norm ``name`` for ``channels`` channels (see the module docstring for names).

    Args:
        num_groups / channels_per_group: GroupNorm's G or C/G (at most one; default G = 32).
        eps: added to the variance (BN/GN) or used to fold BN statistics (affine).
        momentum: running-statistics momentum for bn/syncbn (PyTorch convention).
        bn_group_size: ghost batch size for ``bn``.
        trainable: ``affine`` only: make scale/bias Parameters instead of frozen buffers.
        affine: False builds bn/syncbn/gn/ln/in without the elementwise affine (used before a
            proxy-normalized activation, which owns the affine). Invalid for ``affine``.
        impl: GroupNorm code for gn/gn_ws/ln/in: ``auto`` (Triton kernel on CUDA, torch's GN
            elsewhere; None means auto), ``torch`` (a plain nn.GroupNorm) or ``triton`` (see
            group_norm.py). Checked for every norm, used only by the GN family.
        layer_name: named in error messages.
    """
    norm, _ws = split_norm_name(name, layer_name=layer_name)
    impl = check_impl("auto" if impl is None else impl, layer_name=layer_name)
    channels = int(channels)
    if channels < 1:
        raise ValueError(f"{_where(layer_name)}: channels must be positive, got {channels}")
    if norm == "none":
        return nn.Identity()
    if norm == "affine":
        if not affine:
            raise ValueError(
                f"{_where(layer_name)}: norm 'affine' with affine=False would be an identity and "
                f"does not normalize; use norm 'none', or gn/bn before a proxy-normalized activation"
            )
        return AffineChannel(channels, eps=eps, trainable=trainable)
    if norm == "bn":
        return BatchNorm2d(
            channels, eps=eps, momentum=momentum, affine=affine,
            bn_group_size=bn_group_size, layer_name=layer_name,
        )
    if norm == "syncbn":
        if bn_group_size is not None:
            raise ValueError(
                f"{_where(layer_name)}: bn_group_size={bn_group_size} is for norm 'bn' (ghost "
                f"batches on one device); syncbn always uses the batch of all ranks"
            )
        check_syncbn_usable()  # raises now, at build time, if the process group cannot work
        return SyncBatchNorm(channels, eps=eps, momentum=momentum, affine=affine, layer_name=layer_name)
    if norm in ("gn", "ln", "in"):  # ln: G = 1, in: G = C; their num_groups options are ignored
        groups = {"gn": num_groups, "ln": 1, "in": channels}[norm]
        per_group = channels_per_group if norm == "gn" else None
        return group_norm(
            channels, groups, per_group, eps=eps, affine=affine, layer_name=layer_name, impl=impl
        )
    raise AssertionError(f"unhandled norm {norm!r}")  # NORM_NAMES and this function disagree


def get_norm_act(name: str | None, channels: int, act: str | None, **opts) -> tuple[nn.Module, nn.Module]:
    """``(norm, activation)`` modules for ``act(norm(x))``, fusing where a kernel can.

    A GN-family norm (gn, gn_ws, ln, in) followed by ``relu`` gives
    ``(GroupNormAct(..., act="relu"), nn.Identity())``: one pass with the Triton kernel, and the
    same ``weight``/``bias`` keys as the unfused pair. Anything else gives
    ``(get_norm(name, channels, **opts), get_activation(act, channels))``. ``opts`` are
    ``get_norm``'s keyword options (validated the same way).
    """
    norm = get_norm(name, channels, **opts)
    if isinstance(norm, nn.GroupNorm) and canonical_name(act) == "relu":
        return GroupNormAct.from_group_norm(norm, act="relu"), nn.Identity()
    return norm, get_activation(act, channels)
