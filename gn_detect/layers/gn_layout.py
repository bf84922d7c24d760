"""What the GroupNorm kernels accept (shared by the op, gn_op.py, and the kernels, gn_triton.py):
the dtypes, the int32 in-sample offset limit, and the dense layout an input is copied to."""
from __future__ import annotations

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

__all__ = ["KERNEL_DTYPES", "INDEX_LIMIT", "max_offset", "dense"]

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INDEX_LIMIT = 2**31  # the kernel indexes within a sample in int32


def max_offset(t: Tensor) -> int:
    """The largest element offset of t within one sample: sum((size - 1) * |stride|) over the
    dims after the first (what the kernel's int32 in-sample indexing must hold; for a strided
    view, e.g. a channel slice of a channels-last tensor, far more than numel / N)."""
    return sum((s - 1) * abs(st) for s, st in zip(t.shape[1:], t.stride()[1:]) if s > 0)


def dense(x: Tensor) -> Tensor:
    """x, or a copy in its suggested memory format (the layout ``empty_like(x)`` gives)."""
    return x.contiguous(memory_format=suggest_memory_format(x))
