"""Figures of the evaluation report: PR curves, and example images with their GT and predicted
boxes labelled without overlaps; the iteration axis and lines every curve over training shares
(a run's curves.png, the sweep report's loss_curves.png).

matplotlib through an Agg canvas of its own (works without a display; pyplot and the global
backend are not touched, so importing this module changes nothing for the caller).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator
from matplotlib.transforms import Bbox
from gn_detect.image_io import read_rgb
from gn_detect.io import atomic_open
from gn_detect.evaluation.events import Counts, Events
from gn_detect.evaluation.label_places import free_spot
from gn_detect.evaluation.matching import FP, IGNORED, BoxMatches, GroundTruth

__all__ = ["class_colors", "draw_examples", "iteration_axis", "iteration_line", "label_extent", "plot_examples",
           "plot_pr_curves", "pr_curves_figure"]

log = logging.getLogger(__name__)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, **savefig: Any) -> None:
    """``fig`` written to ``path`` atomically (the format from its suffix): what is there, a
    symlink included, is replaced, never written through; a failed save leaves it as it was."""
    with atomic_open(path, binary=True) as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", **savefig)


def plot_pr_curves(path: Path, *args: Any, **kwargs: Any) -> list[int]:
    """``pr_curves_figure`` saved to ``path``; returns the class indices drawn."""
    fig, ks = pr_curves_figure(*args, **kwargs)
    save_figure(fig, path, dpi=90)
    return ks


def pr_curves_figure(
    names: Sequence[str],
    box: Events,
    label: Events,
    thresholds: np.ndarray,
    ap: Sequence[float],
    max_classes: int = 20,
    points: tuple[Counts, Counts] | None = None,
) -> tuple[Figure, list[int]]:
    """Box- and label-level PR curves of the classes with most GT boxes (at most
    ``max_classes``), with the operating point at each class's threshold: counted on the same
    events, or given as ``points`` = (box counts, label counts), e.g. counted on other images
    than the curves. One legend for the figure whatever is drawn (box solid, label dashed, the
    operating point), saying when no class has a box or label curve. Returns the figure and the
    class indices drawn."""
    order = np.argsort(-box.num_pos, kind="stable")
    ks = [int(k) for k in order if box.num_pos[k] > 0][:max_classes]
    if not ks:
        ks = [int(k) for k in order[:max_classes]]
    n = max(len(ks), 1)
    ncols = min(5, n)
    nrows = math.ceil(n / ncols)
    legend_cols = 3 if ncols >= 3 else 1  # a narrow figure stacks the legend's entries
    legend_h = 0.15 + 0.17 * (3 // legend_cols)  # inches under the panels for the legend
    height = 3.0 * nrows + legend_h + 0.25
    fig = _new_figure(3.2 * ncols, height)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    bc, lc = points if points is not None else (box.counts_at(thresholds), label.counts_at(thresholds))
    for ax in axes.ravel()[len(ks):]:
        ax.axis("off")
    drawn = {"box": 0, "label": 0}
    for ax, k in zip(axes.ravel(), ks):
        for ev, counts, style, col, lab in (
            (box, bc, "-", "tab:blue", "box"),
            (label, lc, "--", "tab:orange", "label"),
        ):
            c = ev.curve(k)
            if len(c.thresholds) and c.num_pos:
                ax.plot(c.recall, c.precision, style, color=col, lw=1.2, label=lab)
                drawn[lab] += 1
            p, r = counts.precision[k], counts.recall[k]
            if not (np.isnan(p) or np.isnan(r)):
                ax.plot([r], [p], "o", ms=5, color=col)
        t = thresholds[k]
        t_s = "off" if not np.isfinite(t) else f"{t:.2f}"
        a = ap[k]
        a_s = "n/a" if a is None or (isinstance(a, float) and math.isnan(a)) else f"{a:.3f}"
        ax.set_title(f"{names[k]}\nAP {a_s}  thr {t_s}  #gt {int(box.num_pos[k])}", fontsize=8)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], ls="-", color="tab:blue", lw=1.2), Line2D([], [], ls="--", color="tab:orange", lw=1.2),
               Line2D([], [], ls="", marker="o", ms=5, color="0.3")]
    texts = [f"box level{'' if drawn['box'] else ': no box curves (no detections)'}",
             f"label level{'' if drawn['label'] else ': no label curves (no detections)'}",
             "operating point at the class threshold"]
    fig.legend(handles, texts, loc="lower center", ncol=legend_cols, fontsize=7, frameon=False)
    fig.supxlabel("recall", y=legend_h / height, va="bottom")
    fig.supylabel("precision")
    fig.tight_layout(rect=(0, (legend_h + 0.2) / height, 1, 1))
    return fig, ks


MARKER_MAX_POINTS = 40  # a line of at most this many records gets a marker per record


def iteration_line(ax, iters: Sequence[float], values: Sequence[float], **kwargs: Any) -> None:
    """One curve over training iterations: a thin line, a marker per record when it has few
    (at most MARKER_MAX_POINTS, so a run of a few records still shows its points)."""
    kwargs.setdefault("linewidth", 1.0)
    ax.plot(iters, values, marker="o" if len(iters) <= MARKER_MAX_POINTS else None, markersize=4, clip_on=False,
            **kwargs)


def iteration_axis(ax, iters: Sequence[int]) -> None:
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


EXAMPLE_DPI = 90
LABEL_FONTSIZE = 7
LABEL_GAP_PX = 1.0


def class_colors(num_classes: int) -> list[tuple[float, float, float, float]]:
    """One readable colour per class: tab10 (up to 10 classes), tab20 (up to 20), else hues."""
    if num_classes <= 10:
        cmap = colormaps["tab10"]
        return [cmap(k) for k in range(num_classes)]
    if num_classes <= 20:
        cmap = colormaps["tab20"]
        return [cmap(k) for k in range(num_classes)]
    cmap = colormaps["hsv"]
    return [cmap(k / num_classes) for k in range(num_classes)]


def _ink(color: Sequence[float]) -> str:
    """Black or white text, whichever reads better on ``color``."""
    r, g, b = color[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def label_extent(text: Text, renderer) -> Bbox:
    """The window extent of a label: its text and its background box (pad included)."""
    ext = text.get_window_extent(renderer)
    patch = text.get_bbox_patch()
    if patch is None:
        return ext
    text.update_bbox_position_size(renderer)
    return Bbox.union([ext, patch.get_window_extent(renderer)])


def _place_labels(ax, renderer, labels: list[tuple[str, dict, float, float, bool]]) -> int:
    """Adds ``labels`` = (text, text kwargs, x, y of the box corner in data coords, above) to
    ``ax`` so that no two overlap, each where gn_detect/evaluation/label_places.py's rule puts it
    (display coordinates flipped to its y-down image coordinates). A label with no free place is
    left out; returns how many were."""
    area = ax.get_window_extent(renderer)
    flipped = (area.x0, -area.y1, area.x1, -area.y0)
    taken: list[tuple[float, float, float, float]] = []
    hidden = 0
    for s, kw, x, y, above in labels:
        t = ax.text(0, 0, s, ha="left", va="top", fontsize=LABEL_FONTSIZE, clip_on=False, **kw)
        t.set_position((x, y))
        ext = label_extent(t, renderer)
        px, py = ax.transData.transform((x, y))
        spot = free_spot(ext.width, ext.height, px, -py, above, flipped, taken, LABEL_GAP_PX)
        if spot is None:
            t.remove()
            hidden += 1
            continue
        # move the label by the offset between its measured extent and the free spot
        tx, ty = ax.transData.transform(t.get_position())
        t.set_position(ax.transData.inverted().transform((tx + spot[0] - ext.x0, ty - spot[3] - ext.y0)))
        placed = label_extent(t, renderer)
        taken.append((placed.x0, -placed.y1, placed.x1, -placed.y0))
    return hidden


def _panel_labels(ax, i: int, gt: GroundTruth, matches: BoxMatches, shown: np.ndarray, colors: list,
                  max_preds: int) -> tuple[list[tuple[str, dict, float, float, bool]], int, int]:
    """Draws the GT and top-``max_preds`` prediction boxes of image index ``i``; returns their
    labels (for ``_place_labels``), the number of predictions at or above threshold and shown."""
    labels = []
    for j in np.flatnonzero(gt.img == i):
        x, y, w, h = gt.boxes[j]
        c = colors[gt.cls[j]]
        ax.add_patch(Rectangle((x, y), w, h, fill=False, ec=c, lw=2.0, ls=":" if gt.crowd[j] else "-"))
        labels.append((str(gt.names[gt.cls[j]]) + (" (crowd)" if gt.crowd[j] else ""),
                       {"color": "black", "bbox": {"facecolor": "white", "edgecolor": c, "lw": 1.0, "pad": 1.2}},
                       x, y, True))
    d = matches.dets
    cand = np.flatnonzero((d.img == i) & shown)
    top = cand[np.argsort(-d.scores[cand], kind="stable")][:max_preds]
    for j in top:
        x, y, w, h = d.boxes[j]
        c = colors[d.cls[j]]
        ax.add_patch(Rectangle((x, y), w, h, fill=False, ec=c, lw=1.5, ls="--"))
        status = int(matches.status[j])
        tag = " FP" if status == FP else (" crowd" if status == IGNORED else "")
        labels.append((f"{gt.names[d.cls[j]]} {d.scores[j]:.2f}{tag}",
                       {"color": _ink(c), "bbox": {"facecolor": c, "edgecolor": c, "alpha": 0.9, "pad": 1.2}},
                       x, y, False))
    return labels, len(cand), len(top)


def _load_examples(image_root: Path, file_names: dict[int, str], gt: GroundTruth,
                   num_images: int) -> list[tuple[int, int, np.ndarray]]:
    """(image index, image id, RGB array) of up to ``num_images`` images with GT, spread evenly
    over the sorted ids, so reruns show the same ones; unreadable files are skipped."""
    with_gt = np.unique(gt.img)
    if num_images <= 0 or len(with_gt) == 0:
        return []
    pick = with_gt[np.unique(np.linspace(0, len(with_gt) - 1, min(num_images, len(with_gt))).round().astype(int))]
    loaded = []
    for i in pick.tolist():
        img_id = int(gt.image_ids[i])
        f = Path(image_root) / file_names.get(img_id, "")
        try:
            loaded.append((i, img_id, np.asarray(read_rgb(f))))
        except OSError as e:
            log.warning("examples.png: cannot read %s (%s)", f, e)
    return loaded


def draw_examples(
    image_root: Path,
    file_names: dict[int, str],
    gt: GroundTruth,
    matches: BoxMatches,
    thresholds: np.ndarray,
    num_images: int = 4,
    max_preds: int = 6,
) -> tuple[Figure, list[int]] | None:
    """The figure of ``plot_examples`` (not saved) and the image ids drawn; None if no image."""
    loaded = _load_examples(image_root, file_names, gt, num_images)
    if not loaded:
        return None
    ncols = min(2, len(loaded))
    nrows = math.ceil(len(loaded) / ncols)
    fig = Figure(figsize=(6.0 * ncols, 5.6 * nrows), dpi=EXAMPLE_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(loaded):]:
        ax.axis("off")
    d = matches.dets
    shown = d.scores >= thresholds[d.cls] if len(d) else np.zeros(0, bool)
    colors = class_colors(gt.num_classes)
    panels = []
    for ax, (i, img_id, arr) in zip(axes.ravel(), loaded):
        ax.imshow(arr)
        ax.axis("off")
        labels, n_above, n_shown = _panel_labels(ax, i, gt, matches, shown, colors, max_preds)
        ax.set_title(f"image {img_id}: {int((gt.img == i).sum())} GT, top {n_shown} of {n_above} predictions "
                     ">= threshold", fontsize=8)
        panels.append((ax, labels))
    fig.suptitle(f"GT: solid box, white label | predictions >= their class threshold, top {max_preds} by score: "
                 "dashed box, filled label (FP: matches no GT) | one colour per class", fontsize=8)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()  # fixes the layout and the image axes' aspect before labels are placed
    for ax, labels in panels:
        if hidden := _place_labels(ax, renderer, labels):
            ax.set_title(ax.get_title() + f" ({hidden} labels left out: no room)", fontsize=8)
    return fig, [img_id for _, img_id, _ in loaded]


def plot_examples(path: Path, *args: Any, **kwargs: Any) -> list[int]:
    """A few evaluation images with their GT boxes (solid, white label: class name; crowd
    dotted) and the ``max_preds`` highest-scoring predictions at or above their class threshold
    (dashed, filled label: class, score, FP when unmatched), one colour per class; labels never
    overlap (``_place_labels``), saved to ``path``; the arguments are ``draw_examples``'. Returns
    the image ids drawn ([] if none could be read)."""
    drawn = draw_examples(*args, **kwargs)
    if drawn is None:
        return []
    fig, ids = drawn
    save_figure(fig, path, dpi=EXAMPLE_DPI)
    return ids
