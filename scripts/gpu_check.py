#!/usr/bin/env python
"""The GPU check's steps, in one process (run it through ``bash scripts/gpu_check.sh``).

  correctness   our GN (impl='triton', fwd + bwd) against torch's GN in float64 per sample:
                N 1 and 8 x the 8 bench_norm shapes x bf16/fp32 x NCHW/channels-last x ReLU
                on/off, plus a tensor of more than 2^31 elements and a channel slice of a
                channels-last tensor. Pass: error <= 2 x torch's own error in the same dtype
                + 1/4 ulp (fp32: 1e-5), as tests/layers/test_gn_triton.py.
  bench_norm    scripts/bench_norm.py (ours/torch GN both layouts, BN, copy bandwidth ceiling).
  bench_model   scripts/bench_model.py R50-FPN 800x1216 batch 8 bf16: affine/bn/gn/gn_ws x impl
                torch/triton, eager, then compiled (in priority order while the time budget
                lasts; what is skipped is recorded), against torchvision's RetinaNet.
  graph         graph breaks and recompiles when compiling our gn_ws model (impl auto) on two
                input shapes (backend aot_eager: dynamo's view, no code generation).

``--dry-run``: the same steps on the CPU at tiny shapes and G = 4 (kernel in Triton's
interpreter, which gpu_check.sh enables). bench_model runs ResNet-18 at 64x64, eager only
(affine and gn_ws; step graph does the compiling), with impl 'auto', i.e. aten's GN through
the op, because an interpreted kernel in a whole model would take minutes. After every step
OUT/gpu_check.json and OUT/gpu_check.md are rewritten, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STEPS = ("correctness", "bench_norm", "bench_model", "graph")
EPS = 1e-5
ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _fwd_bwd(x, groups, w, b, dy, relu, ours: bool):
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    if ours:
        from gn_detect.layers.gn_op import triton_group_norm

        y = triton_group_norm(x, groups, w, b, EPS, relu=relu)
    else:
        y = F.group_norm(x, groups, w, b, EPS)
        y = F.relu(y) if relu else y
    return (y.detach(), *torch.autograd.grad(y, (x, w, b), dy))


def _reference(x, groups, w, b, dy, relu):
    """float64 fwd + bwd, one sample at a time (GN is per sample; dgamma/dbeta add up)."""
    ys, dxs, dw, db = [], [], 0.0, 0.0
    for i in range(x.shape[0]):
        y, dx, dwi, dbi = _fwd_bwd(x[i:i + 1].double(), groups, w.double(), b.double(),
                                   dy[i:i + 1].double(), relu, ours=False)
        ys.append(y), dxs.append(dx)
        dw, db = dw + dwi, db + dbi
    return torch.cat(ys), torch.cat(dxs), dw, db


def check_case(name, shape, dtype, channels_last, relu, groups, channel_slice=None) -> dict:
    """One correctness case; an exception is a failed case (with its message), not a failed step."""
    try:
        return _check_case(name, shape, dtype, channels_last, relu, groups, channel_slice)
    except Exception as e:  # noqa: BLE001
        return {"name": name, "shape": list(shape), "dtype": str(dtype).split(".")[-1],
                "layout": "cl" if channels_last else "nchw", "relu": relu, "ok": False,
                "error": f"{type(e).__name__}: {str(e).strip()[:300]}",
                "err": {"y": float("inf")}, "tol": {"y": 1.0}}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _check_case(name, shape, dtype, channels_last, relu, groups, channel_slice) -> dict:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=dev).manual_seed(sum(shape))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, generator=gen, device=dev, dtype=dtype) * 2 + 0.5).contiguous(memory_format=fmt)
    dy = torch.randn(shape, generator=gen, device=dev, dtype=dtype).contiguous(memory_format=fmt)
    c = shape[1]
    w = torch.rand(c, generator=gen, device=dev) + 0.5
    b = torch.randn(c, generator=gen, device=dev)
    if channel_slice:
        lo, hi = channel_slice
        x, dy, w, b = x[:, lo:hi], dy[:, lo:hi], w[lo:hi], b[lo:hi]
    got = _fwd_bwd(x, groups, w, b, dy, relu, ours=True)
    ref = _reference(x, groups, w, b, dy, relu)
    errs = [_rel(g, r) for g, r in zip(got, ref)]
    if dtype == torch.float32:
        tols = [1e-5] * 4
    else:
        lowp = _fwd_bwd(x, groups, w.to(dtype), b.to(dtype), dy, relu, ours=False)
        tols = [2 * _rel(t, r) + ULP[dtype] / 4 for t, r in zip(lowp, ref)]
    ok = all(e <= t for e, t in zip(errs, tols))
    del got, ref
    return {"name": name, "shape": list(x.shape), "dtype": str(dtype).split(".")[-1],
            "layout": "cl" if channels_last else "nchw", "relu": relu, "ok": ok,
            "err": dict(zip(("y", "dx", "dw", "db"), errs)), "tol": dict(zip(("y", "dx", "dw", "db"), tols))}


def step_correctness(args) -> dict:
    bench_norm = _script("bench_norm")
    shapes = bench_norm.DETECTOR_SHAPES if not args.dry_run else [("tiny", 16, 5, 7)]
    g = args.groups
    cases = []
    for n in (1, 8):
        for sname, c, h, w in shapes:
            for dtype in (torch.bfloat16, torch.float32):
                for cl in (True, False):
                    for relu in (True, False):
                        cases.append(check_case(f"{sname} N{n}", (n, c, h, w), dtype, cl, relu, g))
    big = (2, 256, 2048, 2100) if not args.dry_run else (2, 16, 6, 5)  # > 2^31 elements on a GPU
    cases.append(check_case("over 2^31 elements" if not args.dry_run else "big (tiny stand-in)",
                            big, torch.bfloat16, True, True, g))
    sl = (8, 256, 100, 152) if not args.dry_run else (2, 32, 5, 7)
    cases.append(check_case("channel slice of P3", sl, torch.bfloat16, True, True, g,
                            channel_slice=(sl[1] // 4, 3 * sl[1] // 4)))
    failed = [c for c in cases if not c["ok"]]
    return {"cases": cases, "passed": len(cases) - len(failed), "failed": [c["name"] for c in failed]}


def step_bench_norm(args) -> dict:
    out = args.out / "bench_norm.json"
    argv = ["--device", args.device, "--dtype", "bf16", "--groups", str(args.groups), "--json", str(out)]
    if args.dry_run:
        argv += ["--batch", "2", "--warmup", "0", "--iters", "1", "--repeats", "1"]
    _script("bench_norm").main(argv)
    return json.loads(out.read_text())


def step_bench_model(args, deadline: float) -> dict:
    bench_model = _script("bench_model")
    base = (["--device", "cuda", "--depth", "50", "--size", "800", "1216", "--batch", "8", "--bf16",
             "--warmup", "3", "--iters", "10"] if not args.dry_run else
            ["--device", "cpu", "--depth", "18", "--size", "64", "64", "--batch", "2", "--warmup", "0",
             "--iters", "2", "--backend", "aot_eager", "--threads", "2", "--num-classes", "3"])
    triton = "auto" if args.dry_run else "triton"
    # (mode, impl, norms); impl matters only for the GN presets. Compiled runs in priority order.
    plan = [("eager", "torch", ["affine", "bn", "gn", "gn_ws"]), ("eager", triton, ["gn", "gn_ws"]),
            ("compiled", triton, ["affine", "gn_ws"]), ("compiled", "torch", ["gn_ws"]),
            ("compiled", triton, ["gn"]), ("compiled", "torch", ["bn"])]
    if args.dry_run:  # CI: one eager run (the CPU takes seconds per step; step graph compiles)
        plan = [("eager", triton, ["affine", "gn_ws"])]
    runs, skipped = [], []
    for mode, impl, norms in plan:
        if time.monotonic() > deadline:
            skipped.append(f"{mode} impl={impl} {' '.join(norms)}")
            continue
        argv = base + ["--impl", impl, "--norms", *norms] + (["--compile"] if mode == "compiled" else [])
        if mode == "compiled":
            torch._dynamo.reset()
        results = bench_model.main(argv)
        runs += [{"mode": mode, "impl": impl, "norm": k, **v} for k, v in results.items()]
    by = {(r["mode"], r["norm"], r["impl"]): r["ours_s"] for r in runs}
    ratios = {}
    for mode in ("eager", "compiled"):
        for impl in ("torch", triton):
            gn_ws = by.get((mode, "gn_ws", impl))
            affine = by.get((mode, "affine", impl)) or by.get((mode, "affine", "torch"))
            if gn_ws and affine:
                ratios[f"{mode} impl={impl}"] = gn_ws / affine
    return {"runs": runs, "gn_ws_over_affine": ratios, "skipped_for_time": skipped}


def step_graph(args) -> dict:
    from torch._dynamo.utils import counters

    from gn_detect.modeling import build_model
    from gn_detect.modeling.compile import COMPILED_PARTS, compile_model

    bench_model = _script("bench_model")
    dev = torch.device(args.device)
    depth, shapes, n = ("50", [(256, 384), (384, 512)], 2) if not args.dry_run else ("tiny", [(64, 64), (64, 128)], 1)
    cfg = {"norm_opts": {"impl": "auto"},
           "backbone": {"depth": depth, "norm": "gn", "ws": True, "freeze_at": 0},
           "fpn": {"out_channels": 256 if not args.dry_run else 16, "norm": "gn", "ws": True},
           "head": {"num_convs": 4 if not args.dry_run else 1, "norm": "gn", "ws": True}}
    if args.dry_run:
        cfg["norm_opts"]["num_groups"] = 4
        cfg["backbone"]["widths"] = [16, 16, 32, 32]
    model = build_model(cfg, 3).to(dev).train()
    torch._dynamo.reset()
    counters.clear()
    compile_model(model, backend="aot_eager", num_buckets=len(shapes))
    for h, w in shapes:
        images = torch.randn(n, 3, h, w, device=dev)
        targets = bench_model.make_targets(n, h, w, 3, dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = sum(model(images, [(h, w)] * n, targets).values())
        loss.backward()
    breaks = dict(counters["graph_break"])
    graphs = int(counters["stats"]["unique_graphs"])
    return {"graph_breaks": sum(breaks.values()), "break_reasons": {k[:200]: v for k, v in breaks.items()},
            "compiled_graphs": graphs, "parts": len(COMPILED_PARTS), "shapes": len(shapes),
            "recompiles": graphs - len(COMPILED_PARTS)}


def environment(args) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "dry_run": args.dry_run,
           "cuda": torch.version.cuda, "device": args.device}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available() and not args.dry_run:
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, sms=p.multi_processor_count, gpu_memory_gib=round(p.total_memory / 2**30, 1))
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def markdown(report: dict) -> str:
    """One table: check | result."""
    rows = [("machine", ", ".join(f"{k} {v}" for k, v in report["environment"].items() if v is not None))]
    r = report["steps"]
    for name, res in r.items():
        if "error" in res:
            rows.append((name, f"ERROR {res['error']}"))
    if "cases" in r.get("correctness", {}):
        c = r["correctness"]
        worst = max(c["cases"], key=lambda k: max(k["err"][q] / k["tol"][q] for q in k["err"]))
        rows.append(("correctness vs float64", f"{c['passed']}/{len(c['cases'])} pass"
                     + (f"; failed: {', '.join(c['failed'])}" if c["failed"] else "")
                     + f"; worst err/tol {max(worst['err'][q] / worst['tol'][q] for q in worst['err']):.2f} "
                       f"({worst['name']} {worst['dtype']} {worst['layout']} relu={worst['relu']})"))
    if "rows" in r.get("bench_norm", {}):
        b = r["bench_norm"]
        rows.append(("copy bandwidth (ceiling)", f"{b['copy_GBps']:.0f} GB/s"))
        for row in b["rows"]:
            cells = ", ".join(f"{k} {v:.3g}" for k, v in row["GBps"].items())
            if "kernels" in row:  # which of our kernels ran: one-pass, row-tile, (n, g)-tile
                cells += f" (ours: cl {row['kernels']['cl']}, nchw {row['kernels']['nchw']})"
            rows.append((f"bench_norm {row['name']} {'x'.join(map(str, row['shape']))} GB/s", cells))
    if "runs" in r.get("bench_model", {}):
        m = r["bench_model"]
        for run in m["runs"]:
            rows.append((f"bench_model {run['mode']} {run['norm']} impl={run['impl']}",
                         f"ours {run['ours_s']:.3f} s/step, torchvision {run['torchvision_s']:.3f}, "
                         f"tv/ours {run['ratio_tv_over_ours']:.2f}"))
        for k, v in m["gn_ws_over_affine"].items():
            rows.append((f"gn_ws / affine ({k})", f"{v:.2f}x"))
        if m["skipped_for_time"]:
            rows.append(("bench_model skipped (time budget)", "; ".join(m["skipped_for_time"])))
    if "graph_breaks" in r.get("graph", {}):
        g = r["graph"]
        rows.append(("compile: graph breaks / recompiles",
                     f"{g['graph_breaks']} / {g['recompiles']} ({g['compiled_graphs']} graphs for "
                     f"{g['parts']} parts x {g['shapes']} shapes)"))
    lines = ["| check | result |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for gpu_check.json, gpu_check.md and bench files")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes (CI)")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="bench_model starts no further compiled run after this many seconds")
    args = ap.parse_args(argv)
    args.device = "cpu" if args.dry_run else "cuda"
    args.groups = 4 if args.dry_run else 32  # fewer programs for the interpreter
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible; fix: run on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    report = {"environment": environment(args), "steps": {}, "seconds": {}}
    for name in args.steps:
        t = time.monotonic()
        print(f"== gpu_check: {name}", flush=True)
        try:
            fn = globals()[f"step_{name}"]
            report["steps"][name] = fn(args, start + args.budget_s) if name == "bench_model" else fn(args)
        except Exception as e:  # noqa: BLE001 (record it and go on with the other steps)
            traceback.print_exc()
            report["steps"][name] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
        report["seconds"][name] = round(time.monotonic() - t, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / "gpu_check.md").write_text(markdown(report))
    print((args.out / "gpu_check.md").read_text())
    bad = [k for k, v in report["steps"].items() if "error" in v] + \
        (["correctness"] if report["steps"].get("correctness", {}).get("failed") else [])
    print(f"gpu_check: {'FAILED: ' + ', '.join(bad) if bad else 'all steps ran'} "
          f"in {time.monotonic() - start:.0f} s; {args.out / 'gpu_check.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
