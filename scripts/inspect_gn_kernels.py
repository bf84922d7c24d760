#!/usr/bin/env python
"""Compile, without a GPU, every GroupNorm kernel one forward + backward of a shape launches,
with the plan gn_triton.make_plan would choose on a GPU with ``--sms`` SMs, and report them.

Runs the real host code (``gn_triton.launch_forward`` / ``launch_backward``) on CPU tensors of
the shape with the kernels replaced by recorders; each recorded launch is specialized as
Triton's JIT would (alignment, stride 1, divisibility by 16) and compiled with
``triton.compile(..., target=GPUTarget("cuda", ARCH, 32))``. Writes ``OUT/<kernel>.ptx`` and
``OUT/summary.json`` ({kernel: {"registers", "spills", "shared_bytes", "num_warps", "grid",
"global_loads", "global_stores", "global_atomics"}}; loads/stores: {bytes per access: count};
registers and spill bytes from ``ptxas -v``), and prints a table of global access widths.

    python scripts/inspect_gn_kernels.py --shape 8 256 100 152 --groups 32 --dtype bf16 \
        --layout channels_last --arch 90 --sms 132 --out /tmp/gn_kernels
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# {ld,st,red,atom}.global[.modifiers][.v2|.v4].{b,u,s,f}{8,16,32,64}: bytes per access = vector
# length x element size
ACCESS = re.compile(r"^\s*(?:@!?%p\d+\s+)?(ld|st|red|atom)\.global((?:\.[\w:]+)*?)(?:\.v(\d))?\.[bufs](8|16|32|64)\b",
                    re.M)


def access_widths(ptx: str) -> dict[str, dict[int, int]]:
    """{"global_loads": {bytes: count}, "global_stores": {...}, "global_atomics": count} of the
    PTX's global memory instructions (atomics would make results depend on timing)."""
    out = {"ld": Counter(), "st": Counter(), "red": Counter(), "atom": Counter()}
    for op, _mods, vec, bits in ACCESS.findall(ptx):
        out[op][int(vec or 1) * int(bits) // 8] += 1
    return {"global_loads": dict(sorted(out["ld"].items())), "global_stores": dict(sorted(out["st"].items())),
            "global_atomics": sum(out["red"].values()) + sum(out["atom"].values())}


def ptxas_usage(ptx_path: Path, ptx: str, arch: int) -> dict[str, int]:
    """Registers and spill bytes (stores + loads) reported by ``ptxas -v`` for the PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    proc = subprocess.run([get_ptxas(arch).path, "-v", f"-arch={target}", str(ptx_path), "-o", "/dev/null"],
                          capture_output=True, text=True, check=True)
    text = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", text)]
    return {"registers": int(regs.group(1)) if regs else -1, "spills": sum(spills)}


class _Recorder:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, name, fn, launches):
        self.name, self.fn, self.launches = name, fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.name, self.fn, tuple(grid), args, kwargs))


def record_launches(shape, groups, dtype, channels_last, relu, sms, affine=True, passes=0):
    """(plan, [(kernel name, JITFunction, grid, args, kwargs)]) of one forward + backward."""
    from triton.runtime.jit import JITFunction

    from gn_detect.layers import gn_triton

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.empty(shape, dtype=dtype).contiguous(memory_format=fmt)
    x, x3 = gn_triton._view3(x)
    n, c, hw = x3.shape
    y3, dy3, dx3 = (torch.empty_like(x).view(n, c, hw) for _ in range(3))
    w, b = (torch.empty(c), torch.empty(c)) if affine else (None, None)
    mean, rstd = torch.empty(n * groups), torch.empty(n * groups)
    plan = gn_triton.make_plan(x3, groups, sms=sms, passes=passes)
    launches: list = []
    kernels = {k: v for k, v in vars(gn_triton).items() if isinstance(v, JITFunction) and k.endswith("_kernel")}
    try:
        for k, fn in kernels.items():
            setattr(gn_triton, k, _Recorder(k.lstrip("_"), fn, launches))
        gn_triton.launch_forward(x3, y3, w, b, mean, rstd, groups, 1e-5, relu, plan)
        gn_triton.launch_backward(dy3, x3, dx3, w, b, mean, rstd, torch.empty(c), torch.empty(c), groups,
                                  relu, plan)
    finally:
        for k, fn in kernels.items():
            setattr(gn_triton, k, fn)
    return plan, launches


def compile_launch(fn, args, kwargs, arch: int):
    """triton.compile of one launch, specialized as the JIT would for these arguments."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def inspect(shape, groups, dtype, layout, arch, sms, out: Path, relu: bool = True, affine: bool = True,
            passes: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    plan, launches = record_launches(shape, groups, DTYPES[dtype], layout == "channels_last", relu, sms, affine,
                                     passes)
    summary = {}
    with tempfile.TemporaryDirectory() as cache:
        import os

        os.environ.setdefault("TRITON_CACHE_DIR", cache)
        for name, fn, grid, args, kwargs in launches:
            kernel = compile_launch(fn, args, kwargs, arch)
            ptx = kernel.asm["ptx"]
            path = out / f"{name}.ptx"
            path.write_text(ptx)
            summary[name] = {**ptxas_usage(path, ptx, arch), "shared_bytes": kernel.metadata.shared,
                             "num_warps": kernel.metadata.num_warps, "grid": list(grid), **access_widths(ptx)}
    report = {"plan": {**vars(plan), "kernels": plan.kernels}, "kernels": summary}
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    return report


def print_table(report: dict, title: str) -> None:
    print(f"# {title}; plan {report['plan']}")
    print(f"{'kernel':28s} {'grid':>14s} {'warps':>5s} {'regs':>4s} {'spill':>5s} {'smem':>6s}  "
          f"global loads {{bytes: count}} / stores")
    for name, k in report["kernels"].items():
        print(f"{name:28s} {'x'.join(map(str, k['grid'])):>14s} {k['num_warps']:5d} {k['registers']:4d} "
              f"{k['spills']:5d} {k['shared_bytes']:6d}  {k['global_loads']} / {k['global_stores']}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=4, required=True, metavar=("N", "C", "H", "W"))
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last")
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    ap.add_argument("--sms", type=int, default=132, help="SM count the plan assumes (H100/H200 SXM: 132)")
    ap.add_argument("--relu", action=argparse.BooleanOptionalAction, default=True, help="GN + ReLU")
    ap.add_argument("--affine", action=argparse.BooleanOptionalAction, default=True, help="with gamma/beta")
    ap.add_argument("--passes", type=int, choices=[0, 1, 2], default=0,
                    help="0: the plan's choice; 1: the one-pass kernels (error if a group does not fit); 2: two passes")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.shape[1] % args.groups:
        ap.error(f"--groups {args.groups} does not divide C={args.shape[1]}; fix: pick a divisor of C")
    try:
        report = inspect(tuple(args.shape), args.groups, args.dtype, args.layout, args.arch, args.sms, args.out,
                         args.relu, args.affine, args.passes)
    except ValueError as e:  # --passes 1 for a shape whose groups do not fit
        ap.error(str(e))
    print_table(report, f"GN kernels for sm_{args.arch}, {args.sms} SMs, {'x'.join(map(str, args.shape))} "
                        f"G={args.groups} {args.dtype} {args.layout} relu={args.relu} affine={args.affine}")
    return report


if __name__ == "__main__":
    main()
