"""ONNX: export the network up to the head outputs (``HeadNetwork``) with torch's dynamo exporter
and run it with onnxruntime on CPU. onnx, onnxruntime and onnxscript are the optional extra
``export`` (``pip install -e ".[export]"``), imported only here and only when used."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .network import HeadNetwork

__all__ = ["MIN_OPSET", "missing_onnx_packages", "require_onnx", "export_onnx",
           "ort_session", "run_ort"]

log = logging.getLogger(__name__)

MIN_OPSET = 18
_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def missing_onnx_packages() -> list[str]:
    return [p for p in _PACKAGES if importlib.util.find_spec(p) is None]


def require_onnx() -> None:
    """Raise one line naming the missing packages and the fix (before any long work)."""
    missing = missing_onnx_packages()
    if missing:
        raise RuntimeError(f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                           "not installed; fix: pip install -e \".[export]\" (or onnx=false to skip the ONNX file)")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints its progress and its graph passes log every step at INFO (which a
    Hydra job shows): silence both while it runs; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = MIN_OPSET,
                max_side: int = 8192) -> dict[str, Any]:
    """Write ``model``'s input normalization + backbone + FPN + head to ``path`` (inputs ``images``
    (B, 3, H, W) float32 0-255 RGB, zero-padded to H, W multiples of ``model.size_divisibility`` up
    to ``max_side``, any batch, and ``image_sizes`` (B, 2) int64, each image's (h, w) in it; outputs
    ``logits`` (B, A, K) and ``deltas`` (B, A, 4)), check it with onnx's checker, and return facts
    about the file."""
    require_onnx()
    import onnx  # noqa: PLC0415 (optional extra)

    if opset < MIN_OPSET:
        raise ValueError(f"opset={opset}: the exporter needs opset >= {MIN_OPSET}")
    net = HeadNetwork(model).eval()
    # A batch of 2 and 2x2 cells of 128 px: torch.export specializes dimensions that are 0 or 1
    # in the example, so the example must not have them for the graph to stay dynamic.
    div = model.size_divisibility  # inputs are padded to a multiple of this (modeling/builder.py)
    device = next(model.parameters()).device
    example = torch.zeros(2, 3, 2 * div, 2 * div, device=device)
    example_sizes = torch.tensor([[2 * div - 3] * 2, [div + 5] * 2], device=device)
    cells = max_side // div
    batch = torch.export.Dim("batch", min=1, max=1024)
    dims = {0: batch,
            2: div * torch.export.Dim("h_cells", min=1, max=cells),
            3: div * torch.export.Dim("w_cells", min=1, max=cells)}
    start = time.perf_counter()
    with _quiet_exporter():
        program = torch.onnx.export(net, (example, example_sizes), dynamo=True, opset_version=opset,
                                    input_names=["images", "image_sizes"], output_names=["logits", "deltas"],
                                    dynamic_shapes={"images": dims, "image_sizes": {0: batch}})
        program.save(str(path))
    seconds = time.perf_counter() - start
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opsets = {imp.domain or "ai.onnx": imp.version for imp in proto.opset_import}
    log.info("exported %s in %.1fs (opset %s)", path, seconds, opsets.get("ai.onnx"))
    return {"file": Path(path).name, "opset": opsets.get("ai.onnx"), "export_seconds": round(seconds, 2),
            "size_mb": round(Path(path).stat().st_size / 2**20, 2),
            "op_types": sorted({n.op_type for n in proto.graph.node}),
            "inputs": {"images": ["batch", 3, "128*h_cells", "128*w_cells"], "image_sizes": ["batch", 2],
                       "pixels": "0-255 RGB, zero padding; the model normalizes"},
            "outputs": ["logits (batch, anchors, classes)", "deltas (batch, anchors, 4)"],
            "versions": {"onnx": onnx.__version__, "torch": torch.__version__}}


def ort_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session over ``path`` (``threads``: intra-op threads; None: its default)."""
    require_onnx()
    import onnxruntime as ort  # noqa: PLC0415 (optional extra)

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(session: Any, images: torch.Tensor, image_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, deltas) of a padded 0-255 RGB image batch and its (B, 2) image sizes, as CPU tensors."""
    feeds = {"images": images.detach().float().cpu().numpy(),
             "image_sizes": torch.as_tensor(image_sizes, dtype=torch.int64).cpu().numpy()}
    logits, deltas = session.run(["logits", "deltas"], feeds)
    return torch.from_numpy(logits), torch.from_numpy(deltas)
