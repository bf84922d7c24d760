"""Figures of the evaluation report: PR curves and example images with their matches.

matplotlib through an Agg canvas of its own (works without a display; pyplot and the global
backend are not touched, so importing this module changes nothing for the caller).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from gn_detect.evaluation.events import Counts, Events
from gn_detect.evaluation.matching import FP, IGNORED, TP, BoxMatches, GroundTruth

__all__ = ["plot_pr_curves", "plot_examples"]

log = logging.getLogger(__name__)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_pr_curves(
    path: Path,
    names: Sequence[str],
    box: Events,
    label: Events,
    thresholds: np.ndarray,
    ap: Sequence[float],
    max_classes: int = 20,
    points: tuple[Counts, Counts] | None = None,
) -> list[int]:
    """Box- and label-level PR curves of the classes with most GT boxes (at most
    ``max_classes``), with the operating point at each class's threshold: counted on the same
    events, or given as ``points`` = (box counts, label counts), e.g. counted on other images
    than the curves. Returns the class indices drawn."""
    order = np.argsort(-box.num_pos, kind="stable")
    ks = [int(k) for k in order if box.num_pos[k] > 0][:max_classes]
    if not ks:
        ks = [int(k) for k in order[:max_classes]]
    n = max(len(ks), 1)
    ncols = min(5, n)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(3.2 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    bc, lc = points if points is not None else (box.counts_at(thresholds), label.counts_at(thresholds))
    for ax in axes.ravel()[len(ks):]:
        ax.axis("off")
    for ax, k in zip(axes.ravel(), ks):
        for ev, counts, style, col, lab in (
            (box, bc, "-", "tab:blue", "box"),
            (label, lc, "--", "tab:orange", "label"),
        ):
            c = ev.curve(k)
            if len(c.thresholds) and c.num_pos:
                ax.plot(c.recall, c.precision, style, color=col, lw=1.2, label=lab)
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
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.supxlabel("recall")
    fig.supylabel("precision")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return ks


def plot_examples(
    path: Path,
    image_root: Path,
    file_names: dict[int, str],
    gt: GroundTruth,
    matches: BoxMatches,
    thresholds: np.ndarray,
    num_images: int = 4,
) -> list[int]:
    """A few evaluation images with GT (green; crowd dotted) and the predictions at or above
    their class threshold (blue TP, red FP, grey on a crowd region). Images are spread evenly
    over the sorted ids of images that have GT, so reruns show the same ones. Returns the
    image ids drawn (missing files are skipped with a warning)."""
    with_gt = np.unique(gt.img)
    if num_images <= 0 or len(with_gt) == 0:
        return []
    pick = with_gt[np.unique(np.linspace(0, len(with_gt) - 1, min(num_images, len(with_gt))).round().astype(int))]
    loaded = []
    for i in pick.tolist():
        img_id = int(gt.image_ids[i])
        f = Path(image_root) / file_names.get(img_id, "")
        try:
            with Image.open(f) as im:
                loaded.append((i, img_id, np.asarray(im.convert("RGB"))))
        except (OSError, ValueError) as e:
            log.warning("examples.png: cannot read %s (%s)", f, e)
    if not loaded:
        return []
    ncols = min(2, len(loaded))
    nrows = math.ceil(len(loaded) / ncols)
    fig = _new_figure(6.5 * ncols, 5.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(loaded):]:
        ax.axis("off")
    d = matches.dets
    shown = d.scores >= thresholds[d.cls] if len(d) else np.zeros(0, bool)
    colors = {TP: "tab:blue", FP: "tab:red", IGNORED: "0.5"}
    for ax, (i, img_id, arr) in zip(axes.ravel(), loaded):
        ax.imshow(arr)
        ax.axis("off")
        for j in np.flatnonzero(gt.img == i):
            x, y, w, h = gt.boxes[j]
            ls = ":" if gt.crowd[j] else "-"
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec="lime", lw=1.5, ls=ls))
        for j in np.flatnonzero((d.img == i) & shown):
            x, y, w, h = d.boxes[j]
            c = colors[int(matches.status[j])]
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec=c, lw=1.2))
            ax.text(x, y, f"{gt.names[d.cls[j]]} {d.scores[j]:.2f}", fontsize=6, color="white",
                    bbox={"facecolor": c, "alpha": 0.7, "pad": 1, "lw": 0}, va="bottom")
        ax.set_title(f"image {img_id}", fontsize=9)
    fig.suptitle("GT green (crowd dotted) | predictions >= threshold: TP blue, FP red, on crowd grey", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return [img_id for _, img_id, _ in loaded]
