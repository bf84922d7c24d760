#!/usr/bin/env python
"""Training-step speed of gn-detect's RetinaNet against torchvision's, per norm, in one run.

Both models get the same ResNet depth, image size, batch, number of classes and norm (our
``get_norm`` injected into torchvision's ``norm_layer`` slots; WS by ``convert_ws``). A step is
forward + loss + backward + SGD update; we report the median over timed steps and the ratio
torchvision / ours (above 1: ours is faster).

Options for our model only (torchvision's stays eager, NCHW, torch's GN: the fixed reference):
``--impl`` the GroupNorm code (``model.norm_opts.impl``: auto = Triton kernel on CUDA),
``--channels-last`` its memory format (default on for CUDA, off for CPU), ``--compile``
torch.compile of backbone, FPN and head (``gn_detect.modeling.compile.compile_model``; the
warmup steps absorb the compilation, which is reported separately).

    python scripts/bench_model.py                         # CPU: ResNet-18 FPN, 320x320, batch 2
    python scripts/bench_model.py --device cuda --depth 50 --size 800 1216 --batch 8 --bf16
    python scripts/bench_model.py --device cuda --depth 50 --size 800 1216 --batch 8 --bf16 \
        --norms gn gn_ws --impl triton --channels-last on --compile
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gn_detect.layers import GN_IMPLS, convert_ws, get_norm  # noqa: E402
from gn_detect.modeling import build_model  # noqa: E402
from gn_detect.modeling.compile import compile_model  # noqa: E402

PRESETS = {  # backbone, fpn, head, ws
    "affine": ("affine", "none", "none", False),
    "bn": ("bn", "bn", "bn", False),
    "gn": ("gn", "gn", "gn", False),
    "gn_ws": ("gn", "gn", "gn", True),
}


def make_targets(batch: int, h: int, w: int, num_classes: int, device: torch.device, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        n = 6
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        out.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                    "labels": torch.randint(0, num_classes, (n,), generator=g).to(device)})
    return out


def ours(depth: str, preset: str, num_classes: int, impl: str = "auto") -> nn.Module:
    bb, fpn, head, ws = PRESETS[preset]
    cfg = {
        "norm_opts": {"impl": impl},
        "backbone": {"depth": depth, "norm": bb, "ws": ws, "freeze_at": 0},
        "fpn": {"out_channels": 256, "norm": fpn, "ws": ws},
        "head": {"num_convs": 4, "norm": head, "ws": ws},
    }
    return build_model(cfg, num_classes)


def torchvision_retinanet(depth: str, preset: str, num_classes: int, size: tuple[int, int]) -> nn.Module:
    from torchvision.models import resnet18, resnet34, resnet50, resnet101
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    bb, fpn, head, ws = PRESETS[preset]
    ctor = {"18": resnet18, "34": resnet34, "50": resnet50, "101": resnet101}[depth]

    def norm(name: str):  # torch's GN: the reference does not use our kernel
        return None if name == "none" else partial(lambda c, n: get_norm(n, c, impl="torch"), n=name)

    body = ctor(norm_layer=norm(bb))
    c5 = 512 if depth in ("18", "34") else 2048
    backbone = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256), norm_layer=norm(fpn))
    del c5
    anchor_gen = None
    model = RetinaNet(backbone, num_classes, min_size=size[0], max_size=max(size), anchor_generator=anchor_gen)
    model.head = RetinaNetHead(256, model.anchor_generator.num_anchors_per_location()[0], num_classes,
                               norm_layer=norm(head))
    if ws:
        for part in (model.backbone, model.head.classification_head.conv, model.head.regression_head.conv):
            convert_ws(part)
    return model


def time_steps(step, warmup: int, iters: int, sync) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return times


def make_step(model: nn.Module, forward, amp: dict):
    """A training step: forward (a closure returning the loss dict) + backward + SGD update."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step():
        with torch.autocast(**amp):
            loss = sum(forward().values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--depth", default="18")
    ap.add_argument("--size", type=int, nargs=2, default=[320, 320], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--num-classes", type=int, default=80)
    ap.add_argument("--norms", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--impl", choices=list(GN_IMPLS), default="auto", help="our GroupNorm code")
    ap.add_argument("--channels-last", choices=["on", "off"], default=None,
                    help="our model's memory format (default: on for cuda, off for cpu)")
    ap.add_argument("--compile", action="store_true", help="torch.compile our backbone, FPN, head")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend with --compile")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = args.size
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, h, w, device=device)
    targets = make_targets(args.batch, h, w, args.num_classes, device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    channels_last = (args.channels_last or ("on" if device.type == "cuda" else "off")) == "on"
    print(f"# RetinaNet train step, ResNet-{args.depth} FPN, {h}x{w}, batch {args.batch}, "
          f"{'bf16' if args.bf16 else 'fp32'}, {machine}, torch {torch.__version__}; ours: "
          f"impl={args.impl}, channels_last={'on' if channels_last else 'off'}, "
          f"compile={args.backend if args.compile else 'off'}; torchvision: eager, NCHW, torch GN")
    print(f"{'norm':8s} {'ours s/step':>12s} {'tv s/step':>12s} {'ours img/s':>11s} {'tv img/s':>9s} {'tv/ours':>8s}")
    results = {}
    for preset in args.norms:
        m_ours = ours(args.depth, preset, args.num_classes, args.impl).to(device).train()
        m_tv = torchvision_retinanet(args.depth, preset, args.num_classes, (h, w)).to(device).train()
        if channels_last:
            m_ours = m_ours.to(memory_format=torch.channels_last)
        if args.compile:
            compile_model(m_ours, backend=args.backend)
        sizes = [(h, w)] * args.batch
        tv_images = list(images.unbind(0))
        images_ours = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        step_ours = make_step(m_ours, lambda: m_ours(images_ours, sizes, targets), amp)
        step_tv = make_step(m_tv, lambda: m_tv(tv_images, targets), amp)

        if args.compile:  # compile outside the timed steps, and report how long it took
            start = time.perf_counter()
            step_ours()
            sync()
            print(f"{preset}: first compiled step (compilation) {time.perf_counter() - start:.1f} s", flush=True)
        # Interleave the two so drifts in machine load hit both alike.
        t_o, t_t = [], []
        for _ in range(2):
            t_o += time_steps(step_ours, args.warmup, args.iters // 2, sync)
            t_t += time_steps(step_tv, args.warmup, args.iters // 2, sync)
        mo, mt = statistics.median(t_o), statistics.median(t_t)
        results[preset] = {"ours_s": mo, "torchvision_s": mt, "ratio_tv_over_ours": mt / mo,
                           "ours_ims_per_s": args.batch / mo, "tv_ims_per_s": args.batch / mt}
        print(f"{preset:8s} {mo:12.3f} {mt:12.3f} {args.batch / mo:11.2f} {args.batch / mt:9.2f} {mt / mo:8.2f}",
              flush=True)

    if "affine" in results and "gn_ws" in results:
        r = results["gn_ws"]["ours_s"] / results["affine"]["ours_s"]
        print(f"gn_ws / affine step time (ours): {r:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "machine": machine,
                                         "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
