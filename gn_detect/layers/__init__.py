"""Norm layer library: ``get_norm`` builds every norm; WS conv; PN activation; ConvNormAct.

See docs/norms.md for the formulas and conventions.
"""

from .activation import ACTIVATIONS, ProxyNormAct, gaussian_cells, get_activation
from .affine import AffineChannel, fold_into_conv
from .batch_norm import BatchNorm2d
from .blocks import ConvNormAct
from .conv import WS_EPS, Conv2d, convert_ws, standardize_weight
from .freeze import freeze_module, is_frozen, unfreeze_module
from .group_norm import resolve_num_groups
from .norm import NORM_NAMES, NORM_TYPES, NormFactory, get_norm, norm_layer, split_norm_name
from .sync_batch_norm import SyncBatchNorm, all_reduce_sum, check_syncbn_usable

__all__ = [
    "ACTIVATIONS",
    "AffineChannel",
    "BatchNorm2d",
    "Conv2d",
    "ConvNormAct",
    "NORM_NAMES",
    "NORM_TYPES",
    "NormFactory",
    "ProxyNormAct",
    "SyncBatchNorm",
    "WS_EPS",
    "all_reduce_sum",
    "check_syncbn_usable",
    "convert_ws",
    "fold_into_conv",
    "freeze_module",
    "gaussian_cells",
    "get_activation",
    "get_norm",
    "is_frozen",
    "norm_layer",
    "resolve_num_groups",
    "split_norm_name",
    "standardize_weight",
    "unfreeze_module",
]
