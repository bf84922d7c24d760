"""GroupNorm helpers: choosing the number of groups, with errors that say how to fix them.

The layer itself is ``torch.nn.GroupNorm`` (Wu & He, 2018): for each sample and each group of
C/G channels, ``y = (x - mean) / sqrt(var + eps) * gamma[c] + beta[c]`` with mean and *biased*
variance over (C/G, H, W). LayerNorm over (C, H, W) is G = 1 and InstanceNorm is G = C.
"""

from __future__ import annotations

from torch import nn

__all__ = ["resolve_num_groups", "group_norm"]

DEFAULT_NUM_GROUPS = 32


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


def group_norm(
    channels: int,
    num_groups: int | None = None,
    channels_per_group: int | None = None,
    *,
    eps: float = 1e-5,
    affine: bool = True,
    layer_name: str = "",
) -> nn.GroupNorm:
    groups = resolve_num_groups(channels, num_groups, channels_per_group, layer_name=layer_name)
    return nn.GroupNorm(groups, channels, eps=eps, affine=affine)
