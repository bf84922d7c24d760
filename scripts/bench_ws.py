#!/usr/bin/env python
"""Weight standardization cost: our fused-kernel ``standardize_weight`` against the plain
var_mean formula (the reference), forward + backward over every conv weight of ResNet-18 FPN
+ RetinaNet head, in one run; also checks the two agree in float64.

    python scripts/bench_ws.py
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gn_detect.layers import standardize_weight  # noqa: E402
from gn_detect.modeling import build_model  # noqa: E402


def reference(w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    flat = w.flatten(1)
    var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) * torch.rsqrt(var + eps)).view_as(w)


def main() -> None:
    model = build_model({"backbone": {"depth": "18", "norm": "gn"}, "fpn": {"norm": "gn"}, "head": {"norm": "gn"}}, 80)
    weights = [m.weight.detach().clone().requires_grad_(True) for m in model.modules()
               if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4]
    w64 = weights[5].detach().double()
    err = (standardize_weight(w64) - reference(w64)).abs().max().item()

    def run(fn) -> float:
        t = time.perf_counter()
        loss = sum((fn(w) ** 2).sum() for w in weights)
        loss.backward()
        return time.perf_counter() - t

    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(7):  # interleaved so machine-load drift hits both
        times["ours"].append(run(standardize_weight))
        times["reference"].append(run(reference))
    ours, ref = (statistics.median(times[k][1:]) for k in ("ours", "reference"))
    n = sum(w.numel() for w in weights)
    print(f"# WS forward+backward over {len(weights)} conv weights ({n / 1e6:.1f}M values), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"ours (batch_norm kernel): {ours:.3f} s   reference (var_mean): {ref:.3f} s   "
          f"reference/ours: {ref / ours:.2f}x   max |diff| float64: {err:.1e}")


if __name__ == "__main__":
    main()
