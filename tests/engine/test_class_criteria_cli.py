"""eval.class_criteria through tools/train.py: a run tunes the named classes by their own criterion
(recorded in report.json); a misspelt class name or a bad criterion stops the command in one line,
exit status 2, before any folder is made."""
from __future__ import annotations

import json
import subprocess

import pytest

from ._train_utils import child_env, run_train, shapes_root, tail, tiny_overrides, train_cmd  # noqa: F401

OWN = "+eval.class_criteria={circle:{criterion:recall,target_recall:0.5},square:{criterion:precision,target_precision:0.8}}"


def test_a_run_tunes_the_named_classes_by_their_criterion(shapes_root, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    proc = run_train([*tiny_overrides(shapes_root, **{"hydra.run.dir": str(run_dir)}), OWN], cwd=tmp_path)
    assert proc.returncode == 0, tail(proc)
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["thresholds"]["class_criteria"] == {"circle": {"criterion": "recall", "target_recall": 0.5},
                                                   "square": {"criterion": "precision", "target_precision": 0.8}}
    crit = {c["name"]: c["criterion"] for c in rep["per_class"]}
    assert crit["circle"] == {"criterion": "recall", "target_recall": 0.5} and crit["star"] is None


@pytest.mark.parametrize("override, expected", [
    ("+eval.class_criteria={Circle:{criterion:f1}}", "eval.class_criteria: ['Circle'] are not classes of the data"),
    ("+eval.class_criteria={circle:{criterion:prec}}", "eval.class_criteria.circle.criterion: 'prec' is not one of"),
    ("+eval.class_criteria={circle:{criterion:recall}}", "eval.class_criteria.circle.target_recall: None with"),
    ("eval.criterion=recall", "eval.target_recall: None with eval.criterion=recall"),
])
def test_bad_class_criteria_are_refused_in_one_line(shapes_root, tmp_path, override, expected):  # noqa: F811
    run_dir = tmp_path / "run"
    proc = subprocess.run(train_cmd([*tiny_overrides(shapes_root, **{"hydra.run.dir": str(run_dir)}), override]),
                          cwd=str(tmp_path), env=child_env(HYDRA_FULL_ERROR="0"), timeout=120,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gn-detect:")]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], tail(proc)
    assert not run_dir.exists()
