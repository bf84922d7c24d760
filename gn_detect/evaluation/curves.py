"""A run's training curves figure (the run folder's curves.png): training loss terms, learning
rate and AP / AP50 of every evaluation against the iteration, from its metrics.jsonl records.

matplotlib through an Agg canvas of its own, as the report's other figures."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gn_detect.evaluation.figures import iteration_axis, iteration_line, save_figure

__all__ = ["curve_series", "plot_run_curves"]

# (panel title, y label, record type, the keys drawn (None: every key starting with "loss"), y scale)
PANELS = (
    ("training loss", "loss", "train", None, 1.0),
    ("learning rate", "lr", "train", ("lr",), 1.0),
    ("evaluation", "AP (%)", "eval", ("AP", "AP50"), 100.0),
)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curve_series(records: list[dict]) -> list[dict]:
    """Per panel of :data:`PANELS`: ``{"title", "ylabel", "series": [{"name", "iter", "value"}]}``
    with the records' finite values (scaled), one point per iteration (the last record of an
    iteration wins: a resumed run may repeat one)."""
    panels = []
    for title, ylabel, kind, keys, scale in PANELS:
        of_kind = [r for r in records if r.get("type") == kind and _number(r.get("iter"))]
        names = keys or sorted({k for r in of_kind for k in r if k.startswith("loss")},
                               key=lambda k: (k != "loss", k))
        series = []
        for name in names:
            points = {int(r["iter"]): float(r[name]) * scale for r in of_kind if _number(r.get(name))}
            if points:
                iters = sorted(points)
                series.append({"name": name, "iter": iters, "value": [points[i] for i in iters]})
        panels.append({"title": title, "ylabel": ylabel, "series": series})
    return panels


def plot_run_curves(path: Path, records: list[dict], title: str = "") -> dict:
    """Writes the three panels of :func:`curve_series` side by side to ``path`` (a panel without
    records says so); returns ``{"file", "panels"}`` with each series' name and number of points."""
    panels = curve_series(records)
    fig = Figure(figsize=(13.0, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for s in panel["series"]:
            iteration_line(ax, s["iter"], s["value"], label=s["name"])
        if panel["series"]:
            iteration_axis(ax, [i for s in panel["series"] for i in s["iter"]])
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {panel['title']} records", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("iteration (0-based index of the last completed step)", fontsize=8)
        ax.set_ylabel(panel["ylabel"])
        ax.set_ylim(bottom=0)  # loss, LR and AP are never negative
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return {"file": Path(path).name,
            "panels": [{"title": p["title"], "series": [{"name": s["name"], "points": len(s["iter"])}
                                                          for s in p["series"]]} for p in panels]}
