"""The sweep's figures (matplotlib, Agg canvas; pyplot and the global backend are not touched).

Each ``plot_*`` function writes a PNG and returns a description of its series
(``{"file", "title", "x", "y", "series": [{"name", "points", ...}]}``) that goes into
``figures.json``, so tests and scripts can check a figure without reading pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from .collect import Run

_SPLIT_FIELDS = ("mode", "world_size", "ims_per_device", "ims_per_batch", "max_iter")


def _new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)


def label_colors(labels: list[str]) -> dict[str, Any]:
    uniq = sorted(set(labels))
    cmap = colormaps["tab10" if len(uniq) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(uniq)}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v)


def ap_series(rows: list[dict], metric: str = "AP") -> list[dict]:
    """Lines for AP vs images per normalization group: one per setting label, split further (by
    mode, then world size, ...) only where a label has two rows at the same x."""
    series = []
    labels = sorted({r["setting"] for r in rows})
    for lab in labels:
        lrows = [r for r in rows if r["setting"] == lab and r["ims_per_group"] is not None
                 and _finite(r[f"{metric}_mean"])]
        if not lrows:
            continue
        for k in range(len(_SPLIT_FIELDS) + 1):
            fields = _SPLIT_FIELDS[:k]
            parts: dict[tuple, list[dict]] = {}
            for r in lrows:
                parts.setdefault(tuple(r[f] for f in fields), []).append(r)
            if all(len({r["ims_per_group"] for r in p}) == len(p) for p in parts.values()):
                break
        for sub, prows in sorted(parts.items(), key=lambda kv: str(kv[0])):
            prows = sorted(prows, key=lambda r: r["ims_per_group"])
            name = lab
            if fields:
                name += " (" + ", ".join(f"{f}={v}" if f != "mode" else str(v)
                                        for f, v in zip(fields, sub)) + ")"
            series.append({
                "name": name,
                "setting": lab,
                "x": [r["ims_per_group"] for r in prows],
                "mean": [r[f"{metric}_mean"] for r in prows],
                "std": [r[f"{metric}_std"] for r in prows],
                "n": [r[f"{metric}_n"] for r in prows],
            })
    return series


def plot_ap_vs_batch(rows: list[dict], path: Path, metric: str = "AP") -> dict:
    series = ap_series(rows, metric)
    colors = label_colors([s["setting"] for s in series])
    linestyles = ["-", "--", ":", "-."]
    fig = _new_figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    seen: dict[str, int] = {}
    xs_all: set = set()
    for s in series:
        i = seen.get(s["setting"], 0)
        seen[s["setting"]] = i + 1
        x = np.asarray(s["x"], dtype=float)
        m = np.asarray(s["mean"], dtype=float)
        sd = np.nan_to_num(np.asarray(s["std"], dtype=float), nan=0.0)
        c = colors[s["setting"]]
        ax.plot(x, m, marker="o", color=c, linestyle=linestyles[i % len(linestyles)], label=s["name"])
        ax.fill_between(x, m - sd, m + sd, color=c, alpha=0.2, linewidth=0)
        xs_all.update(s["x"])
    if xs_all:
        ax.set_xscale("log", base=2)
        ticks = sorted(xs_all)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished runs with AP", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("images per normalization group (log2)")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"{metric} vs batch size per normalization group")
    ax.grid(True, alpha=0.3)
    _save(fig, path)
    return {
        "file": path.name,
        "title": f"{metric} vs images per normalization group",
        "x": "ims_per_group",
        "y": metric,
        "series": [{"name": s["name"], "setting": s["setting"], "points": len(s["x"]), "x": s["x"],
                    "mean": s["mean"], "std": s["std"], "n": s["n"]} for s in series],
    }


def setting_tick(row: dict, rows: list[dict]) -> str:
    """Bar label: setting, images per group, and the mode where not a plain single process."""
    s = f"{row['setting']}\n{row['ims_per_group']} img/grp"
    if row["mode"] != "single process":
        s += f"\n{row['mode']}"
    same = [r for r in rows if r["setting"] == row["setting"] and r["ims_per_group"] == row["ims_per_group"]
            and r["mode"] == row["mode"]]
    if len(same) > 1:
        s += f"\nws={row['world_size']} ipd={row['ims_per_device']} it={row['max_iter']}"
    return s


def _undefined_bar(ax, x: float, width: float, color: Any) -> None:
    """An undefined value (e.g. precision with no predictions, 0/0): an empty hatched bar over
    the whole [0, 1] range with "n/a" on it, never a bar of height 0."""
    ax.bar([x], [1.0], width, fill=False, hatch="//", edgecolor=color, linewidth=0.8, alpha=0.5)
    ax.text(x, 0.5, "n/a", ha="center", va="center", fontsize=9, color="0.15",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})


def label_pr_bars_figure(rows: list[dict]) -> tuple[Figure, list[dict]]:
    """The figure of ``plot_label_pr_bars`` (not saved) and its series."""
    metrics = (("label_precision", "label precision"), ("label_recall", "label recall"))
    ticks = [setting_tick(r, rows) for r in rows]
    fig = _new_figure(max(6.4, 0.9 * len(rows) + 2), 4.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    width = 0.38
    out_series = []
    top = 1.05
    for j, (m, title) in enumerate(metrics):
        means = np.asarray([r[f"{m}_mean"] if r[f"{m}_mean"] is not None else np.nan for r in rows], dtype=float)
        stds = np.nan_to_num(np.asarray([r[f"{m}_std"] if r[f"{m}_std"] is not None else np.nan for r in rows],
                                        dtype=float), nan=0.0)
        color = ("tab:blue", "tab:orange")[j]
        xs = x + (j - 0.5) * width
        ok = np.isfinite(means)
        if ok.any():
            ax.bar(xs[ok], means[ok], width, yerr=stds[ok], capsize=3, label=title, color=color, alpha=0.85)
            top = max(top, float((means[ok] + stds[ok]).max()) + 0.05)
        for xi in xs[~ok]:
            _undefined_bar(ax, float(xi), width, color)
        out_series.append({"name": m, "points": int(ok.sum()), "settings": [r["setting"] for r in rows],
                           "mean": [r[f"{m}_mean"] for r in rows], "std": [r[f"{m}_std"] for r in rows],
                           "undefined": [r["setting"] for r, good in zip(rows, ok) if not good]})
    ax.set_xticks(x)
    ax.set_xticklabels(ticks, fontsize=7)
    ax.set_ylim(0, top)
    ax.set_ylabel("mean ± std over seeds")
    ax.set_title("label precision and recall per setting")
    if len(rows):
        handles, names = ax.get_legend_handles_labels()
        if any(s["undefined"] for s in out_series):
            handles.append(Rectangle((0, 0), 1, 1, fill=False, hatch="//", edgecolor="0.4"))
            names.append("n/a: undefined (0/0, e.g. precision with no predictions)")
        ax.legend(handles, names, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, axis="y", alpha=0.3)
    return fig, out_series


def plot_label_pr_bars(rows: list[dict], path: Path) -> dict:
    """Label precision and recall per setting; an undefined mean (no seed had a defined value)
    is an empty hatched bar marked n/a."""
    fig, out_series = label_pr_bars_figure(rows)
    _save(fig, path)
    return {"file": path.name, "title": "label precision and recall per setting", "x": "setting",
            "y": "label precision / recall", "series": out_series}


def run_setting_name(r: Run) -> str:
    s = f"{r.label} @ {r.ims_per_group} img/grp"
    return s if r.mode == "single process" else f"{s} ({r.mode})"


MARKER_MAX_POINTS = 40  # runs with at most this many training records get a marker per record


def loss_curves_figure(runs: list[Run]) -> tuple[Figure, list[dict]]:
    """The figure of ``plot_loss_curves`` (not saved) and its series."""
    runs = [r for r in runs if r.train and r.label]
    runs = sorted(runs, key=lambda r: (r.label, r.ims_per_group or 0, r.mode, r.seed or 0, r.rel_dir))
    names = [run_setting_name(r) for r in runs]
    order = list(dict.fromkeys(names))
    cmap = colormaps["tab10" if len(order) <= 10 else "tab20"]
    colors = {n: cmap(i % cmap.N) for i, n in enumerate(order)}
    fig = _new_figure(7.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    series = []
    labelled: set = set()
    for r, name in zip(runs, names):
        pts = sorted(r.train)
        it = np.asarray([p[0] for p in pts], dtype=float)
        loss = np.asarray([p[1] for p in pts], dtype=float)
        legend = name if name not in labelled else None
        labelled.add(name)
        ax.plot(it, loss, color=colors[name], linewidth=1.0, alpha=0.8, label=legend,
                linestyle="-" if r.state == "done" else "--",
                marker="o" if len(pts) <= MARKER_MAX_POINTS else None, markersize=4, clip_on=False)
        series.append({"name": f"{name} | seed {r.seed} | {r.rel_dir}", "setting": name, "seed": r.seed,
                       "run_dir": r.rel_dir, "state": r.state, "points": int(np.isfinite(loss).sum())})
    if runs:
        _iteration_axis(ax, [p[0] for r in runs for p in r.train])
        ax.legend(fontsize=7, title="setting (dashed: not done)", title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no training records", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iteration (0-based index of the last completed step)")
    ax.set_ylabel("training loss")
    ax.set_title("training loss, one line per run")
    ax.grid(True, alpha=0.3)
    return fig, series


def _iteration_axis(ax, iters: list[int]) -> None:
    """x from the first to the last recorded iteration (half a step either side of a single
    one), integer ticks written as integers, no offset or scientific notation."""
    lo, hi = int(min(iters)), int(max(iters))
    if hi > lo:
        ax.set_xlim(lo, hi)
    else:
        ax.set_xlim(lo - 0.5, lo + 0.5)
    # a short span gets every iteration as a tick (MaxNLocator falls back to fractions there)
    ax.xaxis.set_major_locator(FixedLocator(range(lo, hi + 1)) if hi - lo <= 10 else MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0f}"))
    ax.yaxis.get_major_formatter().set_useOffset(False)


def plot_loss_curves(runs: list[Run], path: Path) -> dict:
    """Training loss of every run with train records; one colour per setting (label, images per
    group, mode), dashed when the run is not done (failed, running); a marker per record when a
    run has few (at most MARKER_MAX_POINTS)."""
    fig, series = loss_curves_figure(runs)
    _save(fig, path)
    return {"file": path.name, "title": "training loss curves", "x": "iter", "y": "loss", "series": series}
