"""The package's shape as docs/design.md states it: no import circle, one module per file name
(unless one concept's parts), the run folder's file names spelled in gn_detect/runs/ only, and
design.md's module list equal to the package."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gn_detect"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module ``name`` stands for (a module, or the package whose __init__ it is)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in the file, late imports included)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                if not t.startswith("gn_detect"):
                    continue
                dep = _resolve(t, modules)
                # a module naming its own package (the __init__) is the package's concern, not a circle
                if dep and dep != mod and not mod.startswith(dep + "."):
                    graph[mod].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


# Several modules of one name are allowed where they are one concept's parts.
SHARED_NAMES_ALLOWED: set[str] = {"__init__"}


def test_no_two_modules_share_a_file_name():
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        by_name[path.stem].append(path.relative_to(PACKAGE).as_posix())
    shared = {k: v for k, v in by_name.items() if len(v) > 1 and k not in SHARED_NAMES_ALLOWED}
    assert not shared, f"modules sharing a file name: {shared}"


RUN_FOLDER_NAMES = ("status.json", "last.pth", "model_final.pth", "metrics.jsonl", "curves.png", "pr_curves.png")


def test_run_folder_file_names_are_constants_of_runs_layout_only():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() == "runs/layout.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if any(re.fullmatch(rf"(.*/)?{re.escape(n)}", node.value) for n in RUN_FOLDER_NAMES) \
                        or node.value in ("last", "model_final"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, "run-folder names outside gn_detect/runs/layout.py:\n" + "\n".join(found)


def test_no_parent_parent_derives_a_run_folder_outside_runs():
    found = [str(p.relative_to(ROOT)) for p in sorted(PACKAGE.rglob("*.py"))
             if "runs" not in p.relative_to(PACKAGE).parts[:1] and ".parent.parent" in p.read_text()]
    assert not found, f"use gn_detect.runs.run_folder_of: {found}"


def test_design_md_lists_every_module_of_the_package():
    """docs/design.md's package map names every module (``folder/`` entries list their files in
    the text after them) and no module that does not exist."""
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("```")[1]
    named = set(re.findall(r"^ +([a-z_]+\.py) ", block, flags=re.M))  # an entry: indented, first on its line
    actual = {p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    actual |= {p.name for p in (ROOT / "hydra_plugins" / "gn_detect_slurm").glob("*.py") if p.name != "__init__.py"}
    assert not actual - named, f"modules missing from docs/design.md's package map: {sorted(actual - named)}"
    assert not named - actual, f"design.md names modules that do not exist: {sorted(named - actual)}"
