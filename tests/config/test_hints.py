"""A hint can only name options that exist. Every ``key=value`` a string of gn_detect/ or tools/
suggests with a dotted key (``solver.base_lr=0.01``) names a key of the schema (TrainConfig or
EvaluateConfig; ``hydra.*`` is Hydra's own); and in the errors of the run's entry points
(gn_detect/engine, gn_detect/config, tools/) a plain ``key=`` names a top-level key or a config
group, not a Python argument the user cannot set (e.g. ``strict=False``)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gn_detect.config import EvaluateConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((REPO / "gn_detect").rglob("*.py")), *sorted((REPO / "tools").glob("*.py"))]
ENTRY_POINTS = ("gn_detect/engine/", "gn_detect/config/", "tools/")
DOTTED = re.compile(r"(?<![\w.\-{/])([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)=(?!=)")
PLAIN = re.compile(r"(?<![\w.\-{/])([a-z_][a-z0-9_]*)=(?!=)")


def _keys(node: DictConfig, prefix: str = "") -> set[str]:
    out = set()
    for key in node.keys():
        value = node._get_node(key)
        out.add(f"{prefix}{key}")
        if isinstance(value, DictConfig) and not value._is_none():
            out |= _keys(value, f"{prefix}{key}.")
    return out


SCHEMA_KEYS = _keys(OmegaConf.structured(TrainConfig)) | _keys(OmegaConf.structured(EvaluateConfig))
GROUPS = {p.name for p in (REPO / "configs").iterdir() if p.is_dir()}


def _text(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with ``{}`` for each placeholder."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _strings(tree: ast.AST):
    for node in ast.walk(tree):
        text = _text(node)
        if text is not None:
            yield node.lineno, text


def _raised_strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield from _strings(node.exc)


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


def test_the_schema_walk_finds_nested_keys():
    assert {"solver.max_skipped_steps", "model.head.norm_opts.num_groups", "eval.split", "checkpoint"} <= SCHEMA_KEYS


def test_every_dotted_key_in_a_string_exists():
    unknown = []
    for path in SOURCES:
        for line, text in _strings(ast.parse(path.read_text())):
            for key in DOTTED.findall(text):
                if key not in SCHEMA_KEYS and not key.startswith("hydra."):
                    unknown.append(f"{_where(path, line)}: {key}=")
    assert not unknown, "strings name keys the schema does not have:\n" + "\n".join(unknown)


def test_entry_point_errors_name_only_settable_options():
    top = {k for k in SCHEMA_KEYS if "." not in k} | GROUPS
    unknown = []
    for path in SOURCES:
        if not str(path.relative_to(REPO)).startswith(ENTRY_POINTS):
            continue
        for line, text in _raised_strings(ast.parse(path.read_text())):
            unknown += [f"{_where(path, line)}: {key}=" for key in PLAIN.findall(text) if key not in top]
    assert not unknown, "errors suggest options that cannot be set:\n" + "\n".join(unknown)


def test_the_checks_catch_what_they_are_for():
    assert DOTTED.findall("set solver.nonexistent=1 or model.fpn.norm=gn") == ["solver.nonexistent", "model.fpn.norm"]
    assert PLAIN.findall("Pass strict=False to load") == ["strict"]
    assert "solver.nonexistent" not in SCHEMA_KEYS and "strict" not in SCHEMA_KEYS
