"""House rules that review alone would let drift: short functions, no dead top-level modules."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gn_detect"
MAX_FUNCTION_LINES = 80


def test_no_function_in_the_package_is_longer_than_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_every_module_states_its_job_in_a_docstring():
    missing = [str(p.relative_to(PACKAGE.parent)) for p in sorted(PACKAGE.rglob("*.py"))
               if p.read_text().strip() and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"


# The norm table (gn_detect/norms.py) is the one place that names norms; the schema's defaults
# are the other place a name may stand (issue 16).
NORM_LITERALS = {"bn", "syncbn", "gn", "gn_ws", "affine", "ln"}
MAY_NAME_NORMS = {"norms.py", "config/schema.py"}


def test_norm_names_stand_only_in_the_norm_table_and_the_schema():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in MAY_NAME_NORMS:
            continue
        tree = ast.parse(path.read_text())
        # pieces of f-strings are text (f"bn{i}" is a torchvision key), not a norm named in code
        in_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if id(node) in in_fstrings:
                continue
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NORM_LITERALS:
                found.append(f"gn_detect/{rel}:{node.lineno} {node.value!r}")
    assert not found, "ask gn_detect.norms (norm_spec) instead of naming norms:\n" + "\n".join(found)


def test_the_config_package_imports_without_torch():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import gn_detect.config, gn_detect.norms"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
