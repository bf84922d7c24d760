"""Composes and validates the command line's config(s) before Hydra creates a run folder, so a
mistyped key or value ends the command in about a second with one line (no traceback, no data
read, no folder made). ``HYDRA_FULL_ERROR=1`` re-raises with the full trace instead."""
from __future__ import annotations

import itertools
import os
import sys
from typing import Callable, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from .errors import one_line

# Arguments after which Hydra only prints (help, the config, shell completion): nothing to check.
_INFO_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion",
               "-p", "--package", "--resolve", "--version")
MAX_COMBINATIONS = 64


def _combinations(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists of the runs a command starts (a sweep's first MAX_COMBINATIONS)."""
    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for ov in parsed:
        if ov.is_sweep_override():
            key = ov.get_key_element()
            choices.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            choices.append([ov.input_line])
    return [list(c) for c in itertools.islice(itertools.product(*choices), MAX_COMBINATIONS)]


def check_command_line(config_dir: str, config_name: str, argv: Sequence[str],
                       validate: Callable[[DictConfig], object]) -> str | None:
    """The first problem of any run the command line would start, as one line; None when fine."""
    if any(a.split("=")[0] in _INFO_FLAGS for a in argv):
        return None
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            for combo in _combinations(overrides, multirun):
                validate(compose(config_name=config_name, overrides=combo))
    except Exception as exc:  # noqa: BLE001 - every composition or validation error becomes one line
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        return one_line(exc)
    return None


def preflight(config_dir: str, config_name: str, validate: Callable[[DictConfig], object]) -> None:
    """Exits with status 2 and one line on stderr when the command line's config is invalid."""
    problem = check_command_line(config_dir, config_name, sys.argv[1:], validate)
    if problem is not None:
        print(f"gn-detect: config error: {problem}", file=sys.stderr)
        sys.exit(2)
