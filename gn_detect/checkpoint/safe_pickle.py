"""Reading a pickle as data: an unpickler that builds dicts, lists, tuples, strings, numbers and
numpy arrays, and refuses everything else before it is called.

A pickle names the callables it wants run (``GLOBAL``/``STACK_GLOBAL``); only these are handed
out: numpy's array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``,
protocol 5's ``_frombuffer``) and
``_codecs.encode`` (how Python 3 writes ``bytes`` at protocol 2). Any other name, and any
persistent id, raises :class:`UnsafePickleError` naming the file, so no code a file names runs.
Python 2 pickles (Detectron's cPickle files) are read with ``encoding="latin1"``, as numpy needs
for their array bytes.
"""
from __future__ import annotations

import _codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "load_pickle"]


class UnsafePickleError(ValueError):
    """The pickle asks for a callable that is not on the allow list."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric  # noqa: PLC0415 - numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # noqa: PLC0415
    allowed = {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar,  # noqa: SLF001
               "ndarray": np.ndarray, "dtype": np.dtype}
    out = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy"):
        for name, obj in allowed.items():
            out[(module, name)] = obj
    for module in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol 5: an array from its bytes
        out[(module, "_frombuffer")] = numeric._frombuffer  # noqa: SLF001
    return out


_ALLOWED: dict[tuple[str, str], Any] = {**_numpy_globals(), ("_codecs", "encode"): _codecs.encode}


class _DataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refused to unpickle: it asks to call {module}.{name}, and only dicts, lists, "
                "strings, numbers and numpy arrays are read from a weights file; fix: give a file that holds "
                "only weights (or convert it where you trust it: tools/convert_weights.py)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._path}: refused to unpickle: it references external objects "
                                "(a persistent id), which a plain weights pickle does not")


def load_pickle(path: str | Path) -> Any:
    """The first object pickled in ``path``, built from data only (module docstring)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return _DataUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken file: one line naming it
            raise ValueError(f"{path}: cannot read it: not a torch, safetensors or pickle file "
                             f"({type(e).__name__}: {e})") from None
