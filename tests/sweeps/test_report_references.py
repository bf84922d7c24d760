"""Batch-independent norms as references at every images-per-group value (issue 22), and a norm
registered at run time labelled by the report (issue 16), on fabricated run folders."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from gn_detect.norms import NormSpec, register_norm, unregister_norm
from gn_detect.sweeps import collect_runs, write_sweep_report
from gn_detect.sweeps.sweep_figures import ap_vs_batch_figure
from gn_detect.sweeps.summary import aggregate

from .fabricate import make_config, write_run

IMS_PER_DEVICE = 8
# AP (fractions) per setting for seeds 0 and 1. bn: batch statistics over 2, 4, 8 images of the
# same 8-image step; gn, gn_ws: none, so they are the references at every group size.
AP = {("bn", 2): [0.40, 0.42], ("bn", 4): [0.45, 0.46], ("bn", 8): [0.50, 0.52],
      ("gn", None): [0.47, 0.49], ("gn_ws", None): [0.44, 0.47]}
OTHER_BATCH_AP = [0.30, 0.31]  # gn at 16 images per step: another optimizer batch


def _final(ap: float) -> dict:
    return {"AP": ap, "AP50": ap + 0.2, "label_precision": 0.5 + ap / 2, "label_recall": 0.4 + ap / 3,
            "ims_per_sec": 10.0, "peak_mem_mb": 900.0}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("study")
    for (norm, x), aps in AP.items():
        for seed, ap in enumerate(aps):
            group = x if x is not None and x < IMS_PER_DEVICE else None
            write_run(sweep / f"{norm}_{x}_{seed}", make_config(norm, seed, IMS_PER_DEVICE, bn_group_size=group),
                      final=_final(ap))
    for seed, ap in enumerate(OTHER_BATCH_AP):
        write_run(sweep / f"gn16_{seed}", make_config("gn", seed, 16), final=_final(ap))
    res = write_sweep_report(sweep, sweep / "report", quiet=True)
    return sweep, res, (sweep / "report" / "comparison.md").read_text()


def _verdict(a: list[float], b: list[float]) -> str:
    """The seed-spread rule, from NumPy: |mean_a - mean_b| > std_a + std_b (ddof=1)."""
    diff = abs(np.mean(a) - np.mean(b))
    return "exceeds" if diff > np.std(a, ddof=1) + np.std(b, ddof=1) else "within"


def test_bn_at_each_group_size_is_compared_with_each_reference(study):
    _, res, text = study
    ap = {(c["a"], c["b"]): c for c in res["comparisons"] if c["metric"] == "AP"}
    for x, ref in itertools.product((2, 4, 8), ("gn", "gn_ws")):
        assert f"bn @{x} vs {ref}" in text
        c = ap[(f"bn @{x}", ref)]
        assert c["ims_per_group"] == x and c["kind"] == "vs reference"
        assert c["verdict"] == _verdict(AP[("bn", x)], AP[(ref, None)]), (x, ref)
        assert c["diff"] == pytest.approx(abs(np.mean(AP[("bn", x)]) - np.mean(AP[(ref, None)])))
    assert {v["verdict"] for v in ap.values()} == {"exceeds", "within"}  # both outcomes occur
    assert ap[("gn", "gn_ws")]["kind"] == "references"  # the references with each other, once
    # BN settings at different group sizes are not compared with each other
    assert not any(a.startswith("bn") and b.startswith("bn") for a, b in ap)


def test_another_optimizer_batch_is_never_compared_and_says_why(study):
    _, res, text = study
    assert {c["ims_per_batch"] for c in res["comparisons"]} == {IMS_PER_DEVICE}
    groups = text.split("## Optimizer groups (never compared with each other)")[1].split("\n## ")[0]
    assert "the optimizer batch sets the learning rate" in groups
    assert ("16 images per step (solver.ims_per_batch), 100 iterations: gn (compared with nothing: no other "
            "setting has this optimizer batch and schedule)") in groups
    assert "8 images per step (solver.ims_per_batch), 100 iterations: bn @2, bn @4, bn @8, gn, gn_ws" in groups


def test_tables_mark_references(study):
    sweep, res, _ = study
    refs = sorted((r["setting"], r["ims_per_batch"]) for r in res["rows"] if r["reference"])
    assert refs == [("gn", 8), ("gn", 16), ("gn_ws", 8)]
    md = (sweep / "report" / "summary.md").read_text()
    results = md.split("## Results (ready to paste)")[1].split("\n## ")[0]
    assert "| gn_ws | any | 8 | 2 | 45.5 ± 2.1 |" in results  # img/group any, img/step 8, n 2


def test_reference_bands_span_the_x_range(study):
    sweep, _, _ = study
    rows = aggregate([r for r in collect_runs(sweep) if r.state == "done"])
    fig, series, scale = ap_vs_batch_figure(rows)
    ax = fig.axes[0]
    fig.canvas.draw()
    line = next(s for s in series if s["kind"] == "line" and s["setting"] == "bn")
    assert line["x"] == [2, 4, 8]
    lo, hi = ax.get_xlim()
    assert lo < 2 and hi > 8
    axes_box = ax.get_window_extent()
    for ref in ("gn", "gn_ws"):
        (band,) = [p for p in ax.patches if str(p.get_gid()).startswith(f"band:{ref},")]
        box = band.get_window_extent()
        assert box.x0 <= axes_box.x0 + 0.5 and box.x1 >= axes_box.x1 - 0.5  # across the whole x range
        mean, std = np.mean(AP[(ref, None)]) * scale, np.std(AP[(ref, None)], ddof=1) * scale
        y0, y1 = (ax.transData.transform([(lo, mean - std), (lo, mean + std)])[:, 1])
        assert box.y0 == pytest.approx(y0, abs=0.5) and box.y1 == pytest.approx(y1, abs=0.5)
        (mean_line,) = [ln for ln in ax.lines if str(ln.get_gid()).startswith(f"band-mean:{ref},")]
        assert mean_line.get_ydata()[0] == pytest.approx(mean)
        assert ref in mean_line.get_label() and "reference" in mean_line.get_label()
    # gn at 16 images per step has no BN group axis beside it: a point at its device batch, no band
    assert [s["x"] for s in series if s["kind"] == "line" and s["setting"] == "gn"] == [[16]]
    figs = json.loads((sweep / "report" / "figures.json").read_text())
    assert sorted(s["name"] for s in figs["ap_vs_batch"]["series"] if s["kind"] == "band") == [
        "gn, 8 img/step", "gn_ws, 8 img/step"]


def test_a_registered_norm_is_labelled_without_editing_the_report(tmp_path):
    register_norm("toyscale", NormSpec("tests.unused:builder", normalizes=False, foldable=True, label="toy",
                                       tokens=("toyscale", "toy")))
    try:
        head = {"head": ("toyscale", False)}
        write_run(tmp_path / "a", make_config("gn", 0, 4, components=head), final=_final(0.3))
        named = make_config("gn", 0, 4, components=head)
        named["norm"]["name"] = "gn_toy"
        write_run(tmp_path / "b", named, final=_final(0.3))
        labels = {r.rel_dir: r.label for r in collect_runs(tmp_path)}
        # "gn" does not name the toy norm (it normalizes nothing, but a name need only omit such norms);
        # "gn_toy" names both; the derived label uses the table's label
        assert labels == {"a": "gn", "b": "gn_toy"}
        write_run(tmp_path / "c", make_config("bn", 0, 4, components={"backbone": ("toyscale", False)}),
                  final=_final(0.3))
        assert {r.rel_dir: r.label for r in collect_runs(tmp_path)}["c"] == "toy/none/none"
        res = write_sweep_report(tmp_path, tmp_path / "out", quiet=True)
        assert all(r["reference"] for r in res["rows"])  # no batch statistics anywhere
    finally:
        unregister_norm("toyscale")


def test_runs_without_speed_or_memory_records_still_get_every_figure(tmp_path):
    """All-n/a bars (no ims_per_sec / peak_mem_mb in the final records) are drawn, not a crash."""
    for seed in (0, 1):
        write_run(tmp_path / f"gn_{seed}", make_config("gn", seed, 4), final={"AP": 0.3 + 0.01 * seed})
    res = write_sweep_report(tmp_path, tmp_path / "out", quiet=True)
    assert (tmp_path / "out" / "speed_memory.png").stat().st_size > 1000
    assert res["figures"]["speed_memory"]["series"][0]["undefined"] == ["gn"]
