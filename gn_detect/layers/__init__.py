"""Norm layer library: ``get_norm`` builds every norm; WS conv; PN activation; ConvNormAct.

See docs/norms.md for the formulas and conventions.
"""

from .activation import ACTIVATIONS, ProxyNormAct, get_activation
from .affine import AffineChannel
from .batch_norm import BatchNorm2d
from .blocks import ConvNormAct
from .conv import WS_EPS, Conv2d, convert_ws, standardize_weight
from .conv import ws_forward_cache
from gn_detect.norms import canonical_name
from .group_norm import resolve_num_groups
from .group_norm import GN_IMPLS, GroupNorm, GroupNormAct
from .norm import NORM_TYPES, get_norm, split_norm_name
from .norm import get_norm_act
from .sync_batch_norm import SyncBatchNorm, check_syncbn_usable

__all__ = [
    "ACTIVATIONS",
    "AffineChannel",
    "BatchNorm2d",
    "Conv2d",
    "GN_IMPLS",
    "GroupNorm",
    "GroupNormAct",
    "ConvNormAct",
    "NORM_TYPES",
    "ProxyNormAct",
    "SyncBatchNorm",
    "WS_EPS",
    "canonical_name",
    "check_syncbn_usable",
    "convert_ws",
    "get_activation",
    "get_norm",
    "get_norm_act",
    "resolve_num_groups",
    "split_norm_name",
    "standardize_weight",
    "ws_forward_cache",
]
