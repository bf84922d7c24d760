"""Stop signals of a whole process group (``timeout``, ``scancel``, Ctrl-C in a terminal).

Such a signal reaches the data-loader workers as well as the main process. A worker that dies
of it takes the run down with a traceback before the main process could save anything, so the
workers ignore SIGTERM and SIGINT (:func:`ignore_stop_signals`, installed by
:func:`shield_loader_workers` as the loader's ``worker_init_fn``): the main process alone
handles them (gn_detect/engine/hooks.py: SignalHandler), saves ``last.pth`` and ends the loader,
which shuts its workers down. The process then exits with :func:`exit_code` (128 + the signal
number, as a shell reports a process killed by it), so a scheduler does not record success.
"""
from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["EXIT_INTERRUPTED", "STOP_SIGNALS", "exit_code", "ignore_stop_signals", "shield_loader_workers"]

STOP_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
# Exit status of a run stopped early without a signal (a hook's request_stop): not a success.
EXIT_INTERRUPTED = 1


def exit_code(signum: int | None) -> int:
    """128 + ``signum`` (143 for SIGTERM, 130 for SIGINT); :data:`EXIT_INTERRUPTED` without one."""
    return EXIT_INTERRUPTED if signum is None else 128 + int(signum)


def ignore_stop_signals(worker_id: int = 0, previous: Callable[[int], Any] | None = None) -> None:
    """A data-loader ``worker_init_fn``: SIGTERM and SIGINT are ignored in the worker (PyTorch
    installs its own SIGTERM handler before calling it, which this replaces), then ``previous``
    (the loader's own ``worker_init_fn``, if it had one) runs."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if previous is not None:
        previous(worker_id)


def shield_loader_workers(loader: Any) -> Any:
    """Makes ``loader``'s worker processes ignore the stop signals (see the module docstring);
    an existing ``worker_init_fn`` still runs after. Returns ``loader``. Call it before the
    loader's first ``iter()``: workers started before keep the default behaviour."""
    if getattr(loader, "num_workers", 0) > 0:
        previous = loader.worker_init_fn
        if not (isinstance(previous, functools.partial) and previous.func is ignore_stop_signals):
            loader.worker_init_fn = functools.partial(ignore_stop_signals, previous=previous)
    return loader
