"""ConfigError and the one-line rendering of Hydra/OmegaConf composition errors."""
from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

from gn_detect.io import unwritable_file, unwritable_folder


class ConfigError(ValueError):
    """A bad config value, named by its dotted key, with the fix; raised before any data is read."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key = key
        super().__init__(f"{key}: {problem}" + (f"; {fix}" if fix else ""))


def check_output_path(key: str, raw: object, base: str | os.PathLike | None = None, *, file: bool = False) -> None:
    """Refuses (:class:`ConfigError`) an output path a command would write (``file``: one file,
    else a folder, made if missing) that cannot be written (gn_detect/io.py: unwritable_folder,
    unwritable_file), e.g. ``out_dir: cannot write to /x/y: /x is a file, not a folder; choose
    another out_dir``. Called by the commands' start-up checks, before any model is loaded."""
    why = (unwritable_file if file else unwritable_folder)(str(raw), base)
    if why is not None:
        raise ConfigError(key, f"cannot write to {raw}: {why}", f"choose another {key}")


_FULL_KEY = re.compile(r"full_key:\s*(\S+)")
_NOT_IN_STRUCT = re.compile(r"Key '([^']+)' (?:is not in struct|not in '(\w+)')")
_NOISE = ("full_key:", "object_type=", "reference_type=", "To append to your config use",
          "Set the environment variable HYDRA_FULL_ERROR")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def error_text(exc: BaseException) -> str:
    """``str(exc)``, except for an exception a DataLoader worker re-raised in the main process
    (its message is "Caught X in DataLoader worker process k." plus the worker's traceback):
    then the worker's own message, the traceback's last line without its type."""
    text = str(exc)
    if "Original Traceback (most recent call last)" not in text:
        return text
    last = [ln.strip() for ln in text.splitlines() if ln.strip()][-1]
    return re.sub(r"^[\w.]+: ", "", last, count=1)


def one_line(exc: BaseException) -> str:
    """One line naming the key and the problem, from a ConfigError or a Hydra/OmegaConf error
    (which spread the key, the reason and a hint over several lines and chained causes), or an
    error re-raised from a DataLoader worker (``error_text``)."""
    if isinstance(exc, ConfigError):
        return str(exc)
    worker = error_text(exc)
    if worker != str(exc):
        return worker
    text = "\n".join(str(e) for e in _chain(exc))
    key_match = _FULL_KEY.search(text)
    key = key_match.group(1) if key_match else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
    missing = _NOT_IN_STRUCT.search(text)
    if missing and key:
        return f"{key}: unknown key; check the spelling (`python tools/train.py --cfg job` lists every key)"
    reason = next((ln for ln in lines if not ln.startswith(("Error merging", "Could not override",
                                                              "Error composing"))), lines[0] if lines else "")
    if "could not be converted" in reason or "Value '" in reason:
        return f"{key}: {reason}" if key else reason
    first = lines[0] if lines else type(exc).__name__
    if key and key not in first:
        first = f"{key}: {first}"
    return first if reason == first or not reason else f"{first} ({reason})"


def exit_with_one_line(exc: BaseException) -> NoReturn:
    """A tool's refusal: ``gn-detect: <one line>`` on stderr and exit status 2
    (``HYDRA_FULL_ERROR=1`` re-raises with the full trace instead)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"gn-detect: {one_line(exc)}", file=sys.stderr)
    sys.exit(2)


def exit_failed(exc: BaseException, what: str) -> NoReturn:
    """A tool's failure while working (e.g. a write refused after the start-up checks passed):
    ``gn-detect: <what>: <one line>`` on stderr and exit status 1 (``HYDRA_FULL_ERROR=1`` re-raises)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"gn-detect: {what}: {one_line(exc)}", file=sys.stderr)
    sys.exit(1)
