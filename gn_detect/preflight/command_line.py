"""Composes and validates the command line's config(s) before Hydra creates a run folder, so a
mistyped key or value ends the command in about a second with one line (no traceback, no data
read, no folder made); a valid config then goes to the command's ``inspect`` (tools/train.py and
tools/evaluate.py: the annotation files, the model's layer shapes and the run folder, see
gn_detect/preflight/commands.py), and every problem found is one line, exit status 2, before any
image is opened. ``HYDRA_FULL_ERROR=1`` re-raises with the full trace instead.

Each config is validated with the world size its run will have (:func:`planned_world_size`), the
number the run's own check then uses, so the pre-flight and the run agree."""
from __future__ import annotations

import itertools
import json
import os
import sys
from typing import Callable, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from gn_detect.config.errors import one_line
from gn_detect.config.targets import foreign_targets

from gn_detect.data.json_checks import ParsedFiles

from .annotations import Parsed

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


# Hydra's options that take a value (``-cd DIR`` or ``--config-dir=DIR``).
_VALUE_FLAGS = {"-cd": "config_dir", "--config-dir": "config_dir", "-cn": "config_name", "--config-name": "config_name",
                "-cp": "config_path", "--config-path": "config_path", "--experimental-rerun": "rerun"}
MAX_PROBLEMS = 20

# validate(cfg, world_size): the command's config check (raises ConfigError)
Validate = Callable[[DictConfig, int], object]
# inspect(cfg, multirun, world_size, parsed) -> problem lines: the checks that read files (annotations,
# run folder), run once the config itself is valid (gn_detect/preflight/commands.py)
Inspect = Callable[[DictConfig, bool, int, Parsed], list[str]]


def planned_world_size(cfg: DictConfig, multirun: bool = True) -> int:
    """The number of processes a run of ``cfg`` will have: ``WORLD_SIZE`` under torchrun (or an
    srun step that sets it), else for a multirun the tasks a submitit launcher starts per job
    (``hydra.launcher.nodes`` x ``tasks_per_node``; a single run ignores the launcher), else 1."""
    if os.environ.get("WORLD_SIZE"):
        try:
            return max(1, int(os.environ["WORLD_SIZE"]))
        except ValueError:
            return 1
    launcher = OmegaConf.select(cfg, "hydra.launcher", default=None) if multirun and isinstance(cfg, DictConfig) else None
    if launcher is not None and "tasks_per_node" in launcher:
        try:
            return max(1, int(launcher.get("nodes") or 1) * int(launcher.tasks_per_node or 1))
        except (TypeError, ValueError):
            return 1
    return 1


def _parse_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, str], bool]:
    """(overrides, Hydra's value options by name, multirun) of a command line."""
    overrides, options, multirun = [], {}, False
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        flag, eq, value = a.partition("=")
        if flag in _VALUE_FLAGS and a.startswith("-"):
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            options[_VALUE_FLAGS[flag]] = value
        elif a in ("-m", "--multirun"):
            multirun = True
        elif not a.startswith("-"):
            overrides.append(a)
        i += 1
    return overrides, options, multirun


def _with_config_dir(overrides: list[str], config_dir: str) -> list[str]:
    """``--config-dir DIR`` as Hydra applies it: DIR searched after the package's configs (and
    after a ``hydra.searchpath`` the command line gives), as one ``hydra.searchpath`` override."""
    entry = f"file://{os.path.abspath(config_dir)}"
    paths, rest = [], []
    for ov in overrides:
        parsed = OverridesParser.create().parse_overrides([ov])[0]
        if parsed.get_key_element() == "hydra.searchpath":
            value = parsed.value()
            paths += [str(v) for v in value] if isinstance(value, list) else [str(value)]
        else:
            rest.append(ov)
    quoted = ",".join(json.dumps(p) for p in [*paths, entry])
    return [*rest, f"hydra.searchpath=[{quoted}]"]


def command_line_problems(config_dir: str, config_name: str, argv: Sequence[str], validate: Validate,
                          inspect: Inspect | None = None, parsed: Parsed | None = None) -> list[str]:
    """Every problem of the runs the command line would start, one line each (at most
    :data:`MAX_PROBLEMS`); [] when fine. A config that does not compose or validate is one
    ``config error`` (nothing is read then); a valid one goes on to ``inspect``. Honours
    ``--config-dir``/``-cd``, ``--config-name``/``-cn`` and ``hydra.searchpath`` as Hydra does.
    ``parsed`` collects what the inspection parsed (a single run's files for its dataset builds)."""
    if any(a.split("=")[0] in _INFO_FLAGS for a in argv):
        return []
    overrides, options, multirun = _parse_argv(argv)
    if "config_path" in options or "rerun" in options:
        return []  # another primary config folder or a rerun: Hydra itself reports its problems
    if options.get("config_dir"):
        if not os.path.isdir(options["config_dir"]):
            return [f"config error: --config-dir {options['config_dir']}: no such folder; give the folder that "
                    "holds your config groups (e.g. DIR/data/mine.yaml for data=mine)"]
        overrides = _with_config_dir(overrides, options["config_dir"])
    config_name = options.get("config_name") or config_name
    problems: list[str] = []
    parsed = parsed if parsed is not None else Parsed()
    if multirun:
        parsed.files = None  # a sweep's runs build their datasets later or elsewhere: keep nothing
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            for combo in _combinations(overrides, multirun):
                cfg = compose(config_name=config_name, overrides=combo, return_hydra_config=True)
                if foreign := foreign_targets(cfg):  # before anything else reads the config: nothing runs
                    return foreign
                world_size = planned_world_size(cfg, multirun)
                if inspect is None:
                    with open_dict(cfg):
                        del cfg["hydra"]
                validate(cfg, world_size)
                if inspect is not None:
                    where = f"[{' '.join(combo)}] " if multirun and len(combo) else ""
                    problems += [f"{where}{p}" for p in inspect(cfg, multirun, world_size, parsed)
                                 if f"{where}{p}" not in problems]
                if len(problems) >= MAX_PROBLEMS:
                    break
    except Exception as exc:  # noqa: BLE001 - every composition or validation error becomes one line
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        line = one_line(exc)
        if "Could not find" in line:
            line += ("; the shipped presets are in configs/<group>/, your own go in a folder given with "
                     "--config-dir DIR (DIR/<group>/<name>.yaml)")
        return [f"config error: {line}"]
    return problems


def check_command_line(config_dir: str, config_name: str, argv: Sequence[str], validate: Validate) -> str | None:
    """The first config problem of any run the command line would start, as one line; None when fine."""
    problems = command_line_problems(config_dir, config_name, argv, validate)
    return problems[0].removeprefix("config error: ") if problems else None


def preflight(config_dir: str, config_name: str, validate: Validate, inspect: Inspect | None = None) -> Parsed:
    """Exits with status 2 and one line per problem on stderr (``gn-detect: <kind> error: ...``, at
    most :data:`MAX_PROBLEMS`) when the command line's config, or what ``inspect`` reads, is unusable;
    else returns what it parsed (``files``: a single run's annotation files, for its dataset builds)."""
    parsed = Parsed(files=ParsedFiles())
    problems = command_line_problems(config_dir, config_name, sys.argv[1:], validate, inspect, parsed)
    for p in problems[:MAX_PROBLEMS]:
        print(f"gn-detect: {p}", file=sys.stderr)
    if len(problems) > MAX_PROBLEMS:
        print(f"gn-detect: ... and {len(problems) - MAX_PROBLEMS} more problems", file=sys.stderr)
    if problems:
        sys.exit(2)
    return parsed
