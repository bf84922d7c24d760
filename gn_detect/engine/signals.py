"""Stop signals of a whole process group (``timeout``, ``scancel``, Ctrl-C in a terminal).

Such a signal reaches the data-loader workers as well as the main process. A worker that dies
of it takes the run down with a traceback before the main process could save anything, so the
workers ignore SIGTERM and SIGINT (:func:`ignore_stop_signals`, every loader's ``worker_init_fn``
in the engine): the main process alone handles them (gn_detect/engine/hooks.py: SignalHandler),
saves ``last.pth`` and ends the loader, which shuts its workers down. The process then exits
with :func:`exit_code` (128 + the signal number, as a shell reports a process killed by it), so
a scheduler does not record success.

One SIGTERM still ends a worker: its parent's. Python's multiprocessing terminates daemon
workers left at interpreter exit with SIGTERM and then waits for them, and PyTorch ends workers
that way too; a worker deaf to it would hang the exit forever. So a worker blocks both signals
and one thread takes them with ``sigwaitinfo``, exiting (as PyTorch's own handler does) only
when the sender is the parent. Where ``sigwaitinfo`` does not exist (macOS) the worker ignores
SIGINT only and keeps PyTorch's SIGTERM handler.

Pre-emption (:func:`preempt_signal`, SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` names another): the
signal Slurm sends (through submitit) before a time limit or a pre-emption. The trainer stops on it
as on SIGTERM (``last.pth``, status ``interrupted``), then :func:`hand_over_preemption` calls the
handler submitit had installed, which re-submits the same job and exits; the new job resumes from
``last.pth``. Workers ignore it (Slurm may signal every process of the job step).
"""
from __future__ import annotations

import os
import signal
import threading

__all__ = ["EXIT_INTERRUPTED", "STOP_SIGNALS", "StopRequested", "exit_code", "hand_over_preemption", "ignore_stop_signals",
           "preempt_signal"]

STOP_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
# Exit status of a run stopped early without a signal (a hook's request_stop): not a success.
EXIT_INTERRUPTED = 1


class StopRequested(BaseException):
    """A stop signal that arrived while the trainer evaluates (periodically or at the end): raised
    from the signal handler so a long evaluation ends at once (a BaseException, so no ``except
    Exception`` on the way swallows it); the trainer ends the run ``interrupted`` with ``exit_code``."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason, self.exit_code = reason, exit_code


def exit_code(signum: int | None) -> int:
    """128 + ``signum`` (143 for SIGTERM, 130 for SIGINT); :data:`EXIT_INTERRUPTED` without one."""
    return EXIT_INTERRUPTED if signum is None else 128 + int(signum)


def preempt_signal() -> int:
    """The pre-emption signal: submitit's, SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` names another
    (``USR1`` or ``SIGUSR1``); an unknown name is an error naming the variable."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    sig = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
    if not isinstance(sig, signal.Signals):
        raise ValueError(f"SUBMITIT_PREEMPT_SIGNAL={name} is not a signal name; unset it or give one such as USR2")
    return int(sig)


def hand_over_preemption(signum: int) -> bool:
    """After a run stopped on the pre-emption signal ``signum`` and saved its checkpoint: call the
    handler installed before training (submitit's, which re-submits the job and exits). False when
    there is none (not a submitit job): the caller treats the stop as an ordinary interruption."""
    handler = signal.getsignal(signum)
    if not callable(handler):
        return False
    handler(signum, None)
    return True


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A data-loader ``worker_init_fn``: SIGTERM and SIGINT from anyone but the worker's parent
    are ignored in the worker (see the module docstring); the parent's SIGTERM ends it. The
    pre-emption signal is ignored."""
    signal.signal(preempt_signal(), signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return
    # Threads started from here on inherit the mask: the signals reach only the thread below.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_take_stop_signals, args=(os.getppid(),), name="gn-detect-stop-signals",
                     daemon=True).start()


def _take_stop_signals(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid == parent:
            os._exit(0)
