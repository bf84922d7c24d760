#!/usr/bin/env python
"""Inference speed per norm preset: the eval model unfolded vs folded (gn_detect.deploy.fold_model),
in PyTorch (fp32 on CPU, bf16 autocast on CUDA) and in onnxruntime on CPU, same images, one run.

Timed: the network up to the head outputs (backbone + FPN + head, ``HeadNetwork``), i.e. what the
ONNX file holds; anchors and post-processing (identical for every variant) are not included.
Every preset's models and sessions are built first, then the timed calls are interleaved (one
call of every variant per round), so slow phases of a shared machine hit all variants alike;
each variant's number is the median over rounds. Norm parameters and BN statistics are random
(speed does not depend on them) and each variant's outputs are checked against the unfolded
model's before timing.

    python scripts/bench_inference.py                          # R18-FPN, 512x512, batch 1, CPU
    python scripts/bench_inference.py --size 800 1216 --iters 20 --json docs/results/bench_inference_cpu.json
    python scripts/bench_inference.py --device cuda --depth 50 --size 800 1216 --batch 8
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gn_detect.deploy import HeadNetwork, fold_model  # noqa: E402
from gn_detect.deploy.export_check import tensor_diff  # noqa: E402
from gn_detect.deploy.onnx_export import export_onnx, missing_onnx_packages, ort_session, run_ort  # noqa: E402
from gn_detect.layers import AffineChannel  # noqa: E402
from gn_detect.modeling import build_model  # noqa: E402

PRESETS = ("affine", "bn", "gn", "gn_ws", "gn_fpn_head")


def model_cfg(preset: str, depth: str) -> dict[str, Any]:
    """configs/model/retinanet_r18_fpn.yaml (depth replaced) with configs/norm/<preset>.yaml's model keys."""
    base = OmegaConf.load(REPO / "configs" / "model" / "retinanet_r18_fpn.yaml")
    norm = OmegaConf.load(REPO / "configs" / "norm" / f"{preset}.yaml")
    cfg = OmegaConf.merge(base, norm.model, {"backbone": {"depth": depth}})
    return OmegaConf.to_container(cfg, resolve=True)


@torch.no_grad()
def random_norms(model: nn.Module) -> nn.Module:
    """Random affine parameters and BN statistics, so that folding changes every weight."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        if isinstance(m, (_BatchNorm, nn.GroupNorm, AffineChannel)) and m.weight is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def _torch_runner(model: torch.nn.Module, images: torch.Tensor, bf16: bool) -> Callable[[], Any]:
    net = HeadNetwork(model)
    sizes = torch.tensor([list(images.shape[-2:])] * images.shape[0])  # whole images: no padding

    def run():
        with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = net(images, sizes)
        if images.is_cuda:
            torch.cuda.synchronize()
        return out
    return run


def build_variants(preset: str, args: argparse.Namespace, images: torch.Tensor, tmp: Path) -> dict[str, Any]:
    """name -> callable for one preset, after checking every variant against the unfolded model."""
    torch.manual_seed(0)
    model = random_norms(build_model(model_cfg(preset, args.depth), args.classes))
    model = model.to(images.device).eval()
    folded, report = fold_model(model)
    bf16 = images.is_cuda
    runners = {"torch unfolded": _torch_runner(model, images, bf16), "torch folded": _torch_runner(folded, images, bf16)}
    if args.onnx != "none":
        cpu_images = images.float().cpu()
        models = {"folded": folded} if args.onnx == "folded" else {"unfolded": model, "folded": folded}
        for name, m in models.items():
            path = tmp / f"{preset}_{name}.onnx"
            export_onnx(copy.deepcopy(m).float().cpu(), path)
            session = ort_session(path, args.threads)
            sizes = torch.tensor([list(images.shape[-2:])] * images.shape[0])
            runners[f"ort {name}"] = (lambda s=session: run_ort(s, cpu_images, sizes))
    ref = [t.float().cpu() for t in runners["torch unfolded"]()]
    check = {name: max(tensor_diff(r, o.float().cpu())["max_rel"] for r, o in zip(ref, run()))
             for name, run in runners.items() if name != "torch unfolded"}
    summary = {"folded": len(report.folded), "kept": len(report.kept),
               "kept_types": sorted({k["type"] for k in report.kept}), "max_rel_vs_unfolded": check}
    return {"runners": runners, "summary": summary}


def time_all(variants: dict[str, dict[str, Any]], warmup: int, iters: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of every call of every (preset, variant). Each round calls every variant once,
    grouped by backend (all presets' ``torch folded``, then ...), so the calls a ratio compares
    run seconds apart and see the same machine load."""
    names = list(next(iter(variants.values()))["runners"])
    calls = [(p, n, variants[p]["runners"][n]) for n in names for p in variants]
    for _, _, run in calls:
        for _ in range(warmup):
            run()
    times: dict[str, dict[str, list[float]]] = {p: {n: [] for n in v["runners"]} for p, v in variants.items()}
    for _ in range(iters):
        for p, n, run in calls:
            start = time.perf_counter()
            run()
            times[p][n].append(time.perf_counter() - start)
    return times


def spread(ts: list[float]) -> float:
    """Inter-quartile range / median: how noisy a variant's timings were."""
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return (q[2] - q[0]) / q[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} cores visible)" if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {gpu}, torch {torch.__version__}"


def round_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of the per-round time ratio (robust to load that changes between rounds)."""
    return statistics.median(a / b for a, b in zip(num, den))


def table(times: dict[str, dict[str, list[float]]], batch: int, variants: dict[str, dict[str, Any]]) -> str:
    """Images/s of every variant (median, best round in brackets), folding's speed-up in torch, and
    each preset's time relative to folded affine (the norm that costs nothing at inference) per
    backend; ratios are medians of per-round ratios."""
    names = list(next(iter(times.values())))
    folded = [n for n in names if n.endswith("folded") and not n.endswith("unfolded")]
    ref = times.get("affine")
    cols = [f"{n} img/s" for n in names] + ["torch: folded speed-up"]
    cols += [f"{n}: time / affine's" for n in folded] if ref else []
    lines = ["| preset | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for p, ts in times.items():
        row = [f"{batch / statistics.median(ts[n]):.2f} ({batch / min(ts[n]):.2f})" for n in names]
        row.append(f"{round_ratio(ts['torch unfolded'], ts['torch folded']):.2f}x")
        row += [f"{round_ratio(ts[n], ref[n]):.2f}x" for n in folded] if ref else []
        lines.append(f"| {p} | " + " | ".join(row) + " |")
    kept = [f"{p}: folded {v['summary']['folded']}, kept {v['summary']['kept']} {v['summary']['kept_types']}"
            for p, v in variants.items()]
    return "\n".join(lines + ["", "norms per preset: " + "; ".join(kept)])


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--depth", default="18")
    ap.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--onnx", choices=("both", "folded", "none"), default="both",
                    help="onnxruntime CPU sessions of the unfolded and/or folded model")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()
    if args.onnx != "none" and missing_onnx_packages():
        ap.error(f"--onnx {args.onnx} needs {', '.join(missing_onnx_packages())}: pip install -e '.[export]' "
                 "(or --onnx none)")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = (torch.rand(args.batch, 3, *args.size, generator=torch.Generator().manual_seed(0)) * 255).to(device)  # 0-255 RGB
    with tempfile.TemporaryDirectory() as tmp:
        variants = {p: build_variants(p, args, images, Path(tmp)) for p in args.presets}
        times = time_all(variants, args.warmup, args.iters)
    medians = {p: {n: statistics.median(ts) for n, ts in v.items()} for p, v in times.items()}
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"ResNet-{args.depth} FPN RetinaNet, {args.classes} classes, {args.size[0]}x{args.size[1]}, batch "
          f"{args.batch}, torch {precision} on {device.type}, onnxruntime CPU; {args.threads} threads; median of "
          f"{args.iters} interleaved rounds after {args.warmup} warm-up calls\nmachine: {machine()}\n")
    print(table(times, args.batch, variants))
    print("timing spread (inter-quartile range / median, worst variant): "
          + "; ".join(f"{p} {max(spread(ts) for ts in v.values()):.0%}" for p, v in times.items()))
    print("max relative difference of the head outputs vs torch unfolded: "
          + "; ".join(f"{p} {v['summary']['max_rel_vs_unfolded']}" for p, v in variants.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine(),
                                         "seconds_per_call_median": medians, "seconds_per_call": times,
                                         "summary": {p: v["summary"] for p, v in variants.items()}}, indent=2))


if __name__ == "__main__":
    main()
