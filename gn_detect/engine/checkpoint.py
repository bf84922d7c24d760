"""Atomic checkpoints, RNG state capture and the trainer's :class:`Checkpointer`.

File layout written by :class:`Checkpointer` (one dict, ``torch.save``)::

    {"format": "gn_detect.checkpoint/1", "iteration": int, "model": state_dict,
     "optimizer": ..., "scheduler": ..., "rng": rank-0 RNG state, "world_size": int,
     "time": float, "extra": {keyword arguments of save(); the trainer stores "skipped_steps",
     "skipped_in_a_row" and under fp16 "grad_scaler" (the loss scale's state)}, "description": {"config", "model", "version"}}

(model-only files such as ``model_final.pth`` have no optimizer, scheduler or rng; the
``description`` -- resolved config, model signature, package version -- is in every file the
trainer writes, see gn_detect/engine/description.py.)

Every value is a tensor, dict, list, tuple, str, int, float, bool or None, so every file is read
with ``torch.load(weights_only=True)`` (:func:`load_checkpoint`, the only loader): a file whose
unpickling would import and call anything else (e.g. a planted ``last.pth``) is refused before
any of it runs.

plus, under DDP, ``<name>.rank<k>.rng.pth`` = ``{"iteration", "rng"}`` written by rank k > 0.

``iteration`` is the number of iterations *completed*: a resumed loop starts at it.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gn_detect.engine import dist as gdist
from gn_detect.io import DiskFullError, is_disk_full
from gn_detect.runs import RunFolder
from gn_detect.runs.layout import CHECKPOINT_SUFFIX

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "unwrap_model",
    "Checkpointer",
]

FORMAT = "gn_detect.checkpoint/1"
_TMP_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, wrong format)."""


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) on Windows.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically.

    The bytes go to a temporary file in the same directory (same filesystem, so
    ``os.replace`` is an atomic rename), are flushed and fsynced, then renamed over
    ``path``. A crash or kill at any point leaves either the old file or the new one,
    never a truncated one; the temporary file is removed when Python gets the chance.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # KeyboardInterrupt / SystemExit too: never leave partial temp files
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, DiskFullError) and is_disk_full(exc):
            raise DiskFullError(path) from exc
        raise
    _fsync_dir(path.parent)
    return path


_GLOBAL = re.compile(r"GLOBAL (\S+)")
# torch's explanation around the actual cause of a refused weights_only load
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _load_error(path: Path, exc: Exception) -> CheckpointError:
    """One line naming the file and why it cannot be used."""
    text = str(exc)
    code = _GLOBAL.search(text)
    if isinstance(exc, pickle.UnpicklingError) and code:
        return CheckpointError(
            f"checkpoint {path} refused: unpickling it would import and call {code.group(1)} (code, not "
            "tensors, numbers, strings, lists or dicts), so nothing of it was run. Use a checkpoint written by "
            "gn-detect (a run's checkpoints/last.pth or model_final.pth)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_BOILERPLATE)]
    cause = f"{type(exc).__name__}: {lines[0]}" if lines else f"{type(exc).__name__}: empty or cut off"
    return CheckpointError(
        f"checkpoint {path} is unreadable ({cause}); it is probably truncated or corrupt (e.g. copied while "
        "being written). Point to another checkpoint file; if it is a run's last.pth, delete or rename it to "
        "restart that run without it")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint dict, read with ``weights_only=True`` (see the module docstring); a missing,
    unreadable or refused file raises one line naming the file and the cause."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every cause becomes one line naming the file
        raise _load_error(path, exc) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Python ``random``, NumPy global, torch CPU and (if available) current-CUDA-device RNG.

    Python's and NumPy's states are stored as plain lists, so the file does not pickle NumPy
    arrays (whose pickles differ between NumPy 1 and 2) and loads with ``weights_only=True``.
    Only the *current* CUDA device is captured: under DDP each rank owns one device, and
    touching the others would create contexts on them.
    """
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), py_gauss],
        "numpy": [kind, key.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; missing entries are left alone."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        kind, key, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.as_tensor(state["cuda"], dtype=torch.uint8).cpu())


# --------------------------------------------------------------------------- Checkpointer


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel, so state-dict keys have no ``module.``."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


class Checkpointer:
    """Saves and restores model + optimizer + scheduler + RNG + ``extra`` as one file.

    Files live in ``run_dir/checkpoints/<name>.pth``; the trainer keeps ``last.pth``
    (periodic, overwritten atomically) and ``model_final.pth``.

    Distributed: :meth:`save` is *not* a collective (no rank can hang in it). Rank 0 writes
    the main file; every other rank that calls it writes only its own small RNG side file,
    so per-rank random streams resume exactly when all ranks call it (a rank that did not
    just starts with an unrestored stream, with a warning). ``extra`` comes from rank 0, so it
    must describe state that is the same on all ranks (the trainer's ``skipped_steps``). The
    data position needs no entry: the sampler is positioned from ``iteration``, and model
    buffers (BN statistics, the loss normalizer's EMA) are in the model's state dict.
    ``description`` (plain data, gn_detect/engine/description.py) goes into every main file.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        description: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.dir = self.folder.checkpoints
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.description = description
        if gdist.is_main_process():
            self._remove_stale_tmp()

    def _remove_stale_tmp(self) -> None:
        # Left by a process killed mid-save; the real files are intact.
        if self.dir.is_dir():
            for tmp in self.dir.glob(f".*{_TMP_SUFFIX}"):
                logger.info("removing interrupted checkpoint write %s", tmp)
                tmp.unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        return self.folder.checkpoint(name.removesuffix(CHECKPOINT_SUFFIX))

    @property
    def last_path(self) -> Path:
        return self.folder.last

    def _rng_path(self, name: str, rank: int) -> Path:
        return self.folder.rank_rng(name.removesuffix(CHECKPOINT_SUFFIX), rank)

    def has_checkpoint(self) -> bool:
        return self.last_path.is_file()

    def save(self, name: str, iteration: int, *, model_only: bool = False, **extra: Any) -> Path | None:
        """Write ``checkpoints/<name>.pth``; returns its path on rank 0, None elsewhere.

        ``model_only=True`` (e.g. for ``model_final``) leaves out optimizer, scheduler and
        RNG: a smaller file meant for evaluation or fine-tuning, not for resuming.
        """
        rank = gdist.get_rank()
        if rank != 0:
            if not model_only:
                save_checkpoint(self._rng_path(name, rank), {"iteration": int(iteration), "rng": capture_rng_state()})
            return None
        state: dict[str, Any] = {
            "format": FORMAT,
            "iteration": int(iteration),
            "model": unwrap_model(self.model).state_dict(),
            "world_size": gdist.get_world_size(),
            "time": time.time(),
            "extra": extra,
        }
        if self.description is not None:
            state["description"] = self.description
        if not model_only:
            state["rng"] = capture_rng_state()
            if self.optimizer is not None:
                state["optimizer"] = self.optimizer.state_dict()
            if self.scheduler is not None:
                state["scheduler"] = self.scheduler.state_dict()
        path = save_checkpoint(self.path(name), state)
        logger.info("saved checkpoint %s (iteration %d)", path, iteration)
        return path

    def load_model(self, path: str | os.PathLike, *, strict: bool = True,
                   state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load only the model weights from one of our checkpoints or a bare state dict
        (``state``: the file's content, when already loaded)."""
        ckpt = load_checkpoint(path) if state is None else state
        self._load_weights(ckpt, path, strict=strict)
        return ckpt

    def _load_weights(self, ckpt: dict[str, Any], path: str | os.PathLike, *, strict: bool) -> None:
        sd = ckpt["model"] if "model" in ckpt and isinstance(ckpt["model"], dict) else ckpt
        sd = {k.removeprefix("module."): v for k, v in sd.items()}  # tolerate DDP-saved files
        try:
            result = unwrap_model(self.model).load_state_dict(sd, strict=strict)
        except RuntimeError as exc:
            detail = " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
            detail = detail if len(detail) <= 300 else detail[:297] + "..."
            raise CheckpointError(
                f"weights in {path} do not fit the model ({detail}); it was trained with another model "
                "(model.* norms, depth, head) or other categories. Use a checkpoint of this model config, "
                "or init_weights=null"
            ) from exc
        if result.missing_keys or result.unexpected_keys:
            logger.warning(
                "loaded %s with missing keys %s and unexpected keys %s",
                path, result.missing_keys, result.unexpected_keys,
            )

    def load(self, path: str | os.PathLike, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Full restore (model, optimizer, scheduler, this rank's RNG); returns extra + iteration.
        ``state``: the content of ``path``, when the caller already loaded it."""
        ckpt = load_checkpoint(path) if state is None else state
        if ckpt.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a gn_detect training checkpoint; cannot resume from it")
        self._load_weights(ckpt, path, strict=True)
        if self.optimizer is not None:
            if "optimizer" not in ckpt:
                raise CheckpointError(f"{path} has no optimizer state (a model-only file?); cannot resume")
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and "scheduler" in ckpt:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self._restore_rank_rng(ckpt, Path(path))
        return {**ckpt.get("extra", {}), "iteration": int(ckpt["iteration"])}

    def _restore_rank_rng(self, ckpt: dict[str, Any], path: Path) -> None:
        rank = gdist.get_rank()
        rng = ckpt.get("rng")
        if rank != 0:
            side = path.parent / f"{path.stem}.rank{rank}.rng.pth"
            try:
                side_ckpt = load_checkpoint(side) if side.is_file() else {}
            except CheckpointError as exc:  # only the random streams are lost: do not stop
                logger.warning("%s", exc)
                side_ckpt = {}
            # A side file from another save (kill between the two writes) must not be mixed in.
            rng = side_ckpt.get("rng") if side_ckpt.get("iteration") == ckpt["iteration"] else None
        if rng:
            restore_rng_state(rng)
        else:
            logger.warning("no RNG state for rank %d matching %s; random streams are not resumed", rank, path)

    def resume_or_load(self, path: str | os.PathLike | None = None, *, resume: bool = True,
                       state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume from ``checkpoints/last.pth`` if it exists (and ``resume``); otherwise load
        model weights from ``path`` if given (initialization, iteration restarts at 0).
        ``state``: the content of the file that will be used, when the caller already loaded it.

        Returns the saved ``extra`` dict plus ``"iteration"`` (0 when starting fresh), so the
        loop starts at ``out["iteration"]``.
        """
        if resume and self.has_checkpoint():
            logger.info("resuming from %s", self.last_path)
            return self.load(self.last_path, state)
        if path is not None:
            logger.info("initializing model weights from %s", path)
            self.load_model(path, state=state)
        return {"iteration": 0}
