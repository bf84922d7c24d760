"""tools/evaluate.py re-evaluates a saved checkpoint with the model it describes and writes the
same report as training; its headline equals the training run's final evaluation; a missing
checkpoint is one line naming it."""
from __future__ import annotations

import json
import subprocess
import sys

from gn_detect.engine.trainer import train

from ._train_utils import REPO, child_env, one_thread, read_status, records, shapes_root, tail, tiny_cfg  # noqa: F401


def test_evaluate_checkpoint_reproduces_final_metrics(shapes_root, tmp_path, one_thread):  # noqa: F811
    run_dir = tmp_path / "run"
    train(tiny_cfg(shapes_root, **{"solver.max_iter": 3}), run_dir, base_dir=tmp_path)  # in-process
    assert read_status(run_dir)["state"] == "done"
    final = records(run_dir, "final")[-1]

    out = tmp_path / "eval_out"
    cmd = [sys.executable, str(REPO / "tools" / "evaluate.py"),
           f"checkpoint={run_dir / 'checkpoints' / 'model_final.pth'}", f"out_dir={out}"]
    ev = subprocess.run(cmd, cwd=str(tmp_path), env=child_env(), timeout=120,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert ev.returncode == 0, tail(ev)
    for name in ("report.json", "report.md", "per_class.csv", "pr_curves.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    # Same weights, data, split and tuning seed: the numbers must agree with the run's own evaluation.
    keys = ("AP", "AP50", "label_precision", "label_recall", "box_precision", "box_recall")
    for key in keys:
        got, want = report["headline"][key], final[key]
        assert (got is None) == (want is None), key
        if got is not None:
            assert abs(got - want) < 1e-9, (key, got, want)
    assert not report["thresholds"]["tuned_on_eval_split"]  # eval.tune=half carried over from the run


def test_evaluate_exits_1_when_no_image_of_the_split_can_be_read(shapes_root, tmp_path, one_thread):  # noqa: F811
    """With data.verify_images=false nothing is opened before inference; if then every image of
    the split is unreadable there are no numbers: one line, exit status 1 (not 0 with an n/a table)."""
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(shapes_root, root)
    run_dir = tmp_path / "run"
    train(tiny_cfg(root, **{"solver.max_iter": 2, "data.verify_images": False}), run_dir, base_dir=tmp_path)
    val = [p for p in root.rglob("*") if p.suffix in (".png", ".jpg") and "val" in str(p.relative_to(root))]
    assert val
    for p in val:
        p.write_bytes(b"not an image")
    cmd = [sys.executable, str(REPO / "tools" / "evaluate.py"),
           f"checkpoint={run_dir / 'checkpoints' / 'model_final.pth'}", f"out_dir={tmp_path / 'eval_out'}"]
    env = {k: v for k, v in child_env().items() if k != "HYDRA_FULL_ERROR"}
    ev = subprocess.run(cmd, cwd=str(tmp_path), env=env, timeout=120, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
    assert ev.returncode == 1, tail(ev)
    last = ev.stdout.strip().splitlines()[-1]
    assert last.startswith("gn-detect: evaluation failed: none of the") and "Traceback" not in ev.stdout, tail(ev)


def test_evaluate_missing_checkpoint_is_one_line(tmp_path):
    missing = tmp_path / "nope" / "model_final.pth"
    cmd = [sys.executable, str(REPO / "tools" / "evaluate.py"), f"checkpoint={missing}", f"out_dir={tmp_path / 'o'}"]
    env = child_env()
    env.pop("HYDRA_FULL_ERROR")  # what a user sees
    ev = subprocess.run(cmd, cwd=str(tmp_path), env=env, timeout=120,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert ev.returncode == 2
    assert ev.stdout.strip() == (f"gn-detect: checkpoint not found: {missing}; "
                                 "give checkpoint=<run folder>/checkpoints/model_final.pth"), ev.stdout
