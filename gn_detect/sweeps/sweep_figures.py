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

from gn_detect.evaluation.figures import iteration_axis, iteration_line, save_figure

from .collect import Run
from .compare import optimizer_groups, optimizer_key
from .summary import display_scale, group_cell, row_name

_SPLIT_FIELDS = ("mode", "world_size", "ims_per_device", "ims_per_batch", "max_iter")


def _new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    save_figure(fig, path)


def label_colors(labels: list[str]) -> dict[str, Any]:
    uniq = sorted(set(labels))
    cmap = colormaps["tab10" if len(uniq) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(uniq)}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v)


def band_rows(rows: list[dict]) -> list[dict]:
    """The references drawn as horizontal bands: settings without batch statistics in an optimizer
    group whose batch-statistics settings span two or more images-per-group values (an emulated
    study: one optimizer batch, the BN group varied). Elsewhere (the per-device study, where each
    optimizer batch has one group size) a reference is a point at its images per device."""
    out = []
    for group in optimizer_groups(rows).values():
        if len({r["ims_per_group"] for r in group if not r["reference"]}) >= 2:
            out += [r for r in group if r["reference"]]
    return out


def band_series(rows: list[dict], metric: str = "AP") -> list[dict]:
    """One band per :func:`band_rows` row with the metric: mean, std, n and the seed values;
    named by its label (and its optimizer batch when the sweep has several)."""
    bands = [r for r in band_rows(rows) if _finite(r[f"{metric}_mean"])]
    several = len(optimizer_groups(rows)) > 1
    out = []
    for r in sorted(bands, key=lambda r: (r["setting"], str(optimizer_key(r)))):
        name = row_name(r, [b for b in bands if optimizer_key(b) == optimizer_key(r)])
        if several:
            name += f", {r['ims_per_batch']} img/step"
        out.append({"name": name, "setting": r["setting"], "kind": "band", "ims_per_batch": r["ims_per_batch"],
                    "mean": r[f"{metric}_mean"], "std": r[f"{metric}_std"], "n": r[f"{metric}_n"],
                    "values": _seed_values(r, metric)})
    return out


def ap_series(rows: list[dict], metric: str = "AP") -> list[dict]:
    """Lines for AP vs images per normalization group: one per setting label, split further (by
    mode, then world size, ...) only where a label has two rows at the same x. References drawn
    as bands (:func:`band_rows`) are left out."""
    series = []
    banded = {id(r) for r in band_rows(rows)}
    rows = [r for r in rows if id(r) not in banded]
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
                "kind": "line",
                "x": [r["ims_per_group"] for r in prows],
                "mean": [r[f"{metric}_mean"] for r in prows],
                "std": [r[f"{metric}_std"] for r in prows],
                "n": [r[f"{metric}_n"] for r in prows],
                "values": [_seed_values(r, metric) for r in prows],
            })
    return series


def _seed_values(row: dict, metric: str) -> list[float]:
    """The finite per-seed values of a row's metric (raw scale)."""
    return [float(v) for v in row.get(f"{metric}_values", []) if _finite(v)]


def _log2_axis(ax, xs: list) -> None:
    """A log2 x axis whose ticks are the actual values, written as plain numbers."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(xs))
    ax.set_xticks(ticks)
    ax.set_xticklabels([fmt_tick(t) for t in ticks])
    ax.minorticks_off()
    if len(ticks) == 1:  # one x: room either side, so the error bar and the seed dots stand apart
        ax.set_xlim(ticks[0] / 2 ** 0.5, ticks[0] * 2 ** 0.5)


def fmt_tick(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def ap_vs_batch_figure(rows: list[dict], metric: str = "AP") -> tuple[Figure, list[dict], float]:
    """The figure of ``plot_ap_vs_batch`` (not saved), its series and the plotted scale: per line,
    mean ± std error bars and a dot per seed, lines dodged sideways a little so they do not hide
    each other at one x; per reference (:func:`band_series`) a horizontal band mean ± std across
    the whole x range with its mean as a dashed line and its seed dots at the right edge."""
    series = ap_series(rows, metric)
    bands = band_series(rows, metric)
    scale = display_scale(rows, metric)
    colors = label_colors([s["setting"] for s in series + bands])
    linestyles = ["-", "--", ":", "-."]
    fig = _new_figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    seen: dict[str, int] = {}
    for k, s in enumerate(series):
        i = seen.get(s["setting"], 0)
        seen[s["setting"]] = i + 1
        dodge = 2 ** (0.05 * (k - (len(series) - 1) / 2))
        x = np.asarray(s["x"], dtype=float) * dodge
        m = np.asarray(s["mean"], dtype=float) * scale
        sd = np.nan_to_num(np.asarray(s["std"], dtype=float), nan=0.0) * scale
        c = colors[s["setting"]]
        ax.errorbar(x, m, yerr=sd, marker="o", color=c, linestyle=linestyles[i % len(linestyles)], capsize=4,
                    label=f"{s['name']} (mean ± std)")
        px = [xi * 2 ** 0.03 for xi, vals in zip(x, s["values"]) for _ in vals]  # beside the bar
        py = [v * scale for vals in s["values"] for v in vals]
        ax.scatter(px, py, s=18, color=c, alpha=0.8, edgecolors="0.1", linewidths=0.5, zorder=3)
    for b in bands:
        c = colors[b["setting"]]
        m = b["mean"] * scale
        sd = b["std"] * scale if _finite(b["std"]) else 0.0
        ax.axhspan(m - sd, m + sd, color=c, alpha=0.18, linewidth=0, gid=f"band:{b['name']}")
        ax.axhline(m, color=c, linestyle="--", linewidth=1.5, gid=f"band-mean:{b['name']}",
                   label=f"{b['name']} (reference: no batch statistics, mean ± std)")
        vals = [v * scale for v in b["values"]]  # seed dots at the right edge (x in axes coordinates)
        ax.scatter([0.985] * len(vals), vals, s=18, color=c, alpha=0.8, edgecolors="0.1", linewidths=0.5,
                   zorder=3, transform=ax.get_yaxis_transform(), clip_on=False)
    if series or bands:
        xs = [x for s in series for x in s["x"]] or [r["ims_per_group"] for r in band_rows(rows)
                                                     if r["ims_per_group"] is not None]
        if xs:
            _log2_axis(ax, xs)
        ax.legend(fontsize=8, title="dots: one per seed", title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no finished runs with AP", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("images per normalization group")
    unit = " (%)" if scale == 100.0 else ""
    ax.set_ylabel(f"{metric}{unit}, mean ± std over seeds")
    ax.set_title(f"{metric} vs images per normalization group")
    ax.grid(True, alpha=0.3)
    return fig, series + bands, scale


def plot_ap_vs_batch(rows: list[dict], path: Path, metric: str = "AP") -> dict:
    fig, series, scale = ap_vs_batch_figure(rows, metric)
    _save(fig, path)
    return {
        "file": path.name,
        "title": f"{metric} vs images per normalization group",
        "x": "ims_per_group",
        "y": metric,
        "y_scale": scale,  # plotted = value × y_scale (100: a fraction shown in percent)
        # lines: a point per images-per-group value; bands: one value drawn across the x range
        "series": [s if s["kind"] == "band" else
                   {k: s[k] for k in ("name", "setting", "kind", "x", "mean", "std", "n", "values")}
                   | {"points": len(s["x"])} for s in series],
    }


def setting_tick(row: dict, rows: list[dict]) -> str:
    """Bar label: setting, images per group, and the mode where not a plain single process."""
    s = f"{row['setting']}\n{group_cell(row)} img/grp"
    if row["mode"] != "single process":
        s += f"\n{row['mode']}"
    same = [r for r in rows if r["setting"] == row["setting"] and r["ims_per_group"] == row["ims_per_group"]
            and r["mode"] == row["mode"]]
    if len(same) > 1:
        s += f"\nws={row['world_size']} ipd={row['ims_per_device']} it={row['max_iter']}"
    return s


def _undefined_bar(ax, x: float, width: float, color: Any, height: float = 1.0) -> None:
    """An undefined value (e.g. precision with no predictions, 0/0): an empty hatched bar over
    the whole range (``height``) with "n/a" on it, never a bar of height 0."""
    ax.bar([x], [height], width, fill=False, hatch="//", edgecolor=color, linewidth=0.8, alpha=0.5)
    ax.text(x, height / 2, "n/a", ha="center", va="center", fontsize=9, color="0.15",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})


def bars_with_seeds(ax, xs: np.ndarray, rows: list[dict], metric: str, scale: float, width: float,
                    color: Any, label: str) -> dict:
    """Bars of the per-setting means with ± std error bars and a dot per seed (jittered across
    the bar); an undefined mean is an empty hatched n/a bar (:func:`_undefined_bar`, as tall as
    the tallest defined bar or ``scale``). Returns the series description and the top value."""
    means = np.asarray([r[f"{metric}_mean"] if _finite(r[f"{metric}_mean"]) else np.nan for r in rows],
                       dtype=float) * scale
    stds = np.nan_to_num(np.asarray([r[f"{metric}_std"] if _finite(r[f"{metric}_std"]) else np.nan
                                     for r in rows], dtype=float), nan=0.0) * scale
    ok = np.isfinite(means)
    values = [_seed_values(r, metric) for r in rows]
    top = float((means[ok] + stds[ok]).max()) if ok.any() else 0.0
    top = max([top] + [v * scale for vals in values for v in vals])
    if ok.any():
        ax.bar(xs[ok], means[ok], width, yerr=stds[ok], capsize=3, label=label, color=color, alpha=0.85,
               error_kw={"elinewidth": 1.2, "ecolor": "0.15"})
    for xi in xs[~ok]:
        _undefined_bar(ax, float(xi), width, color, max(top, scale))
    px = [xi + width * 0.3 * (j / max(1, len(vals) - 1) - 0.5) for xi, vals in zip(xs, values)
          for j in range(len(vals))]
    py = [v * scale for vals in values for v in vals]
    ax.scatter(px, py, s=12, color="0.1", alpha=0.7, edgecolors="white", linewidths=0.4, zorder=3)
    desc = {"name": metric, "points": int(ok.sum()), "settings": [r["setting"] for r in rows],
            "mean": [r[f"{metric}_mean"] for r in rows], "std": [r[f"{metric}_std"] for r in rows],
            "values": values, "undefined": [r["setting"] for r, good in zip(rows, ok) if not good]}
    return desc | {"top": top}


def label_pr_bars_figure(rows: list[dict]) -> tuple[Figure, list[dict]]:
    """The figure of ``plot_label_pr_bars`` (not saved) and its series."""
    metrics = (("label_precision", "label precision"), ("label_recall", "label recall"))
    scale = min(display_scale(rows, m) for m, _ in metrics)
    fig = _new_figure(max(6.4, 0.9 * len(rows) + 2), 4.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    width = 0.38
    out_series = []
    top = 1.05 * scale if scale == 100.0 else 1.05
    for j, (m, title) in enumerate(metrics):
        desc = bars_with_seeds(ax, x + (j - 0.5) * width, rows, m, scale, width, ("tab:blue", "tab:orange")[j], title)
        top = max(top, desc.pop("top") * 1.05)
        out_series.append(desc | {"y_scale": scale})
    ax.set_xticks(x)
    ax.set_xticklabels([setting_tick(r, rows) for r in rows], fontsize=7)
    ax.set_ylim(0, top)
    ax.set_ylabel("%s, mean ± std over seeds (dots: seeds)" % ("percent" if scale == 100.0 else "value"))
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


MEM_KIND_TITLES = {"cuda_allocated": "CUDA allocated", "process_rss": "process RSS"}


def speed_memory_figure(rows: list[dict]) -> tuple[Figure, list[dict]]:
    """Two panels, training images/s and peak memory (MB, of the kind the runs recorded: CUDA
    allocated or process RSS) per setting: mean ± std bars with a dot per seed."""
    fig = _new_figure(max(7.0, 1.2 * len(rows) + 3), 4.6)
    x = np.arange(len(rows))
    kinds = sorted({k for r in rows for k in str(r.get("peak_mem_kind") or "unknown").split("/")})
    kind_text = ", ".join(MEM_KIND_TITLES.get(k, k) for k in kinds) or "kind not recorded"
    panels = (("ims_per_sec", "training images / s", "tab:green"),
              ("peak_mem_mb", f"peak memory (MB, {kind_text})", "tab:purple"))
    series = []
    for j, (m, ylabel, color) in enumerate(panels):
        ax = fig.add_subplot(1, 2, j + 1)
        desc = bars_with_seeds(ax, x, rows, m, 1.0, 0.6, color, ylabel)
        top = desc.pop("top")
        ax.set_ylim(0, (top if top > 0 else 1.0) * 1.1)  # all n/a: room for the n/a bars (height 1)
        ax.set_xticks(x)
        ticks = [setting_tick(r, rows) + (f"\n{r.get('peak_mem_kind')}" if m == "peak_mem_mb" and len(kinds) > 1
                                           else "") for r in rows]
        ax.set_xticklabels(ticks, fontsize=7)
        ax.set_ylabel(ylabel + ", mean ± std")
        ax.set_title(ylabel.split(" (")[0] + " per setting (dots: seeds)", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        if not rows:
            ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
        series.append(desc | {"y": m, "ylabel": ylabel})
    return fig, series


def plot_speed_memory(rows: list[dict], path: Path) -> dict:
    fig, series = speed_memory_figure(rows)
    _save(fig, path)
    return {"file": path.name, "title": "training speed and peak memory per setting", "x": "setting",
            "y": "ims_per_sec / peak_mem_mb", "series": series}


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
        iteration_line(ax, it, loss, color=colors[name], alpha=0.8, label=legend,
                       linestyle="-" if r.state == "done" else "--")
        series.append({"name": f"{name} | seed {r.seed} | {r.rel_dir}", "setting": name, "seed": r.seed,
                       "run_dir": r.rel_dir, "state": r.state, "points": int(np.isfinite(loss).sum())})
    if runs:
        iteration_axis(ax, [p[0] for r in runs for p in r.train])
        ax.legend(fontsize=7, title="setting (dashed: not done)", title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no training records", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iteration (0-based index of the last completed step)")
    ax.set_ylabel("training loss")
    ax.set_title("training loss, one line per run")
    ax.grid(True, alpha=0.3)
    return fig, series


def plot_loss_curves(runs: list[Run], path: Path) -> dict:
    """Training loss of every run with train records; one colour per setting (label, images per
    group, mode), dashed when the run is not done (failed, running); a marker per record when a
    run has few (gn_detect/evaluation/figures.py: iteration_line)."""
    fig, series = loss_curves_figure(runs)
    _save(fig, path)
    return {"file": path.name, "title": "training loss curves", "x": "iter", "y": "loss", "series": series}
