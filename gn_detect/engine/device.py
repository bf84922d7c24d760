"""The one rule for where a model runs and in which autocast dtype (train, evaluate, predict)."""
from __future__ import annotations

import torch

__all__ = ["resolve_device", "amp_dtype"]


def resolve_device(name: str, auto: torch.device | None = None) -> torch.device:
    """``device`` setting -> torch device: ``auto`` is ``auto`` when given (the distributed
    set-up's choice), else CUDA when available; an unavailable CUDA is a one-line error."""
    if name == "auto":
        if auto is not None:
            return auto
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name}: CUDA is not available here; use device=cpu or device=auto")
    return torch.device(name)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """``solver.amp`` (auto|bf16|fp16|off) -> the autocast dtype, None for fp32; ``auto`` is
    bf16 on CUDA and fp32 elsewhere (what evaluation and predict use too)."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[setting]
