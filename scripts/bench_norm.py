#!/usr/bin/env python
"""One norm layer, forward + backward: our Triton GroupNorm vs torch's GN vs torch's BN.

Shapes are the GN layers of a RetinaNet at an 800x1216 input: the FPN levels P3-P7 (C=256,
strides 8-128) and ResNet-50 stages (C=256/512/2048 at strides 4/8/32), for batches 2 and 8,
G=32. A step is y = norm(x) and the gradients (dx, dgamma, dbeta) for a given dy. Columns:

  ours-cl / ours-nchw   gn_op.triton_group_norm on a channels-last / contiguous input
  torch-gn-cl / -nchw   F.group_norm (torch has no channels-last GN kernel on CUDA)
  torch-bn-cl           F.batch_norm in training mode (the speed GN is measured against)

Each entry: median ms per step and effective bandwidth = bytes of x, y, dy and dx at their
dtype / time (what a perfect fwd+bwd would move; the kernels actually read x and dy twice).
``ratio`` = torch GN / ours for the same layout (above 1: ours is faster). The header gives the
ceiling: a device-to-device copy's bandwidth (bytes read + written / time) in the same run.

    python scripts/bench_norm.py --device cuda --dtype bf16
    python scripts/bench_norm.py --device cpu                          # torch columns only
    TRITON_INTERPRET=1 python scripts/bench_norm.py --device cpu       # + ours, tiny shapes
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (name, C, H, W) at an 800x1216 input
DETECTOR_SHAPES = [
    ("res2", 256, 200, 304), ("P3", 256, 100, 152), ("P4", 256, 50, 76), ("P5", 256, 25, 38),
    ("P6", 256, 13, 19), ("P7", 256, 7, 10), ("res3", 512, 100, 152), ("res5", 2048, 25, 38),
]
TINY_SHAPES = [("tiny-a", 64, 13, 19), ("tiny-b", 256, 7, 10)]  # for the CPU interpreter
COLUMNS = ("ours-cl", "ours-nchw", "torch-gn-cl", "torch-gn-nchw", "torch-bn-cl")


def step_fn(column: str, x: torch.Tensor, groups: int) -> Callable[[], None]:
    """A closure running forward + backward of one layer for ``column``."""
    c = x.shape[1]
    dy = torch.randn_like(x)
    w = torch.rand(c, device=x.device) + 0.5  # fp32 affine, as under AMP
    b = torch.randn(c, device=x.device)
    if column.startswith("ours"):
        from gn_detect.layers.gn_op import triton_group_norm

        def forward(x_, w_, b_):
            return triton_group_norm(x_, groups, w_, b_, 1e-5)
    elif column.startswith("torch-gn"):
        w, b = w.to(x.dtype), b.to(x.dtype)  # same dtype as x: torch's GN fast path

        def forward(x_, w_, b_):
            return F.group_norm(x_, groups, w_, b_, 1e-5)
    else:
        mean, var = torch.zeros(c, device=x.device), torch.ones(c, device=x.device)

        def forward(x_, w_, b_):
            return F.batch_norm(x_, mean, var, w_, b_, training=True, momentum=0.1, eps=1e-5)
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))

    def step() -> None:
        y = forward(x, w, b)
        torch.autograd.grad(y, (x, w, b), dy)

    return step


def time_ms(step: Callable[[], None], device: torch.device, warmup: int, iters: int, repeats: int = 5) -> float:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        samples.append((time.perf_counter() - start) / iters * 1e3)
    return statistics.median(samples)


def copy_gbps(device: torch.device, repeats: int) -> float:
    """Bandwidth of ``dst.copy_(src)`` (read + write bytes / time): the ceiling for a norm layer."""
    nbytes = 2**30 if device.type == "cuda" else 2**24
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=3, iters=10, repeats=repeats)
    return 2 * nbytes / ms / 1e6


def columns_for(device: torch.device) -> tuple[list[str], str]:
    """The columns that can run here, and why ours is skipped (or "")."""
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        if importlib.util.find_spec("triton") is None:
            return [c for c in COLUMNS if not c.startswith("ours")], "triton is not installed"
        return list(COLUMNS), ""
    return [c for c in COLUMNS if not c.startswith("ours")], "CPU without TRITON_INTERPRET=1"


def bench_shape(args, device, dtype, n, name, c, h, w, columns) -> dict:
    x_nchw = torch.randn(n, c, h, w, device=device, dtype=dtype)
    inputs = {"cl": x_nchw.contiguous(memory_format=torch.channels_last), "nchw": x_nchw}
    moved = 4 * x_nchw.numel() * x_nchw.element_size()  # x, y, dy, dx
    row = {"shape": [n, c, h, w], "name": name, "ms": {}, "GBps": {}}
    for col in columns:
        step = step_fn(col, inputs["cl" if col.endswith("-cl") else "nchw"], args.groups)
        ms = time_ms(step, device, args.warmup, args.iters, args.repeats)
        row["ms"][col], row["GBps"][col] = ms, moved / ms / 1e6
    for layout in ("cl", "nchw"):
        if f"ours-{layout}" in row["ms"]:
            row[f"ratio-{layout}"] = row["ms"][f"torch-gn-{layout}"] / row["ms"][f"ours-{layout}"]
    if any(col.startswith("ours") for col in columns):  # which kernels ours ran (one-pass, row-tile, ...)
        from gn_detect.layers.gn_triton import kernels_key

        row["kernels"] = {layout: kernels_key(t, args.groups) for layout, t in inputs.items()}
    return row


def print_row(row: dict, columns: list[str]) -> None:
    n, c, h, w = row["shape"]
    cells = " ".join(f"{row['ms'][k]:16.3f} {row['GBps'][k]:7.0f}" for k in columns)
    ratios = " ".join(f"{row.get(f'ratio-{k}', float('nan')):6.2f}" for k in ("cl", "nchw"))
    kernels = "  " + " / ".join(row["kernels"].values()) if "kernels" in row else ""
    print(f"{row['name']:6s} {n:2d}x{c:4d}x{h:3d}x{w:3d} {cells} {ratios}{kernels}", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="default: 2 8 on cuda, 2 on cpu")
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of --iters steps (median)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is visible; use --device cpu")
    gpu = device.type == "cuda"
    args.batch = args.batch or ([2, 8] if gpu else [2])
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    args.iters = args.iters if args.iters is not None else (50 if gpu else 2)
    columns, skipped = columns_for(device)
    shapes = TINY_SHAPES if not gpu and not skipped else DETECTOR_SHAPES
    machine = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    ceiling = copy_gbps(device, args.repeats)
    print(f"# norm fwd+bwd, {args.dtype}, G={args.groups}, {machine}, torch {torch.__version__}, "
          f"copy {ceiling:.0f} GB/s"
          + (f"; ours skipped: {skipped}" if skipped else "")
          + ("; Triton interpreter: tiny shapes, times are not kernel speed" if not gpu and not skipped else ""))
    print(f"{'layer':6s} {'N x C x H x W':17s} " + " ".join(f"{c + ' ms':>16s} {'GB/s':>7s}" for c in columns)
          + f" {'cl':>6s} {'nchw':>6s}  (ratio torch GN / ours; our kernels cl / nchw)")
    rows = []
    for n in args.batch:
        for name, c, h, w in shapes:
            row = bench_shape(args, device, DTYPES[args.dtype], n, name, c, h, w, columns)
            print_row(row, columns)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "machine": machine,
                                         "copy_GBps": ceiling, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
