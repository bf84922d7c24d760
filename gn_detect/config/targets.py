"""Which callables a composed config may name: a preset is data, so every ``_target_`` (Hydra
instantiates it: callbacks, launchers, sweepers) and every logging factory (``()`` and a handler's
``class`` in ``hydra.job_logging``/``hydra.hydra_logging``, which ``logging.config.dictConfig``
imports and calls) must be one the project itself names; anything else (``numpy.savetxt``,
``shutil.copyfile``, ``os.system``, ...) is refused by the pre-flight before anything runs. The
logging configs may not write elsewhere either: a handler's ``filename`` stays in the run folder
(``${hydra.runtime.output_dir}/...``, no ``..``) and an ``ext://`` value names only
``sys.stdout``/``sys.stderr``."""
from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["ALLOWED_TARGETS", "allowed_targets", "foreign_targets", "logging_writes"]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Hydra's own defaults (basic launcher and sweeper) and the submitit plugin's launchers, which the
# project's configs shadow but a user may still pick from the plugin; the rest come from configs/.
ALLOWED_TARGETS: frozenset[str] = frozenset({
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
})
_TARGET_LINE = re.compile(r"^\s*_target_:\s*([\w.]+)\s*$", re.MULTILINE)


@lru_cache(maxsize=1)
def allowed_targets() -> frozenset[str]:
    """:data:`ALLOWED_TARGETS` and every ``_target_`` the project's own configs/ name."""
    named = {m for p in CONFIGS.rglob("*.yaml") for m in _TARGET_LINE.findall(p.read_text(encoding="utf-8"))}
    return ALLOWED_TARGETS | named


def _callables(node: Any, key: str, in_logging: bool) -> Iterator[tuple[str, str]]:
    """(dotted key, named callable) of every ``_target_`` and logging factory under ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{key}.{k}" if key else str(k)
            if k in ("_target_", "()") and isinstance(v, str):
                yield where, v
            elif in_logging and k == "class" and isinstance(v, str) and not v.startswith("logging."):
                yield where, v
            else:
                yield from _callables(v, where, in_logging or where in ("hydra.job_logging", "hydra.hydra_logging"))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _callables(v, f"{key}[{i}]", in_logging)


_LOGGING = ("job_logging", "hydra_logging")
_RUN_FOLDER = "${hydra.runtime.output_dir}/"
_STREAMS = ("ext://sys.stdout", "ext://sys.stderr")


def _logging_values(node: Any, key: str) -> Iterator[tuple[str, str, str]]:
    """(dotted key, leaf name, value) of every string leaf under a logging config."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _logging_values(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _logging_values(v, f"{key}[{i}]")
    elif isinstance(node, str):
        yield key, key.rsplit(".", 1)[-1], node


def logging_writes(cfg: DictConfig) -> list[str]:
    """One ``config error`` line per log file outside the run folder, or ``ext://`` object other than
    the two standard streams, in ``hydra.job_logging``/``hydra.hydra_logging``; [] when none."""
    hydra = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False).get("hydra") or {}
    problems = []
    for node in _LOGGING:
        for key, leaf, value in _logging_values(hydra.get(node), f"hydra.{node}"):
            outside = leaf == "filename" and (not value.startswith(_RUN_FOLDER) or ".." in value.split("/"))
            if outside or (value.startswith("ext://") and value not in _STREAMS):
                problems.append(f"config error: {key}: {value!r} would make logging write or call outside the run "
                                f"folder (a preset is data). Fix: log files go in the run folder "
                                f"({_RUN_FOLDER}<name>.log); streams are {' or '.join(_STREAMS)}")
    return problems


def foreign_targets(cfg: DictConfig) -> list[str]:
    """One ``config error`` line per callable of the composed config (its ``hydra`` node included)
    that is not the project's own; [] when every one is."""
    tree = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    allowed = allowed_targets()
    return [f"config error: {key}: {target!r} is not a callable gn-detect runs (a preset is data and may not name "
            "code to run). Fix: remove that entry from your config; only the project's own callbacks and launchers "
            "(the _target_s in configs/) and logging.* handlers are allowed"
            for key, target in _callables(tree, "", False) if target not in allowed] + logging_writes(cfg)
