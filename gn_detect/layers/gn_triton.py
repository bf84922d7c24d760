"""GroupNorm (optionally fused with ReLU) in Triton: kernels, launch plan, host functions.

The op ``torch.ops.gn_detect.group_norm`` (``gn_op.py``) calls ``forward``/``backward`` here.
Imported lazily by ``gn_op.py`` (only when the kernel is asked for), because Triton is
optional and because ``TRITON_INTERPRET=1`` only takes effect if it is set before Triton is
first imported: Triton's own ``tl.sum`` & co. are decorated when ``triton.language`` loads.

Layout: x is read as (N, C, HW) through its strides, so one kernel serves contiguous NCHW
(stride_c = HW, stride_hw = 1) and channels-last NHWC (stride_c = 1, stride_hw = C): a
group's data is a (HW, C/G) tile grid. Triton specializes integer arguments equal to 1, so
the contiguous axis is known at compile time and loads vectorize along it.

Three tilings (``make_plan`` picks): the one-pass kernels ``_op_*`` when all HW positions of a
group fit in one program (C/G a power of two, either layout; see their section below): the
forward reads x once, the backward x and dy once; otherwise two-pass kernels: the (n, g)
kernels ``_gn_*``, one program per (sample n, group g, chunk s of HW), ``split`` chunks per
group keeping the GPU busy when N*G is small and HW large; and, for channels-last inputs with
C/G a power of two, the row-tile kernels ``_rt_*``: one program per (n, channel tile of whole
groups, chunk s), C/G a compile-time constant, so rows are read and written as 16-byte vectors.
The two-pass kernels follow the steps below (the one-pass ones do the same steps in one
program); the row tiles also sum dgamma/dbeta over N in their finalize kernel.

Forward, two launches:
  1. stats: per (n, g, s) the count, mean and centred sum of squares M2 of the chunk (each
     tile is centred on its own mean and merged by Chan's formula, all in fp32).
  2. normalize: each program merges the ``split`` partials of its (n, g) into mean and
     rstd = 1/sqrt(var + eps) (var biased), writes y = x * scale + shift with
     scale = rstd * gamma, shift = beta - mean * scale, then ReLU if asked; chunk 0 also
     stores mean and rstd for the backward.
Backward (dx, dgamma, dbeta; two passes over x and dy):
  1. reduce: per (n, s, c) partial sums of g and g * xhat, where g = dy, or dy * (y > 0)
     with ReLU (y recomputed from x by the forward's own formula: no mask is stored);
  2. finalize (tiny): per (n, c) sums over chunks, and per (n, g) the two coefficients
     a = mean(dy_hat), b = mean(dy_hat * xhat), dy_hat = g * gamma;
  3. dx = rstd * (g * gamma - a - xhat * b).
  dgamma = sum_n of the per-(n, c) sums of g * xhat, dbeta = of g.
Saved for backward: x, mean, rstd (and gamma, beta); never y.
Launches run under ``torch.cuda.device(x.device)``; no atomics (bitwise repeatable).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from gn_detect.layers.gn_layout import INDEX_LIMIT, KERNEL_DTYPES, dense, max_offset

__all__ = ["forward", "backward", "interpreted", "launch_guard"]

_MAX_SPLIT = 256  # chunks per (n, g); the normalize kernel merges them in one block
# One pass: (largest tile a program may hold, tile width aimed at), in elements (HW padded to a
# power of two x channels). GPU: up to 16384, i.e. 32 fp32 values per thread and tensor with 16
# warps (ptxas for sm_90 via scripts/inspect_gn_kernels.py --shape 8 256 25 76: 99 registers in the
# backward, no spills; a one-off build with the limit at 32768 spilled in the backward), aiming at
# 4096 so that small levels still make many programs; interpreter: 16384 (fewer programs).
ONE_PASS_TILE = {"gpu": (16384, 4096), "interpreter": (16384, 16384)}


@triton.jit
def _scale_shift(W, B, chans, mask_c, mean, rstd, HAS_AFFINE: tl.constexpr, BLOCK_C: tl.constexpr):
    """(gamma, scale, shift) for channels ``chans``: y = x * scale + shift."""
    if HAS_AFFINE:
        gamma = tl.load(W + chans, mask=mask_c, other=0.0).to(tl.float32)
        beta = tl.load(B + chans, mask=mask_c, other=0.0).to(tl.float32)
    else:
        gamma = tl.full([BLOCK_C], 1.0, tl.float32)
        beta = tl.zeros([BLOCK_C], tl.float32)
    scale = gamma * rstd
    return gamma, scale, beta - mean * scale


@triton.jit
def _gn_fwd_stats_kernel(
    X, PART, HW, CPG, G, CHUNK,
    stride_xn, stride_xc, stride_xhw,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """PART[n*G + g, s] = (count, mean, M2) of group g of sample n over HW chunk s."""
    pid_ng = tl.program_id(0)
    pid_s = tl.program_id(1)
    n = pid_ng // G
    g = pid_ng % G
    x_base = X + n.to(tl.int64) * stride_xn + (g * CPG).to(tl.int64) * stride_xc
    hw_lo = pid_s * CHUNK
    hw_hi = tl.minimum(hw_lo + CHUNK, HW)
    cnt = 0.0
    mean = 0.0
    m2 = 0.0
    for c0 in range(0, CPG, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        n_c = tl.minimum(CPG - c0, BLOCK_C)
        for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
            hws = hw0 + tl.arange(0, BLOCK_HW)
            mask = (hws < hw_hi)[:, None] & (cs < CPG)[None, :]
            offs = hws[:, None] * stride_xhw + cs[None, :] * stride_xc
            x = tl.load(x_base + offs, mask=mask, other=0.0).to(tl.float32)
            t_cnt = (tl.minimum(hw_hi - hw0, BLOCK_HW) * n_c).to(tl.float32)
            t_mean = tl.sum(x) / t_cnt
            d = tl.where(mask, x - t_mean, 0.0)
            new_cnt = cnt + t_cnt
            delta = t_mean - mean
            mean += delta * (t_cnt / new_cnt)
            m2 += tl.sum(d * d) + delta * delta * (cnt / new_cnt) * t_cnt
            cnt = new_cnt
    out = PART + (pid_ng * tl.num_programs(1) + pid_s) * 3
    tl.store(out, cnt)
    tl.store(out + 1, mean)
    tl.store(out + 2, m2)


@triton.jit
def _gn_fwd_norm_kernel(
    X, Y, W, B, PART, MEAN, RSTD, HW, CPG, G, CHUNK, SPLIT, eps,
    stride_xn, stride_xc, stride_xhw, stride_yn, stride_yc, stride_yhw,
    HAS_AFFINE: tl.constexpr, RELU: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Merge the chunk statistics of (n, g); y = x * scale + shift (then ReLU) over chunk s."""
    pid_ng = tl.program_id(0)
    pid_s = tl.program_id(1)
    n = pid_ng // G
    g = pid_ng % G
    ss = tl.arange(0, BLOCK_S)
    part = PART + pid_ng * SPLIT * 3 + ss * 3
    cnt = tl.load(part, mask=ss < SPLIT, other=0.0)
    mu = tl.load(part + 1, mask=ss < SPLIT, other=0.0)
    total = tl.sum(cnt)
    mean = tl.sum(cnt * mu) / total
    d = mu - mean
    var = (tl.sum(tl.load(part + 2, mask=ss < SPLIT, other=0.0)) + tl.sum(cnt * d * d)) / total
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + pid_ng, mean, mask=pid_s == 0)
    tl.store(RSTD + pid_ng, rstd, mask=pid_s == 0)
    x_base = X + n.to(tl.int64) * stride_xn + (g * CPG).to(tl.int64) * stride_xc
    y_base = Y + n.to(tl.int64) * stride_yn + (g * CPG).to(tl.int64) * stride_yc
    hw_lo = pid_s * CHUNK
    hw_hi = tl.minimum(hw_lo + CHUNK, HW)
    for c0 in range(0, CPG, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        mask_c = cs < CPG
        _, scale, shift = _scale_shift(W, B, g * CPG + cs, mask_c, mean, rstd, HAS_AFFINE, BLOCK_C)
        for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
            hws = hw0 + tl.arange(0, BLOCK_HW)
            mask = (hws < hw_hi)[:, None] & mask_c[None, :]
            x_offs = hws[:, None] * stride_xhw + cs[None, :] * stride_xc
            x = tl.load(x_base + x_offs, mask=mask, other=0.0).to(tl.float32)
            y = x * scale[None, :] + shift[None, :]
            if RELU:
                y = tl.where(y < 0.0, 0.0, y)  # not maximum(): NaN must stay NaN, as in torch
            y_offs = hws[:, None] * stride_yhw + cs[None, :] * stride_yc
            tl.store(y_base + y_offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gn_bwd_reduce_kernel(
    X, DY, W, B, MEAN, RSTD, DS, DB, C, HW, CPG, G, CHUNK,
    stride_xn, stride_xc, stride_xhw, stride_dn, stride_dc, stride_dhw,
    HAS_AFFINE: tl.constexpr, RELU: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """DS[n, s, c] = sum over chunk s of g, DB[n, s, c] = of g * xhat (g: dy through ReLU)."""
    pid_ng = tl.program_id(0)
    pid_s = tl.program_id(1)
    n = pid_ng // G
    g = pid_ng % G
    mean = tl.load(MEAN + pid_ng)
    rstd = tl.load(RSTD + pid_ng)
    x_base = X + n.to(tl.int64) * stride_xn + (g * CPG).to(tl.int64) * stride_xc
    d_base = DY + n.to(tl.int64) * stride_dn + (g * CPG).to(tl.int64) * stride_dc
    out = (n.to(tl.int64) * tl.num_programs(1) + pid_s) * C + g * CPG
    hw_lo = pid_s * CHUNK
    hw_hi = tl.minimum(hw_lo + CHUNK, HW)
    for c0 in range(0, CPG, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        mask_c = cs < CPG
        _, scale, shift = _scale_shift(W, B, g * CPG + cs, mask_c, mean, rstd, HAS_AFFINE, BLOCK_C)
        acc_s = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
        acc_b = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
        for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
            hws = hw0 + tl.arange(0, BLOCK_HW)
            mask = (hws < hw_hi)[:, None] & mask_c[None, :]
            x_offs = hws[:, None] * stride_xhw + cs[None, :] * stride_xc
            d_offs = hws[:, None] * stride_dhw + cs[None, :] * stride_dc
            x = tl.load(x_base + x_offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(d_base + d_offs, mask=mask, other=0.0).to(tl.float32)
            if RELU:
                dy = tl.where(x * scale[None, :] + shift[None, :] > 0.0, dy, 0.0)
            acc_s += dy
            acc_b += dy * ((x - mean) * rstd)
        tl.store(DS + out + cs, tl.sum(acc_s, axis=0), mask=mask_c)
        tl.store(DB + out + cs, tl.sum(acc_b, axis=0), mask=mask_c)


@triton.jit
def _gn_bwd_finalize_kernel(
    DS, DB, W, DSN, DBN, COEF, C, CPG, G, SPLIT, inv_m,
    HAS_AFFINE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """DSN/DBN[n, c] = sums over chunks; COEF[n*G + g] = (mean(dy_hat), mean(dy_hat * xhat))."""
    pid_ng = tl.program_id(0)
    n = pid_ng // G
    g = pid_ng % G
    a = 0.0
    b = 0.0
    for c0 in range(0, CPG, BLOCK_C):
        chans = g * CPG + c0 + tl.arange(0, BLOCK_C)
        mask_c = c0 + tl.arange(0, BLOCK_C) < CPG
        sum_s = tl.zeros([BLOCK_C], tl.float32)
        sum_b = tl.zeros([BLOCK_C], tl.float32)
        for s0 in range(0, SPLIT, BLOCK_S):
            ss = s0 + tl.arange(0, BLOCK_S)
            mask = (ss < SPLIT)[:, None] & mask_c[None, :]
            offs = (n.to(tl.int64) * SPLIT + ss)[:, None] * C + chans[None, :]
            sum_s += tl.sum(tl.load(DS + offs, mask=mask, other=0.0), axis=0)
            sum_b += tl.sum(tl.load(DB + offs, mask=mask, other=0.0), axis=0)
        tl.store(DSN + n.to(tl.int64) * C + chans, sum_s, mask=mask_c)
        tl.store(DBN + n.to(tl.int64) * C + chans, sum_b, mask=mask_c)
        if HAS_AFFINE:
            gamma = tl.load(W + chans, mask=mask_c, other=0.0).to(tl.float32)
            sum_s = sum_s * gamma
            sum_b = sum_b * gamma
        a += tl.sum(sum_s)
        b += tl.sum(sum_b)
    tl.store(COEF + pid_ng * 2, a * inv_m)
    tl.store(COEF + pid_ng * 2 + 1, b * inv_m)


@triton.jit
def _gn_bwd_dx_kernel(
    X, DY, DX, W, B, MEAN, RSTD, COEF, HW, CPG, G, CHUNK,
    stride_xn, stride_xc, stride_xhw, stride_dn, stride_dc, stride_dhw,
    stride_gn, stride_gc, stride_ghw,
    HAS_AFFINE: tl.constexpr, RELU: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx = rstd * (g * gamma - a - xhat * b) over chunk s of (n, g)."""
    pid_ng = tl.program_id(0)
    pid_s = tl.program_id(1)
    n = pid_ng // G
    g = pid_ng % G
    mean = tl.load(MEAN + pid_ng)
    rstd = tl.load(RSTD + pid_ng)
    coef_a = tl.load(COEF + pid_ng * 2)
    coef_b = tl.load(COEF + pid_ng * 2 + 1)
    x_base = X + n.to(tl.int64) * stride_xn + (g * CPG).to(tl.int64) * stride_xc
    d_base = DY + n.to(tl.int64) * stride_dn + (g * CPG).to(tl.int64) * stride_dc
    g_base = DX + n.to(tl.int64) * stride_gn + (g * CPG).to(tl.int64) * stride_gc
    hw_lo = pid_s * CHUNK
    hw_hi = tl.minimum(hw_lo + CHUNK, HW)
    for c0 in range(0, CPG, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        mask_c = cs < CPG
        gamma, scale, shift = _scale_shift(W, B, g * CPG + cs, mask_c, mean, rstd, HAS_AFFINE, BLOCK_C)
        for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
            hws = hw0 + tl.arange(0, BLOCK_HW)
            mask = (hws < hw_hi)[:, None] & mask_c[None, :]
            x = tl.load(x_base + hws[:, None] * stride_xhw + cs[None, :] * stride_xc,
                        mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(d_base + hws[:, None] * stride_dhw + cs[None, :] * stride_dc,
                         mask=mask, other=0.0).to(tl.float32)
            if RELU:
                dy = tl.where(x * scale[None, :] + shift[None, :] > 0.0, dy, 0.0)
            dx = rstd * (dy * gamma[None, :] - coef_a - (x - mean) * rstd * coef_b)
            tl.store(g_base + hws[:, None] * stride_ghw + cs[None, :] * stride_gc,
                     dx.to(DX.dtype.element_ty), mask=mask)


# ------------------------------------------------- channels-last row tiles (power-of-2 C/G)
#
# x3 (N, C, HW) with stride_c = 1: a program owns (n, channel tile ct, HW chunk s); the tile
# is BLOCK_CT contiguous channels (whole groups, CPG = C/G a compile-time power of two) x
# BLOCK_HW positions, so loads and stores are 16-byte vectors along the channels. Grid: 1-D,
# pid = (n * N_CT + ct) * SPLIT + s; the second passes (normalize, dx) run it backwards, so
# they start on the data the first pass touched last (still in L2).


@triton.jit
def _rt_program(C, N_CT, CHUNK, SPLIT, HW, REVERSE: tl.constexpr, BLOCK_CT: tl.constexpr):
    """(n, ct, s, channels, channel mask, hw_lo, hw_hi) of this program."""
    pid = tl.program_id(0)
    if REVERSE:
        pid = tl.num_programs(0) - 1 - pid
    s = pid % SPLIT
    ct = (pid // SPLIT) % N_CT
    chans = ct * BLOCK_CT + tl.arange(0, BLOCK_CT)
    hw_lo = s * CHUNK
    return pid // (SPLIT * N_CT), ct, s, chans, chans < C, hw_lo, tl.minimum(hw_lo + CHUNK, HW)


@triton.jit
def _per_channel(v, GPT: tl.constexpr, CPG: tl.constexpr):
    """[GPT] per-group values -> [GPT * CPG] per-channel values."""
    return tl.reshape(tl.broadcast_to(v[:, None], (GPT, CPG)), (GPT * CPG,))


@triton.jit
def _per_group(v, GPT: tl.constexpr, CPG: tl.constexpr):
    """[GPT * CPG] per-channel values -> [GPT] sums over each group's channels."""
    return tl.sum(tl.reshape(v, (GPT, CPG)), axis=1)


@triton.jit
def _rt_tile(base, hw0, hw_hi, chans, cmask, stride_hw, BLOCK_HW: tl.constexpr, EVEN_C: tl.constexpr):
    """(pointers, mask, row mask) of the [BLOCK_HW, BLOCK_CT] tile at rows hw0.."""
    hws = hw0 + tl.arange(0, BLOCK_HW)
    rmask = hws < hw_hi
    if EVEN_C:
        mask = rmask[:, None]
    else:
        mask = rmask[:, None] & cmask[None, :]
    return base + hws[:, None].to(tl.int64) * stride_hw + chans[None, :], mask, rmask


@triton.jit
def _rt_stats_kernel(
    X, PART, HW, C, G, N_CT, CHUNK, SPLIT, stride_xn, stride_xhw,
    CPG: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_CT: tl.constexpr, EVEN_C: tl.constexpr,
):
    """PART[n*G + g, s] = (count, mean, M2) over chunk s, for the BLOCK_CT / CPG groups of tile ct."""
    GPT: tl.constexpr = BLOCK_CT // CPG
    n, ct, s, chans, cmask, hw_lo, hw_hi = _rt_program(C, N_CT, CHUNK, SPLIT, HW, False, BLOCK_CT)
    base = X + n.to(tl.int64) * stride_xn
    cnt = tl.zeros([GPT], tl.float32)
    mean = tl.zeros([GPT], tl.float32)
    m2 = tl.zeros([GPT], tl.float32)
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        ptrs, mask, rmask = _rt_tile(base, hw0, hw_hi, chans, cmask, stride_xhw, BLOCK_HW, EVEN_C)
        x = tl.reshape(tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), (BLOCK_HW, GPT, CPG))
        t_cnt = (tl.minimum(hw_hi - hw0, BLOCK_HW) * CPG).to(tl.float32)
        t_mean = tl.sum(tl.sum(x, axis=2), axis=0) / t_cnt
        d = tl.where(rmask[:, None, None], x - t_mean[None, :, None], 0.0)
        new_cnt = cnt + t_cnt
        delta = t_mean - mean
        mean += delta * (t_cnt / new_cnt)
        m2 += tl.sum(tl.sum(d * d, axis=2), axis=0) + delta * delta * (cnt / new_cnt) * t_cnt
        cnt = new_cnt
    gs = ct * GPT + tl.arange(0, GPT)
    out = PART + ((n * G + gs) * SPLIT + s) * 3
    tl.store(out, cnt, mask=gs < G)
    tl.store(out + 1, mean, mask=gs < G)
    tl.store(out + 2, m2, mask=gs < G)


@triton.jit
def _rt_norm_kernel(
    X, Y, W, B, PART, MEAN, RSTD, HW, C, G, N_CT, CHUNK, SPLIT, eps,
    stride_xn, stride_xhw, stride_yn, stride_yhw,
    CPG: tl.constexpr, HAS_AFFINE: tl.constexpr, RELU: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_CT: tl.constexpr, BLOCK_S: tl.constexpr, EVEN_C: tl.constexpr,
):
    """Merge the SPLIT partials of the tile's groups (Chan); y = x * scale + shift (then ReLU)."""
    GPT: tl.constexpr = BLOCK_CT // CPG
    n, ct, s, chans, cmask, hw_lo, hw_hi = _rt_program(C, N_CT, CHUNK, SPLIT, HW, True, BLOCK_CT)
    gs = ct * GPT + tl.arange(0, GPT)
    ss = tl.arange(0, BLOCK_S)
    pmask = (gs < G)[:, None] & (ss < SPLIT)[None, :]
    part = PART + ((n * G + gs)[:, None] * SPLIT + ss[None, :]) * 3
    cnt = tl.load(part, mask=pmask, other=0.0)
    mu = tl.load(part + 1, mask=pmask, other=0.0)
    total = tl.maximum(tl.sum(cnt, axis=1), 1.0)  # padded groups (gs >= G): 0 -> 1, not stored
    mean = tl.sum(cnt * mu, axis=1) / total
    d = mu - mean[:, None]
    var = (tl.sum(tl.load(part + 2, mask=pmask, other=0.0), axis=1) + tl.sum(cnt * d * d, axis=1)) / total
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + n * G + gs, mean, mask=(gs < G) & (s == 0))
    tl.store(RSTD + n * G + gs, rstd, mask=(gs < G) & (s == 0))
    _gamma, scale, shift = _scale_shift(W, B, chans, cmask, _per_channel(mean, GPT, CPG),
                                   _per_channel(rstd, GPT, CPG), HAS_AFFINE, BLOCK_CT)
    x_base = X + n.to(tl.int64) * stride_xn
    y_base = Y + n.to(tl.int64) * stride_yn
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        ptrs, mask, _ = _rt_tile(x_base, hw0, hw_hi, chans, cmask, stride_xhw, BLOCK_HW, EVEN_C)
        y = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32) * scale[None, :] + shift[None, :]
        if RELU:
            y = tl.where(y < 0.0, 0.0, y)  # not maximum(): NaN must stay NaN, as in torch
        ptrs, mask, _ = _rt_tile(y_base, hw0, hw_hi, chans, cmask, stride_yhw, BLOCK_HW, EVEN_C)
        tl.store(ptrs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rt_group_stats(MEAN, RSTD, n, ct, G, GPT: tl.constexpr, CPG: tl.constexpr):
    """Per-channel mean and rstd of tile ct of sample n."""
    gs = ct * GPT + tl.arange(0, GPT)
    mean = tl.load(MEAN + n.to(tl.int64) * G + gs, mask=gs < G, other=0.0)
    rstd = tl.load(RSTD + n.to(tl.int64) * G + gs, mask=gs < G, other=0.0)
    return _per_channel(mean, GPT, CPG), _per_channel(rstd, GPT, CPG)


@triton.jit
def _rt_load_x_g(x_base, d_base, hw0, hw_hi, chans, cmask, stride_xhw, stride_dhw, scale, shift,
                 RELU: tl.constexpr, BLOCK_HW: tl.constexpr, EVEN_C: tl.constexpr):
    """fp32 tiles of x and g = dy (through the ReLU: y recomputed from x, no mask stored)."""
    ptrs, mask, _ = _rt_tile(x_base, hw0, hw_hi, chans, cmask, stride_xhw, BLOCK_HW, EVEN_C)
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    ptrs, mask, _ = _rt_tile(d_base, hw0, hw_hi, chans, cmask, stride_dhw, BLOCK_HW, EVEN_C)
    dy = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        dy = tl.where(x * scale[None, :] + shift[None, :] > 0.0, dy, 0.0)
    return x, dy


@triton.jit
def _rt_bwd_reduce_kernel(
    X, DY, W, B, MEAN, RSTD, DS, DB, HW, C, G, N_CT, CHUNK, SPLIT,
    stride_xn, stride_xhw, stride_dn, stride_dhw,
    CPG: tl.constexpr, HAS_AFFINE: tl.constexpr, RELU: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_CT: tl.constexpr, EVEN_C: tl.constexpr,
):
    """DS[n, s, c] = sum over chunk s of g, DB[n, s, c] = of g * xhat (g: dy through ReLU)."""
    GPT: tl.constexpr = BLOCK_CT // CPG
    n, ct, s, chans, cmask, hw_lo, hw_hi = _rt_program(C, N_CT, CHUNK, SPLIT, HW, False, BLOCK_CT)
    mean, rstd = _rt_group_stats(MEAN, RSTD, n, ct, G, GPT, CPG)
    _gamma, scale, shift = _scale_shift(W, B, chans, cmask, mean, rstd, HAS_AFFINE, BLOCK_CT)
    x_base = X + n.to(tl.int64) * stride_xn
    d_base = DY + n.to(tl.int64) * stride_dn
    acc_s = tl.zeros([BLOCK_HW, BLOCK_CT], tl.float32)
    acc_b = tl.zeros([BLOCK_HW, BLOCK_CT], tl.float32)
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        x, dy = _rt_load_x_g(x_base, d_base, hw0, hw_hi, chans, cmask, stride_xhw, stride_dhw, scale,
                             shift, RELU, BLOCK_HW, EVEN_C)
        acc_s += dy
        acc_b += dy * ((x - mean[None, :]) * rstd[None, :])
    out = (n.to(tl.int64) * SPLIT + s) * C + chans
    tl.store(DS + out, tl.sum(acc_s, axis=0), mask=cmask)
    tl.store(DB + out, tl.sum(acc_b, axis=0), mask=cmask)


@triton.jit
def _rt_bwd_finalize_kernel(
    DS, DB, W, DGAMMA, DBETA, COEF, N, C, G, SPLIT, inv_m,
    CPG: tl.constexpr, HAS_AFFINE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_CF: tl.constexpr,
):
    """For channel block cf: COEF[n*G + g] = (mean(dy_hat), mean(dy_hat * xhat)) per sample, and
    the N-sums DGAMMA[c] = sum of g * xhat, DBETA[c] = of g (no second reduction in torch)."""
    GPT: tl.constexpr = BLOCK_CF // CPG
    cf = tl.program_id(0)
    chans = cf * BLOCK_CF + tl.arange(0, BLOCK_CF)
    cmask = chans < C
    gs = cf * GPT + tl.arange(0, GPT)
    if HAS_AFFINE:
        gamma = tl.load(W + chans, mask=cmask, other=0.0).to(tl.float32)
    else:
        gamma = tl.full([BLOCK_CF], 1.0, tl.float32)
    dgamma = tl.zeros([BLOCK_CF], tl.float32)
    dbeta = tl.zeros([BLOCK_CF], tl.float32)
    for n in range(0, N):
        sum_s = tl.zeros([BLOCK_CF], tl.float32)
        sum_b = tl.zeros([BLOCK_CF], tl.float32)
        for s0 in range(0, SPLIT, BLOCK_S):
            ss = s0 + tl.arange(0, BLOCK_S)
            mask = (ss < SPLIT)[:, None] & cmask[None, :]
            offs = (ss.to(tl.int64) + n * SPLIT)[:, None] * C + chans[None, :]
            sum_s += tl.sum(tl.load(DS + offs, mask=mask, other=0.0), axis=0)
            sum_b += tl.sum(tl.load(DB + offs, mask=mask, other=0.0), axis=0)
        dbeta += sum_s
        dgamma += sum_b
        coef = COEF + (n * G + gs) * 2
        tl.store(coef, _per_group(sum_s * gamma, GPT, CPG) * inv_m, mask=gs < G)
        tl.store(coef + 1, _per_group(sum_b * gamma, GPT, CPG) * inv_m, mask=gs < G)
    tl.store(DGAMMA + chans, dgamma, mask=cmask)
    tl.store(DBETA + chans, dbeta, mask=cmask)


@triton.jit
def _rt_bwd_dx_kernel(
    X, DY, DX, W, B, MEAN, RSTD, COEF, HW, C, G, N_CT, CHUNK, SPLIT,
    stride_xn, stride_xhw, stride_dn, stride_dhw, stride_gn, stride_ghw,
    CPG: tl.constexpr, HAS_AFFINE: tl.constexpr, RELU: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_CT: tl.constexpr, EVEN_C: tl.constexpr,
):
    """dx = rstd * (g * gamma - a - xhat * b) over the tile (programs in reverse order)."""
    GPT: tl.constexpr = BLOCK_CT // CPG
    n, ct, s, chans, cmask, hw_lo, hw_hi = _rt_program(C, N_CT, CHUNK, SPLIT, HW, True, BLOCK_CT)
    mean, rstd = _rt_group_stats(MEAN, RSTD, n, ct, G, GPT, CPG)
    gs = ct * GPT + tl.arange(0, GPT)
    coef_a = _per_channel(tl.load(COEF + (n * G + gs) * 2, mask=gs < G, other=0.0), GPT, CPG)
    coef_b = _per_channel(tl.load(COEF + (n * G + gs) * 2 + 1, mask=gs < G, other=0.0), GPT, CPG)
    gamma, scale, shift = _scale_shift(W, B, chans, cmask, mean, rstd, HAS_AFFINE, BLOCK_CT)
    x_base = X + n.to(tl.int64) * stride_xn
    d_base = DY + n.to(tl.int64) * stride_dn
    g_base = DX + n.to(tl.int64) * stride_gn
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        x, dy = _rt_load_x_g(x_base, d_base, hw0, hw_hi, chans, cmask, stride_xhw, stride_dhw, scale,
                             shift, RELU, BLOCK_HW, EVEN_C)
        dx = rstd[None, :] * (dy * gamma[None, :] - coef_a[None, :]
                              - (x - mean[None, :]) * rstd[None, :] * coef_b[None, :])
        ptrs, mask, _ = _rt_tile(g_base, hw0, hw_hi, chans, cmask, stride_ghw, BLOCK_HW, EVEN_C)
        tl.store(ptrs, dx.to(DX.dtype.element_ty), mask=mask)


# ------------------------------------------------ one pass: a program holds whole groups
#
# When all HW positions of a group fit in one program's registers (``make_plan``: one group's
# tile within ONE_PASS_TILE elements, C/G a power of two), a program owns (n, channel tile ct) with
# every position: the forward reads x once and writes y (one launch, no partials), the
# backward reads x and dy once and writes dx and per-sample channel sums. Strides are runtime
# arguments, so one kernel serves both layouts (Triton's stride-1 specialization makes the
# contiguous axis, channels or HW, the vector axis). Grid: (N * N_CT,), pid = n * N_CT + ct.


@triton.jit
def _op_tile(base, chans, cmask, HW, stride_c, stride_hw, BLOCK_HW: tl.constexpr, EVEN_C: tl.constexpr):
    """(pointers, mask, row mask) of the whole [BLOCK_HW >= HW, BLOCK_CT] tile of a sample."""
    hws = tl.arange(0, BLOCK_HW)
    rmask = hws < HW
    if EVEN_C:
        mask = rmask[:, None]
    else:
        mask = rmask[:, None] & cmask[None, :]
    return base + hws[:, None] * stride_hw + chans[None, :] * stride_c, mask, rmask


@triton.jit
def _op_program(C, N_CT, BLOCK_CT: tl.constexpr):
    """(n, ct, channels, channel mask) of this program."""
    pid = tl.program_id(0)
    chans = (pid % N_CT) * BLOCK_CT + tl.arange(0, BLOCK_CT)
    return pid // N_CT, pid % N_CT, chans, chans < C


@triton.jit
def _op_fwd_kernel(
    X, Y, W, B, MEAN, RSTD, HW, C, G, N_CT, eps,
    stride_xn, stride_xc, stride_xhw, stride_yn, stride_yc, stride_yhw,
    CPG: tl.constexpr, HAS_AFFINE: tl.constexpr, RELU: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_CT: tl.constexpr, EVEN_C: tl.constexpr,
):
    """Mean and rstd of the tile's groups from the resident tile (centred second moment: no
    E[x^2] - E[x]^2 cancellation); y = x * scale + shift (then ReLU); x read once."""
    GPT: tl.constexpr = BLOCK_CT // CPG
    n, ct, chans, cmask = _op_program(C, N_CT, BLOCK_CT)
    ptrs, mask, rmask = _op_tile(X + n.to(tl.int64) * stride_xn, chans, cmask, HW, stride_xc, stride_xhw,
                                 BLOCK_HW, EVEN_C)
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    inv_cnt = 1.0 / (HW * CPG)
    x3 = tl.reshape(x, (BLOCK_HW, GPT, CPG))
    mean = tl.sum(tl.sum(x3, axis=2), axis=0) * inv_cnt
    d = tl.where(rmask[:, None, None], x3 - mean[None, :, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(d * d, axis=2), axis=0) * inv_cnt + eps)
    gs = ct * GPT + tl.arange(0, GPT)
    tl.store(MEAN + n.to(tl.int64) * G + gs, mean, mask=gs < G)  # N * G may pass 2^31
    tl.store(RSTD + n.to(tl.int64) * G + gs, rstd, mask=gs < G)
    _gamma, scale, shift = _scale_shift(W, B, chans, cmask, _per_channel(mean, GPT, CPG),
                                        _per_channel(rstd, GPT, CPG), HAS_AFFINE, BLOCK_CT)
    y = x * scale[None, :] + shift[None, :]
    if RELU:
        y = tl.where(y < 0.0, 0.0, y)  # not maximum(): NaN must stay NaN, as in torch
    ptrs, mask, _ = _op_tile(Y + n.to(tl.int64) * stride_yn, chans, cmask, HW, stride_yc, stride_yhw,
                             BLOCK_HW, EVEN_C)
    tl.store(ptrs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _op_bwd_kernel(
    X, DY, DX, W, B, MEAN, RSTD, DS, DB, HW, C, G, N_CT, inv_m,
    stride_xn, stride_xc, stride_xhw, stride_dn, stride_dc, stride_dhw, stride_gn, stride_gc, stride_ghw,
    CPG: tl.constexpr, HAS_AFFINE: tl.constexpr, RELU: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_CT: tl.constexpr, EVEN_C: tl.constexpr,
):
    """DS[n, c] = sum of g, DB[n, c] = of g * xhat; dx = rstd * (g * gamma - a - xhat * b) with
    the group coefficients a, b from the same resident tiles (x and dy read once)."""
    GPT: tl.constexpr = BLOCK_CT // CPG
    n, ct, chans, cmask = _op_program(C, N_CT, BLOCK_CT)
    mean, rstd = _rt_group_stats(MEAN, RSTD, n, ct, G, GPT, CPG)
    gamma, scale, shift = _scale_shift(W, B, chans, cmask, mean, rstd, HAS_AFFINE, BLOCK_CT)
    ptrs, mask, _ = _op_tile(X + n.to(tl.int64) * stride_xn, chans, cmask, HW, stride_xc, stride_xhw,
                             BLOCK_HW, EVEN_C)
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    ptrs, mask, _ = _op_tile(DY + n.to(tl.int64) * stride_dn, chans, cmask, HW, stride_dc, stride_dhw,
                             BLOCK_HW, EVEN_C)
    dy = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        dy = tl.where(x * scale[None, :] + shift[None, :] > 0.0, dy, 0.0)
    xhat = (x - mean[None, :]) * rstd[None, :]
    sum_s = tl.sum(dy, axis=0)
    sum_b = tl.sum(dy * xhat, axis=0)
    tl.store(DS + n.to(tl.int64) * C + chans, sum_s, mask=cmask)  # N * C may pass 2^31
    tl.store(DB + n.to(tl.int64) * C + chans, sum_b, mask=cmask)
    coef_a = _per_channel(_per_group(sum_s * gamma, GPT, CPG) * inv_m, GPT, CPG)
    coef_b = _per_channel(_per_group(sum_b * gamma, GPT, CPG) * inv_m, GPT, CPG)
    dx = rstd[None, :] * (dy * gamma[None, :] - coef_a[None, :] - xhat * coef_b[None, :])
    ptrs, mask, _ = _op_tile(DX + n.to(tl.int64) * stride_gn, chans, cmask, HW, stride_gc, stride_ghw,
                             BLOCK_HW, EVEN_C)
    tl.store(ptrs, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side


def interpreted() -> bool:
    """True when these kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return not isinstance(_gn_fwd_stats_kernel, JITFunction)


def _mode_mismatch() -> bool:
    # tl.sum & co. were decorated when triton.language was imported, ours when this module was.
    return isinstance(tl.sum, JITFunction) != isinstance(_gn_fwd_stats_kernel, JITFunction)


def launch_guard(device: torch.device):
    """The context the launches run in: ``torch.cuda.device(device)`` for a CUDA tensor (Triton
    launches on the current device, which need not be the tensor's), else nothing."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@dataclass(frozen=True)
class Plan:
    """Launch geometry shared by the forward and backward of one call."""

    block_hw: int
    block_c: int  # channels per tile (row tiles: whole groups, a power of two)
    split: int  # HW chunks per (n, g) or per (n, channel tile)
    chunk: int  # HW positions per chunk, a multiple of block_hw
    num_warps: int
    row_tiles: bool  # channels-last row-tile kernels (_rt_*), else the (n, g) kernels
    n_ct: int = 1  # channel tiles (row tiles, one pass)
    one_pass: bool = False  # the _op_* kernels: a program holds all HW of its groups

    @property
    def kernels(self) -> str:
        """The kernel family's name (the self-check's key, the tools' tables)."""
        return "one-pass" if self.one_pass else "row-tile" if self.row_tiles else "(n, g)-tile"


@lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def one_pass_block_c(shape: tuple[int, int, int], num_groups: int, tiles: tuple[int, int],
                     block_c: int | None = None) -> int | None:
    """Channels per one-pass program (whole groups, a power of two; ``block_c`` or as many as the
    aimed-at width ``tiles[1]`` allows with HW padded to a power of two), or None when C/G is not
    a power of two or one group of one sample does not fit in ``tiles[0]`` elements (``shape``:
    (N, C, HW))."""
    n, c, hw = shape
    cpg = c // num_groups
    hw_p = triton.next_power_of_2(hw)
    fit, width = tiles
    if not _pow2(cpg) or hw_p * cpg > fit:
        return None
    widest = min(triton.next_power_of_2(c), max(cpg, fit // hw_p))
    return min(widest, max(cpg, triton.next_power_of_2(block_c) if block_c else width // hw_p))


def kernels_key(x: torch.Tensor, num_groups: int, overrides: tuple[int, ...] = ()) -> str:
    """The kernels x takes with the plan (and the op's ``plan`` overrides, as in ``_plan``), as
    the self-check names them: "row-tile", "(n, g)-tile", or "one-pass channels-last" /
    "one-pass NCHW" (compiled per layout; with one position both layouts are one memory)."""
    _, x3 = _view3(x)
    plan = _plan(x3, num_groups, overrides)
    if plan.one_pass:
        n, c, hw = x3.shape
        return f"one-pass {'channels-last' if x3.stride(1) == 1 and c > 1 and hw > 1 else 'NCHW'}"
    return plan.kernels


def make_plan(
    x3: torch.Tensor, num_groups: int, *,
    block_hw: int | None = None, block_c: int | None = None, split: int | None = None,
    passes: int | None = None, sms: int | None = None,
) -> Plan:
    """Tile and split sizes for x3 = (N, C, HW). The keyword overrides are for tests/tuning;
    ``sms``: plan as for a GPU with that many SMs (default: x3's GPU; 1 program in the interpreter).

    One pass (``passes`` None/0: when it fits and neither ``block_hw`` nor ``split``, which
    describe the two-pass tiling, is given; 1: required, a ValueError if it does not fit; 2:
    never): C/G a power of two and one group's HW (padded to a power of two) within
    ``ONE_PASS_TILE[...][0]`` elements; a program per (n, channel tile), the tile as wide as
    the aimed-at ``ONE_PASS_TILE[...][1]`` allows (at least one group).

    Channels-last (stride_c = 1) with C/G a power of two takes the row tiles: BLOCK_CT
    contiguous channels (all of C up to 512, at least one group) x BLOCK_HW positions. Else one
    program per (n, g, chunk), its tile wide along the contiguous axis. A tile holds about 2048
    elements on a GPU (8 per thread with 8 warps; registers checked with ptxas for sm_90 by
    scripts/inspect_gn_kernels.py), 16384 in the interpreter, where each program costs Python
    time. ``split`` aims at 8 programs per SM. Not tuned on a GPU yet.

    The plan is a function of the shape, whether channels are innermost, the groups, the SM
    count and the overrides, cached (the op plans every call: tens of microseconds of Python
    otherwise, more than a small level's kernel time on a GPU).
    """
    gpu = sms is not None or (x3.is_cuda and not interpreted())
    if gpu and sms is None:
        sms = _sm_count(x3.device.index if x3.device.index is not None else torch.cuda.current_device())
    return _make_plan(tuple(x3.shape), x3.stride(1) == 1, num_groups, sms if gpu else None,
                      block_hw, block_c, split, passes)


@lru_cache(maxsize=4096)
def _make_plan(shape: tuple[int, int, int], channels_inner: bool, num_groups: int, sms: int | None,
               block_hw: int | None, block_c: int | None, split: int | None, passes: int | None) -> Plan:
    """``make_plan`` of an (N, C, HW) shape; ``sms`` None: the interpreter."""
    n, c, hw = shape
    cpg = c // num_groups
    gpu = sms is not None
    if passes not in (None, 0, 1, 2):
        raise ValueError(f"GroupNorm kernel plan: passes must be 0 (choose), 1 or 2, got {passes}")
    if passes == 1 or (not passes and block_hw is None and split is None):
        op_c = one_pass_block_c(shape, num_groups, ONE_PASS_TILE["gpu" if gpu else "interpreter"], block_c)
        if op_c is not None:  # 32 values per thread: 4 warps up to 4096 elements, 16 at 16384
            hw_p = triton.next_power_of_2(hw)
            return Plan(hw_p, op_c, 1, hw_p, min(16, max(4, hw_p * op_c // 1024)), False,
                        triton.cdiv(c, op_c), one_pass=True)
        if passes == 1:
            raise ValueError(f"GroupNorm kernel plan: one pass needs C/G a power of two and one "
                             f"group's {triton.next_power_of_2(hw)} x {cpg} values within "
                             f"{ONE_PASS_TILE['gpu' if gpu else 'interpreter'][0]}; got C={c}, "
                             f"G={num_groups}, HW={hw}; fix: passes=0 (let the plan choose)")
    tile = 2048 if gpu else 16384
    row_tiles = channels_inner and c > 1 and _pow2(cpg)  # channels innermost, C/G a power of 2
    if row_tiles:
        block_c = max(cpg, triton.next_power_of_2(block_c) if block_c else min(triton.next_power_of_2(c), 512))
    elif block_c is None:
        if channels_inner and c > 1:  # channels-last: channels are contiguous
            block_c = min(triton.next_power_of_2(cpg), 512)
        else:
            block_c = min(triton.next_power_of_2(cpg), max(1, tile // min(triton.next_power_of_2(hw), 1024)))
    if block_hw is None:
        block_hw = max(1, min(triton.next_power_of_2(hw), tile // block_c))
    n_ct = triton.cdiv(c, block_c) if row_tiles else 1
    rows = n * n_ct if row_tiles else n * num_groups  # programs per HW chunk
    if split is None:
        target = 8 * sms if gpu else 1
        split = min(triton.cdiv(target, rows), triton.cdiv(hw, block_hw), _MAX_SPLIT)
    split = max(1, min(int(split), _MAX_SPLIT))
    chunk = triton.cdiv(triton.cdiv(hw, split), block_hw) * block_hw
    split = triton.cdiv(hw, chunk)  # no empty chunks
    num_warps = 8 if block_hw * block_c >= 1024 else 4
    return Plan(block_hw, block_c, split, chunk, num_warps, row_tiles, n_ct)


def _plan(x3: torch.Tensor, num_groups: int, overrides: tuple[int, ...]) -> Plan:
    """make_plan with the op's ``plan`` argument: (block_hw, block_c, split, passes), 0 = the default."""
    names = ("block_hw", "block_c", "split", "passes")
    return make_plan(x3, num_groups, **{k: v for k, v in zip(names, overrides) if v})


def _view3(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t or a dense copy, its (N, C, HW) view); a copy only if H, W do not flatten. The copy
    keeps t's suggested memory format (so y = empty_like(x) has the layout the fake op says)."""
    shape = (t.shape[0], t.shape[1], math.prod(t.shape[2:]))
    try:
        return t, t.view(shape)
    except RuntimeError:
        t = dense(t)
        return t, t.view(shape)


def check_input(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None) -> None:
    """One-line errors naming the cause and the fix for inputs the kernel cannot take."""
    where = "GroupNorm impl='triton'"
    if _mode_mismatch():
        raise RuntimeError(
            f"{where}: TRITON_INTERPRET changed between importing triton and this kernel module; "
            f"fix: set (or unset) TRITON_INTERPRET=1 before Python starts"
        )
    if x.device.type == "cpu" and not interpreted():
        raise RuntimeError(
            f"{where} got a CPU tensor, but Triton kernels run on CPU only in Triton's "
            f"interpreter; fix: set TRITON_INTERPRET=1 before Python starts, or use impl='auto'"
        )
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{where} supports float32/bfloat16/float16 inputs, got {x.dtype}; "
                        f"fix: cast the input or use impl='torch'")
    if x.dim() < 2 or x.shape[1] % num_groups != 0:
        raise ValueError(f"{where} needs an (N, C, *) input with C divisible by {num_groups} "
                         f"groups, got shape {tuple(x.shape)}; fix: change num_groups")
    if weight is not None and weight.shape != (x.shape[1],):
        raise ValueError(f"{where}: weight has shape {tuple(weight.shape)} for {x.shape[1]} "
                         f"channels; fix: build the layer with num_channels={x.shape[1]}")
    if max_offset(x) >= INDEX_LIMIT:
        raise ValueError(f"{where}: an offset inside one sample reaches {max_offset(x)} (sizes "
                         f"{tuple(x.shape)}, strides {x.stride()}), more than the kernel's int32 "
                         f"indexing allows; fix: pass a contiguous tensor, or use impl='torch'")


def _strides(t3: torch.Tensor) -> tuple[int, int, int]:
    return t3.stride(0), t3.stride(1), t3.stride(2)


def forward(x, weight, bias, num_groups, eps, relu, out_dtype, plan_overrides=()):
    """-> (y, mean, rstd); y has x's memory format and ``out_dtype`` (None: x's dtype),
    mean/rstd are fp32 (N*G,). weight/bias: both or neither, contiguous on x's device."""
    check_input(x, num_groups, weight)
    x, x3 = _view3(x)
    n, c, hw = x3.shape
    y = torch.empty_like(x, dtype=out_dtype or x.dtype)
    mean = torch.empty(n * num_groups, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if x.numel() > 0:
        with launch_guard(x.device):
            launch_forward(x3, y.view(n, c, hw), weight, bias, mean, rstd, num_groups, eps, relu,
                           _plan(x3, num_groups, plan_overrides))
    return y, mean, rstd


def launch_forward(x3, y3, weight, bias, mean, rstd, num_groups, eps, relu, plan: Plan) -> None:
    """The forward's launches (one pass; or stats, then normalize) for (N, C, HW) views x3 -> y3."""
    n, c, hw = x3.shape
    cpg = c // num_groups
    affine = weight is not None
    w, b = (weight, bias) if affine else (x3, x3)
    if plan.one_pass:
        _op_fwd_kernel[(n * plan.n_ct,)](
            x3, y3, w, b, mean, rstd, hw, c, num_groups, plan.n_ct, float(eps), *_strides(x3), *_strides(y3),
            CPG=cpg, HAS_AFFINE=affine, RELU=bool(relu), BLOCK_HW=plan.block_hw, BLOCK_CT=plan.block_c,
            EVEN_C=c % plan.block_c == 0, num_warps=plan.num_warps,
        )
        return
    part = torch.empty((n * num_groups, plan.split, 3), device=x3.device, dtype=torch.float32)
    block_s = triton.next_power_of_2(plan.split)
    if plan.row_tiles:
        grid = (n * plan.n_ct * plan.split,)
        geo = (hw, c, num_groups, plan.n_ct, plan.chunk, plan.split)
        tiles = dict(CPG=cpg, BLOCK_HW=plan.block_hw, BLOCK_CT=plan.block_c, EVEN_C=c % plan.block_c == 0,
                     num_warps=plan.num_warps)
        _rt_stats_kernel[grid](x3, part, *geo, x3.stride(0), x3.stride(2), **tiles)
        _rt_norm_kernel[grid](
            x3, y3, w, b, part, mean, rstd, *geo, float(eps), x3.stride(0), x3.stride(2), y3.stride(0),
            y3.stride(2), HAS_AFFINE=affine, RELU=bool(relu), BLOCK_S=block_s, **tiles,
        )
        return
    grid = (n * num_groups, plan.split)
    _gn_fwd_stats_kernel[grid](
        x3, part, hw, cpg, num_groups, plan.chunk, *_strides(x3),
        BLOCK_HW=plan.block_hw, BLOCK_C=plan.block_c, num_warps=plan.num_warps,
    )
    _gn_fwd_norm_kernel[grid](
        x3, y3, w, b, part, mean, rstd, hw, cpg, num_groups, plan.chunk, plan.split, float(eps),
        *_strides(x3), *_strides(y3), HAS_AFFINE=affine, RELU=bool(relu), BLOCK_HW=plan.block_hw,
        BLOCK_C=plan.block_c, BLOCK_S=block_s, num_warps=plan.num_warps,
    )


def backward(dy, x, weight, bias, mean, rstd, num_groups, relu, plan_overrides=()):
    """-> (dx in x's dtype, dgamma = sum over n of g * xhat, dbeta = of g), both fp32 (C,)."""
    x, x3 = _view3(x)
    if max_offset(dy) >= INDEX_LIMIT:
        dy = dense(dy)
    _, dy3 = _view3(dy)
    n, c, hw = x3.shape
    dx = torch.empty_like(x)
    dgamma = torch.zeros(c, device=x.device, dtype=torch.float32)
    dbeta = torch.zeros_like(dgamma)
    if x.numel() > 0:
        plan = _plan(x3, num_groups, plan_overrides)
        if plan.row_tiles and dy3.stride(1) != 1:  # the row tiles read dy channels-last too
            dy3 = dy3.transpose(1, 2).contiguous().transpose(1, 2)
        with launch_guard(x.device):
            launch_backward(dy3, x3, dx.view(n, c, hw), weight, bias, mean, rstd, dgamma, dbeta,
                            num_groups, relu, plan)
    return dx, dgamma, dbeta


def launch_backward(dy3, x3, dx3, weight, bias, mean, rstd, dgamma, dbeta, num_groups, relu,
                    plan: Plan) -> None:
    """The backward's launches (one pass + the N-sum; or reduce, finalize, dx); fills dx3,
    dgamma, dbeta."""
    n, c, hw = x3.shape
    cpg = c // num_groups
    f32 = dict(device=x3.device, dtype=torch.float32)
    affine = weight is not None
    w, b = (weight, bias) if affine else (x3, x3)
    inv_m = 1.0 / (cpg * hw)
    if plan.one_pass:
        sum_s = torch.empty((n, c), **f32)
        sum_b = torch.empty_like(sum_s)
        _op_bwd_kernel[(n * plan.n_ct,)](
            x3, dy3, dx3, w, b, mean, rstd, sum_s, sum_b, hw, c, num_groups, plan.n_ct, inv_m,
            *_strides(x3), *_strides(dy3), *_strides(dx3), CPG=cpg, HAS_AFFINE=affine, RELU=bool(relu),
            BLOCK_HW=plan.block_hw, BLOCK_CT=plan.block_c, EVEN_C=c % plan.block_c == 0,
            num_warps=plan.num_warps,
        )
        torch.sum(sum_b, 0, out=dgamma)
        torch.sum(sum_s, 0, out=dbeta)
        return
    part_s = torch.empty((n, plan.split, c), **f32)
    part_b = torch.empty_like(part_s)
    coef = torch.empty((n * num_groups, 2), **f32)
    if plan.row_tiles:
        grid = (n * plan.n_ct * plan.split,)
        geo = (hw, c, num_groups, plan.n_ct, plan.chunk, plan.split)
        tiles = dict(CPG=cpg, HAS_AFFINE=affine, RELU=bool(relu), BLOCK_HW=plan.block_hw,
                     BLOCK_CT=plan.block_c, EVEN_C=c % plan.block_c == 0, num_warps=plan.num_warps)
        _rt_bwd_reduce_kernel[grid](x3, dy3, w, b, mean, rstd, part_s, part_b, *geo, x3.stride(0),
                                    x3.stride(2), dy3.stride(0), dy3.stride(2), **tiles)
        block_cf = max(cpg, min(triton.next_power_of_2(c), 64))
        _rt_bwd_finalize_kernel[(triton.cdiv(c, block_cf),)](
            part_s, part_b, w, dgamma, dbeta, coef, n, c, num_groups, plan.split, inv_m, CPG=cpg,
            HAS_AFFINE=affine, BLOCK_S=max(1, min(triton.next_power_of_2(plan.split), 4096 // block_cf)),
            BLOCK_CF=block_cf,
        )
        _rt_bwd_dx_kernel[grid](x3, dy3, dx3, w, b, mean, rstd, coef, *geo, x3.stride(0), x3.stride(2),
                                dy3.stride(0), dy3.stride(2), dx3.stride(0), dx3.stride(2), **tiles)
        return
    grid = (n * num_groups, plan.split)
    consts = dict(HAS_AFFINE=affine, RELU=bool(relu), BLOCK_HW=plan.block_hw, BLOCK_C=plan.block_c,
                  num_warps=plan.num_warps)
    _gn_bwd_reduce_kernel[grid](
        x3, dy3, w, b, mean, rstd, part_s, part_b, c, hw, cpg, num_groups, plan.chunk,
        *_strides(x3), *_strides(dy3), **consts,
    )
    sum_s = torch.empty((n, c), **f32)
    sum_b = torch.empty_like(sum_s)
    block_s = min(triton.next_power_of_2(plan.split), 64)
    _gn_bwd_finalize_kernel[(n * num_groups,)](
        part_s, part_b, w, sum_s, sum_b, coef, c, cpg, num_groups, plan.split, inv_m,
        HAS_AFFINE=affine, BLOCK_S=block_s,
        BLOCK_C=min(triton.next_power_of_2(cpg), max(1, 4096 // block_s)),
    )
    _gn_bwd_dx_kernel[grid](
        x3, dy3, dx3, w, b, mean, rstd, coef, hw, cpg, num_groups, plan.chunk,
        *_strides(x3), *_strides(dy3), *_strides(dx3), **consts,
    )
    torch.sum(sum_b, 0, out=dgamma)
    torch.sum(sum_s, 0, out=dbeta)
