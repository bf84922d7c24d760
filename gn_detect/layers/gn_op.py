"""``torch.ops.gn_detect.group_norm``: GroupNorm (+ ReLU) as one registered op, on every device.

The GroupNorm modules (``group_norm.py``) call ``group_norm_op``, which calls the op
``gn_detect::group_norm(x, weight, bias, num_groups, eps, relu, impl, out_dtype, plan)
-> (y, mean, rstd)``; its backward is the second op ``gn_detect::group_norm_backward``
(``register_autograd``). Both have fake implementations, so ``torch.compile(fullgraph=True)``
traces a model through them without graph breaks and each stays one node of the graph; the
launch plan is computed inside the op from real tensors, so compile never makes it symbolic.

What runs inside the op, per call (``impl`` is the module's):
  kernel  the Triton kernel (``gn_triton.py``): impl='triton' always (errors are raised, never
          hidden), impl='auto' for CUDA float32/bfloat16/float16 inputs whose in-sample offsets
          fit in int32, when triton is installed and the self-check of that (device, dtype,
          tiling) passed;
  torch   aten's ``native_group_norm`` (what ``F.group_norm`` runs) otherwise, e.g. on the CPU.

Self-check (impl='auto'): the first time the kernel would run for a (device, dtype, tiling),
the tiling being the kernels the launch plan picks for that input (``gn_triton.kernels_key``),
it runs once on a small tensor, forward and backward with ReLU, against torch's GN in float64;
if it fails to compile or run, or differs by more than ``_self_check_tol``, one warning says so
and that key uses torch's GN from then on.

Autocast: torch's GN is on CUDA autocast's float32 list (not on the CPU's), so under CUDA
autocast a bf16/fp16 input gives a float32 output. The op follows the same policy per device
(``out_dtype``, ``AUTOCAST_FP32_DEVICES``): the kernel reads x in its own dtype and writes y in
float32 (what torch computes after casting x up, without the cast's extra pass); dx has x's dtype.

Determinism: the kernel uses no atomics; its results are bitwise repeatable for the same GPU
model. The HW split is chosen from the SM count, so two GPU models may round differently.

Export (``torch.export``/ONNX) sees ``F.group_norm`` instead of the op (exporters know it).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

from gn_detect.layers.gn_layout import INDEX_LIMIT, KERNEL_DTYPES, dense, max_offset

__all__ = ["group_norm_op", "triton_group_norm", "kernel_usable", "max_offset", "dense", "KERNEL_DEVICES",
           "KERNEL_DTYPES"]

KERNEL_DEVICES: tuple[str, ...] = ("cuda",)  # where impl='auto' may pick the kernel
AUTOCAST_FP32_DEVICES: tuple[str, ...] = ("cuda",)  # torch's autocast runs group_norm in fp32 there
_CHECKED: dict[tuple[str, torch.dtype, str], bool] = {}


@lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _tiling(x: Tensor, num_groups: int, plan: tuple[int, ...]) -> str:
    """Which of the kernel's tilings x takes with the op's ``plan`` overrides (the self-check
    checks each once)."""
    return _gn_triton().kernels_key(x, num_groups, plan)


# ---------------------------------------------------------------------- the two paths


def _stat_dtype(x: Tensor) -> torch.dtype:
    """dtype of mean/rstd and of the per-channel sums: float32, float64 for float64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def _layout_of(t: Tensor, ref: Tensor) -> Tensor:
    """t in ref's suggested memory format (what the fake implementations promise; aten's CUDA
    GN returns NCHW for a channels-last input)."""
    return t.contiguous(memory_format=suggest_memory_format(ref))


def _torch_forward(x, weight, bias, num_groups, eps, relu, out_dtype):
    """aten's GN (+ReLU) -> (y, mean, rstd), mean/rstd (N * G,) in ``_stat_dtype``."""
    n, c = x.shape[:2]
    xin = dense(x if out_dtype is None else x.to(out_dtype))
    y, mean, rstd = torch.native_group_norm(xin, weight, bias, n, c, xin.numel() // max(n * c, 1),
                                            num_groups, eps)
    if relu:
        y = torch.relu(y)
    y = _layout_of(y, xin)
    stat = _stat_dtype(x)
    return y, mean.reshape(-1).to(stat), rstd.reshape(-1).to(stat)


def _torch_backward(dy, x, weight, bias, mean, rstd, num_groups, eps, relu):
    """aten's GN backward -> (dx in x's dtype, dgamma, dbeta (C,) in ``_stat_dtype``)."""
    n, c = x.shape[:2]
    xin = dense(x if dy.dtype == x.dtype else x.to(dy.dtype))
    hw = xin.numel() // max(n * c, 1)
    # recompute with aten so that mean/rstd (and the ReLU mask) are exactly the forward's
    y, mean_t, rstd_t = torch.native_group_norm(xin, weight, bias, n, c, hw, num_groups, eps)
    if relu:
        dy = torch.where(y > 0, dy, torch.zeros((), dtype=dy.dtype, device=dy.device))
    w = weight if weight is not None else torch.ones(c, dtype=xin.dtype, device=x.device)
    dx, dw, db = torch.ops.aten.native_group_norm_backward(
        _layout_of(dy, xin), xin, mean_t, rstd_t, w, n, c, hw, num_groups, [True, True, True])
    if dx is None:  # empty input
        dx = torch.zeros_like(xin)
    zeros = torch.zeros(c, dtype=_stat_dtype(x), device=x.device)
    dw = zeros if dw is None else dw.to(zeros.dtype)
    db = zeros if db is None else db.to(zeros.dtype)
    return _layout_of(dx.to(x.dtype), xin), dw, db


def _gn_triton():
    """The kernel module, imported on first use (triton is optional; see gn_triton.py)."""
    if not triton_installed():
        raise RuntimeError("GroupNorm impl='triton' needs the triton package, which is not installed; "
                           "fix: pip install triton, or use impl='auto'/'torch'")
    from gn_detect.layers import gn_triton  # noqa: PLC0415 (optional dependency, see above)

    return gn_triton


def _kernel_forward(x, weight, bias, num_groups, eps, relu, out_dtype, plan):
    gn_triton = _gn_triton()

    return gn_triton.forward(x, weight, bias, num_groups, eps, relu, out_dtype, plan)


def _kernel_backward(dy, x, weight, bias, mean, rstd, num_groups, relu, plan):
    gn_triton = _gn_triton()

    return gn_triton.backward(dy, x, weight, bias, mean, rstd, num_groups, relu, plan)


# -------------------------------------------------------------------- choosing the path


def _self_check_tol(dtype: torch.dtype) -> float:
    """Largest relative error (max|err| / max|ref|) the self-check accepts: 4 ulps of the
    dtype (bf16 3%, fp16 0.4%), and 1e-5 in float32; a wrong formula is off by far more."""
    return max(4 * torch.finfo(dtype).eps, 1e-5)


def _self_check(device: torch.device, dtype: torch.dtype, tiling: str) -> str | None:
    """None if the kernel matches torch's GN on a small tensor (fwd + bwd, ReLU) in ``tiling``
    (C/G = 4; channels-last for the row tiles and one-pass channels-last, NCHW for the (n, g)
    tiles and one-pass NCHW), else why not."""
    channels_last = tiling in ("row-tile", "one-pass channels-last")
    plan = (0, 0, 0, 1 if tiling.startswith("one-pass") else 2)
    gen = torch.Generator().manual_seed(0)
    x64 = torch.randn(2, 32, 7, 5, generator=gen, dtype=torch.float64) * 2 + 0.5
    dy64 = torch.randn(x64.shape, generator=gen, dtype=torch.float64)
    w, b = torch.randn(32, generator=gen).abs() + 0.5, torch.randn(32, generator=gen)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x64.to(device, dtype).contiguous(memory_format=fmt)
    dy = dy64.to(device, dtype).contiguous(memory_format=fmt)
    try:
        y, mean, rstd = _kernel_forward(x, w.to(device), b.to(device), 8, 1e-5, True, None, plan)
        got = (y, *_kernel_backward(dy, x, w.to(device), b.to(device), mean, rstd, 8, True, plan))
    except Exception as e:  # noqa: BLE001 (any failure to compile or launch means: do not use it)
        return f"it failed ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
    xr, dyr = x.double().cpu(), dy.double().cpu()
    yr, mr, rr = _torch_forward(xr, w.double(), b.double(), 8, 1e-5, True, None)
    ref = (yr, *_torch_backward(dyr, xr, w.double(), b.double(), mr, rr, 8, 1e-5, True))
    errs = [((g.double().cpu() - r.double()).abs().max() / r.double().abs().max()).item()
            for g, r in zip(got, ref)]
    worst = max(errs) if all(math.isfinite(e) for e in errs) else float("nan")
    if not worst <= _self_check_tol(dtype):
        return f"it differs from torch's GroupNorm by {worst:.2e} (relative; limit {_self_check_tol(dtype):.0e})"
    return None


def kernel_usable(device: torch.device, dtype: torch.dtype, tiling: str) -> bool:
    """The self-check's verdict for (device, dtype, tiling), run on the first call, then cached."""
    key = (str(device), dtype, tiling)
    if key not in _CHECKED:
        why = _self_check(device, dtype, tiling)
        if why is not None:
            warnings.warn(f"GroupNorm impl='auto': the Triton kernel was not used for {key[0]} {dtype} "
                          f"inputs of its {tiling} kernels because {why}; "
                          f"torch's GroupNorm runs instead", RuntimeWarning, stacklevel=2)
        _CHECKED[key] = why is None
    return _CHECKED[key]


def _use_kernel(x: Tensor, impl: str, num_groups: int, plan: tuple[int, ...]) -> bool:
    if impl == "triton":
        return True
    return (impl == "auto" and x.device.type in KERNEL_DEVICES and x.dtype in KERNEL_DTYPES
            and x.numel() > 0 and max_offset(x) < INDEX_LIMIT and triton_installed()
            and kernel_usable(x.device, x.dtype, _tiling(x, num_groups, plan)))


def _check_device(x: Tensor, t: Tensor | None, name: str) -> None:
    """A one-line error for weight/bias on another device than x (the kernel reads them as
    contiguous tensors on x's device; the op makes them contiguous)."""
    if t is not None and t.device != x.device:
        raise ValueError(f"GroupNorm: {name} is on {t.device} but the input is on {x.device}; "
                         f"fix: move the module to the input's device (module.to({str(x.device)!r}))")


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


# ---------------------------------------------------------------------------- the ops


@torch.library.custom_op("gn_detect::group_norm", mutates_args=())
def _group_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], num_groups: int,
                eps: float, relu: bool, impl: str, out_dtype: Optional[torch.dtype],
                plan: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    weight, bias = _contiguous(weight), _contiguous(bias)
    if _use_kernel(x, impl, num_groups, tuple(plan)):
        return _kernel_forward(x, weight, bias, num_groups, eps, relu, out_dtype, tuple(plan))
    return _torch_forward(x, weight, bias, num_groups, eps, relu, out_dtype)


@_group_norm.register_fake
def _(x, weight, bias, num_groups, eps, relu, impl, out_dtype, plan):
    stats = x.new_empty((x.shape[0] * num_groups,), dtype=_stat_dtype(x))
    return torch.empty_like(x, dtype=out_dtype or x.dtype), stats, torch.empty_like(stats)


@torch.library.custom_op("gn_detect::group_norm_backward", mutates_args=())
def _group_norm_backward(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                         mean: Tensor, rstd: Tensor, num_groups: int, eps: float, relu: bool,
                         impl: str, plan: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dx, dgamma, dbeta); dgamma/dbeta (C,) in ``_stat_dtype``, computed even without weight."""
    weight, bias = _contiguous(weight), _contiguous(bias)
    if _use_kernel(x, impl, num_groups, tuple(plan)):
        return _kernel_backward(dy, x, weight, bias, mean, rstd, num_groups, relu, tuple(plan))
    return _torch_backward(dy, x, weight, bias, mean, rstd, num_groups, eps, relu)


@_group_norm_backward.register_fake
def _(dy, x, weight, bias, mean, rstd, num_groups, eps, relu, impl, plan):
    per_channel = x.new_empty((x.shape[1],), dtype=_stat_dtype(x))
    return torch.empty_like(x), per_channel, torch.empty_like(per_channel)


def _setup_context(ctx, inputs, output):
    x, weight, bias, num_groups, eps, relu, impl, _out_dtype, plan = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.config = (num_groups, eps, relu, impl, plan)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    num_groups, eps, relu, impl, plan = ctx.config
    dx, dw, db = torch.ops.gn_detect.group_norm_backward(dy, x, weight, bias, mean, rstd, num_groups,
                                                         eps, relu, impl, plan)
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    return (dx if need_x else None, dw.to(weight.dtype) if need_w else None,
            db.to(bias.dtype) if need_b else None, None, None, None, None, None, None)


_group_norm.register_autograd(_backward, setup_context=_setup_context)


def group_norm_op(x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
                  eps: float = 1e-5, *, relu: bool = False, impl: str = "auto",
                  plan: tuple[int, ...] = ()) -> Tensor:
    """GN (+ReLU) of x (N, C, *) through ``torch.ops.gn_detect.group_norm`` (module docstring).

    Only one of weight/bias given: the other is taken as ones/zeros (no gradient for it).
    ``plan`` = (block_hw, block_c, split, passes) overrides the kernel's launch plan (tests, tuning).
    """
    if torch.compiler.is_exporting():
        y = F.group_norm(x, num_groups, weight, bias, eps)
        return F.relu(y) if relu else y
    _check_device(x, weight, "weight")
    _check_device(x, bias, "bias")
    if (weight is None) != (bias is None):
        ref = weight if weight is not None else bias
        weight = torch.ones_like(ref) if weight is None else weight
        bias = torch.zeros_like(ref) if bias is None else bias
    upcast = (x.dtype in (torch.bfloat16, torch.float16) and x.device.type in AUTOCAST_FP32_DEVICES
              and torch.is_autocast_enabled(x.device.type))
    out_dtype = torch.float32 if upcast else None
    return torch.ops.gn_detect.group_norm(x, weight, bias, int(num_groups), float(eps), bool(relu),
                                          impl, out_dtype, list(plan))[0]


def triton_group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    relu: bool = False,
    block_hw: int | None = None,
    block_c: int | None = None,
    split: int | None = None,
    passes: int | None = None,
) -> torch.Tensor:
    """GroupNorm of x (N, C, *) like ``F.group_norm``, then ReLU if ``relu``, always through the
    kernel (the op with impl='triton'); differentiable. ``block_hw``, ``block_c``, ``split``,
    ``passes`` override the launch plan (tests, tuning; ``make_plan``)."""
    plan = tuple(int(v or 0) for v in (block_hw, block_c, split, passes))
    return group_norm_op(x, num_groups, weight, bias, eps, relu=relu, impl="triton", plan=plan)
