"""A single run through tools/train.py ends with its curves figure (curves.png: loss, LR, AP
against the iteration, drawn from its metrics.jsonl) and with TensorBoard holding each class's AP
(the numbers of report.json), the PR figure (pr_curves.png's pixels) and its HParams row (its
command-line overrides, read back through TensorBoard's own HParams plugin)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gn_detect.evaluation.curves import curve_series
from gn_detect.image_io import read_rgb

from ._train_utils import read_metrics, records, run_train, shapes_root, tail, tb_scalars, tiny_overrides  # noqa: F401
from ..sweeps.test_report_hparams import _plugin_post


@pytest.fixture(scope="module")
def single_run(shapes_root, tmp_path_factory):  # noqa: F811
    cwd = tmp_path_factory.mktemp("curves")
    run_dir = cwd / "run"
    proc = run_train(tiny_overrides(shapes_root, **{"solver.max_iter": 6, "eval.period": 3,
                                                   "eval.full_reports": True, "hydra.run.dir": str(run_dir)}),
                     cwd=cwd)
    assert proc.returncode == 0, tail(proc)
    return run_dir


def test_a_single_run_writes_its_curves_figure(single_run):
    png = single_run / "curves.png"
    assert png.is_file() and read_rgb(png).size == (1300, 380)  # three panels side by side, 100 dpi
    recs = read_metrics(single_run)
    panels = {p["title"]: {s["name"]: s for s in p["series"]} for p in curve_series(recs)}
    train = records(single_run, "train")
    assert panels["training loss"]["loss"]["value"] == [r["loss"] for r in train]
    assert {"loss_cls", "loss_box"} <= set(panels["training loss"])
    assert panels["learning rate"]["lr"]["iter"] == list(range(6))
    assert panels["learning rate"]["lr"]["value"] == [r["lr"] for r in train]
    evals = records(single_run, "eval")
    assert [r["iter"] for r in evals] == [2, 5]  # the periodic evaluation and the final one
    assert panels["evaluation"]["AP"]["value"] == pytest.approx([100 * r["AP"] for r in evals])


def test_tensorboard_gets_per_class_ap_the_pr_figure_and_hparams(single_run):
    for folder, step in ((single_run / "eval" / "iter_0000002", 2), (single_run, 5)):
        report = json.loads((folder / "report.json").read_text())
        scored = [c for c in report["per_class"] if c["AP"] is not None]
        assert scored, report["per_class"]  # a class with an AP at each evaluation: something is checked
        for c in scored:
            assert tb_scalars(single_run, f"eval/per_class/AP/{c['name']}")[[2, 5].index(step)] == \
                (step, pytest.approx(c["AP"], abs=1e-6))
    acc = EventAccumulator(str(single_run / "tb"), size_guidance={"images": 0})
    acc.Reload()
    images = acc.Images("eval/pr_curves")
    assert [im.step for im in images] == [2, 5]
    final_png = np.asarray(read_rgb(single_run / "pr_curves.png"))
    assert (images[-1].height, images[-1].width) == final_png.shape[:2]

    exp = _plugin_post(single_run / "tb", "/experiment", {"experimentName": ""})
    names = {h["name"] for h in exp["hparamInfos"]}
    assert {"solver.max_iter", "eval.period", "data.ims_per_device"} <= names and "hydra.run.dir" not in names
    groups = _plugin_post(single_run / "tb", "/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"], "colParams": [],
        "startIndex": 0, "sliceSize": 10})["sessionGroups"]
    assert len(groups) == 1 and int(groups[0]["hparams"]["solver.max_iter"]) == 6
    ap = {m["name"]["tag"]: m["value"] for m in groups[0]["metricValues"]}["AP"]
    assert ap == pytest.approx(records(single_run, "final")[0]["AP"], abs=1e-6)
