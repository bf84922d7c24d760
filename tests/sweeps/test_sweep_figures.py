"""The sweep figures read through their matplotlib artists (lines, ticks, patches, texts), not pixels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle

from gn_detect.sweeps.collect import Run
from gn_detect.sweeps.collect import collect_runs
from gn_detect.sweeps.sweep_figures import (ap_vs_batch_figure, label_pr_bars_figure, loss_curves_figure, plot_label_pr_bars,
                                      plot_loss_curves, speed_memory_figure)
from gn_detect.sweeps.summary import aggregate

from .fabricate import make_config, write_run


def _run(train: list[tuple[int, float]], label: str = "gn", seed: int = 0, state: str = "done") -> Run:
    return Run(run_dir=Path(f"/x/{label}/{seed}"), rel_dir=f"{label}/{seed}", state=state, seed=seed,
               ims_per_device=2, ims_per_group=2, train=train, label=label)


def _tick_labels(ax) -> list[str]:
    ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]


def test_loss_curve_with_two_points_has_markers_and_integer_iterations(tmp_path: Path) -> None:
    fig, series = loss_curves_figure([_run([(18, 1.5), (20, 1.2)])])
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    assert line.get_marker() not in (None, "None", "", " ") and line.get_markersize() > 0
    assert list(line.get_xdata()) == [18, 20]  # the engine's 0-based iter, as written
    assert ax.get_xlim() == (18, 20)  # starts at the first iteration
    labels = _tick_labels(ax)
    assert labels and all(s.lstrip("−-").isdigit() for s in labels), labels  # "19", never "18.50"
    assert {float(s) for s in labels} <= {18.0, 19.0, 20.0}
    assert ax.xaxis.get_offset_text().get_text() == ""  # no "+1.8e1" offset
    assert series[0]["points"] == 2
    desc = plot_loss_curves([_run([(18, 1.5), (20, 1.2)])], tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000 and desc["series"][0]["points"] == 2


def test_loss_curve_single_point_and_long_runs() -> None:
    fig, _ = loss_curves_figure([_run([(0, 2.0)])])
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo < 0 < hi and ax.get_lines()[0].get_marker() == "o"
    assert _tick_labels(ax) == ["0"]
    long = [(i, 1.0 / (1 + i)) for i in range(0, 1000, 20)]  # 50 records: a line, no markers
    fig, _ = loss_curves_figure([_run(long, "bn"), _run([(0, 2.0), (1, 1.0)], "gn")])
    ax = fig.axes[0]
    markers = {ln.get_label(): ln.get_marker() for ln in ax.get_lines()}
    assert markers["bn @ 2 img/grp"] in (None, "None", "") and markers["gn @ 2 img/grp"] == "o"
    assert ax.get_xlim() == (0, 980)
    assert all(s.isdigit() for s in _tick_labels(ax))


def _row(setting: str, precision: float | None, recall: float | None) -> dict:
    return {"setting": setting, "ims_per_group": 2, "mode": "single process", "world_size": 1,
            "ims_per_device": 2, "ims_per_batch": 2, "max_iter": 10, "reference": False, "label_precision_mean": precision, "label_precision_std": None,
            "label_recall_mean": recall, "label_recall_std": 0.02}


def test_undefined_precision_is_a_hatched_na_bar_not_a_zero_bar(tmp_path: Path) -> None:
    rows = [_row("bn", 0.6, 0.4), _row("gn", math.nan, 0.0)]  # gn: no predictions (0/0); recall really 0
    fig, series = label_pr_bars_figure(rows)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    width = 0.38
    x_prec_gn, x_rec_gn = 1 - 0.5 * width, 1 + 0.5 * width

    def at(xc: float) -> list[Rectangle]:
        return [b for b in bars if b.get_x() + b.get_width() / 2 == pytest.approx(xc)]

    (undefined,) = at(x_prec_gn)
    assert not undefined.get_fill() and undefined.get_hatch() and undefined.get_height() > 0.5
    nas = [t for t in ax.texts if t.get_text() == "n/a"]
    assert len(nas) == 1 and nas[0].get_position()[0] == pytest.approx(x_prec_gn)
    (zero_recall,) = at(x_rec_gn)  # a defined 0 stays a (solid, empty-height) bar
    assert zero_recall.get_fill() and zero_recall.get_height() == 0
    (bn_prec,) = at(0 - 0.5 * width)
    assert bn_prec.get_fill() and bn_prec.get_height() == pytest.approx(60.0) and not bn_prec.get_hatch()  # percent
    # no solid zero-height bar where the precision is undefined
    assert not any(b.get_fill() and b.get_height() == 0 for b in at(x_prec_gn))
    assert series[0]["points"] == 1 and series[0]["undefined"] == ["gn"] and series[1]["undefined"] == []
    assert ax.get_ylim()[1] >= 100.0
    desc = plot_label_pr_bars(rows, tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000 and desc["series"][0]["points"] == 1
    assert np.isnan(desc["series"][0]["mean"][1])


# A 2-norm x 1-batch-size x 3-seed sweep: AP (fractions, as evaluation writes them) per seed.
SEED_AP = {"bn": [0.40, 0.42, 0.45], "gn": [0.48, 0.50, 0.49]}


def _three_seed_rows(tmp_path: Path) -> list[dict]:
    for norm, aps in SEED_AP.items():
        for seed, ap in enumerate(aps):
            final = {"AP": ap, "AP50": ap + 0.2, "label_precision": 0.7 + 0.01 * seed, "label_recall": 0.6 - 0.02 * seed,
                     "ims_per_sec": (100.0 if norm == "bn" else 75.0) + seed, "peak_mem_kind": "cuda_allocated",
                     "peak_mem_mb": (3700.0 if norm == "bn" else 7600.0) + 50 * seed}
            write_run(tmp_path / f"norm={norm},seed={seed}", make_config(norm, seed, 4), final=final)
    return aggregate([r for r in collect_runs(tmp_path) if r.state == "done"])


def _errorbar_lengths(ax) -> list[float]:
    """Lengths of the vertical error-bar segments of every ErrorbarContainer of ``ax``."""
    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for coll in c.lines[2]:
                assert isinstance(coll, LineCollection)
                out += [float(np.hypot(*(seg[1] - seg[0]))) for seg in coll.get_segments()]
    return out


def _seed_offsets(ax) -> list[np.ndarray]:
    return [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]


def test_ap_figure_shows_the_spread_at_one_batch_size(tmp_path: Path) -> None:
    rows = _three_seed_rows(tmp_path)
    fig, series, scale = ap_vs_batch_figure(rows)
    ax = fig.axes[0]
    assert scale == 100.0 and [s["x"] for s in series] == [[4], [4]]
    lengths = _errorbar_lengths(ax)
    assert len(lengths) == 2 and all(v > 0 for v in lengths)  # ± std drawn, not a bare dot
    expected = sorted(2 * 100 * float(np.std(v, ddof=1)) for v in SEED_AP.values())
    assert sorted(lengths) == pytest.approx(expected)
    offsets = _seed_offsets(ax)
    assert [len(o) for o in offsets] == [3, 3]  # a dot per seed, per setting
    assert sorted(np.concatenate([o[:, 1] for o in offsets])) == pytest.approx(
        sorted(100 * v for vals in SEED_AP.values() for v in vals))
    assert all(np.allclose(o[:, 0], 4, rtol=0.1) for o in offsets)
    assert ax.get_xscale() == "log" and "log2" not in ax.get_xlabel()
    assert ax.get_xlabel() == "images per normalization group" and _tick_labels(ax) == ["4"]
    out = tmp_path / "ap.png"
    fig.savefig(out)
    assert out.stat().st_size > 1000


def test_label_pr_and_speed_memory_bars_show_seeds(tmp_path: Path) -> None:
    rows = _three_seed_rows(tmp_path)
    fig, series = label_pr_bars_figure(rows)
    ax = fig.axes[0]
    assert len(_errorbar_lengths(ax)) == 4 and all(v > 0 for v in _errorbar_lengths(ax))
    assert [len(o) for o in _seed_offsets(ax)] == [6, 6]  # precision, recall: 3 seeds x 2 settings
    assert all(len(v) == 3 for s in series for v in s["values"])
    fig, series = speed_memory_figure(rows)
    assert len(fig.axes) == 2
    speed, mem = fig.axes
    assert "images / s" in speed.get_ylabel() and "MB, CUDA allocated" in mem.get_ylabel()
    for ax in (speed, mem):
        assert len(_errorbar_lengths(ax)) == 2 and all(v > 0 for v in _errorbar_lengths(ax))
        assert [len(o) for o in _seed_offsets(ax)] == [6]
    heights = [p.get_height() for p in mem.patches if isinstance(p, Rectangle)]
    assert heights == pytest.approx([3750.0, 7650.0])
    assert [s["y"] for s in series] == ["ims_per_sec", "peak_mem_mb"]
