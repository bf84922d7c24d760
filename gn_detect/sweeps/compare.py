"""The written comparison: which differences between settings exceed the seed spread.

Rule (stated in the text it writes): two settings at the same batch-axis value (images per
normalization group) differ on a metric beyond the seed spread when both have at least two
seeds with that metric and ``|mean_a - mean_b| > std_a + std_b`` (sample std, ddof=1). With
one seed on either side there is no spread and the difference is *not judged*.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

from .summary import PERCENT_METRICS, display_scale, fmt, fmt_metric, row_name

COMPARED_METRICS = (("AP", "AP"), ("label_precision", "label precision"), ("label_recall", "label recall"))

RULE_TEXT = (
    "Rule: two settings are compared only at the same number of images per normalization group. "
    "A difference *exceeds the seed spread* when both settings have at least 2 seeds with that "
    "metric and |mean_a - mean_b| > std_a + std_b (std = sample standard deviation over seeds, "
    "ddof=1). It is *within the seed spread* otherwise. When either setting has a single seed "
    "there is no spread to judge against: the difference is listed as *not judged (n=1)*."
)


def compare(rows: list[dict]) -> list[dict[str, Any]]:
    """All pairwise comparisons, per metric and batch-axis value, with a verdict each."""
    by_x: dict[Any, list[dict]] = defaultdict(list)
    for row in rows:
        by_x[row["ims_per_group"]].append(row)
    out = []
    for metric, _title in COMPARED_METRICS:
        for x in sorted(by_x, key=lambda v: (v is None, v if v is not None else 0)):
            at_x = by_x[x]
            for a, b in itertools.combinations(at_x, 2):
                ma, mb = a[f"{metric}_mean"], b[f"{metric}_mean"]
                if not (math.isfinite(ma) and math.isfinite(mb)):
                    continue
                sa, sb = a[f"{metric}_std"], b[f"{metric}_std"]
                na, nb = a[f"{metric}_n"], b[f"{metric}_n"]
                if ma < mb:  # report the better one first (higher is better for all of them)
                    a, b, ma, mb, sa, sb, na, nb = b, a, mb, ma, sb, sa, nb, na
                diff = ma - mb
                if na >= 2 and nb >= 2 and math.isfinite(sa) and math.isfinite(sb):
                    spread = sa + sb
                    verdict = "exceeds" if diff > spread else "within"
                else:
                    spread = math.nan
                    verdict = "not judged"
                out.append({
                    "metric": metric,
                    "ims_per_group": x,
                    "a": row_name(a, at_x), "b": row_name(b, at_x),
                    "mean_a": ma, "std_a": sa, "n_a": na,
                    "mean_b": mb, "std_b": sb, "n_b": nb,
                    "diff": diff, "spread": spread, "verdict": verdict,
                })
    return out


def _pm(mean: float, std: float, n: int, metric: str, scale: float) -> str:
    return f"{fmt_metric(mean, std, n, metric, scale)}, n={n}"


def _diff(value: float, metric: str, scale: float) -> str:
    """A difference or spread in the table's units (percentage points for fraction metrics)."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value * scale:.1f}" if metric in PERCENT_METRICS else fmt(value)


def comparison_markdown(rows: list[dict], comparisons: list[dict]) -> str:
    lines = ["# Written comparison", "", RULE_TEXT, ""]
    if not rows:
        lines.append("No finished runs: nothing to compare.")
        return "\n".join(lines) + "\n"
    if all(r["n"] <= 1 for r in rows):
        lines += ["**Every setting has a single seed (n=1): no seed spread can be judged.** "
                  "The differences below are raw and may be noise.", ""]
    xs = sorted({r["ims_per_group"] for r in rows}, key=lambda v: (v is None, v if v is not None else 0))
    n_exceed = sum(c["verdict"] == "exceeds" for c in comparisons)
    n_within = sum(c["verdict"] == "within" for c in comparisons)
    n_nj = sum(c["verdict"] == "not judged" for c in comparisons)
    lines += [f"In all: {n_exceed} difference(s) exceed the seed spread, {n_within} are within it, "
              f"{n_nj} not judged (n=1).", ""]
    for metric, title in COMPARED_METRICS:
        scale = display_scale(rows, metric)
        lines += [f"## {title}", ""]
        if scale == 100.0:
            lines += ["Values in %, differences in percentage points.", ""]
        for x in xs:
            at_x = [r for r in rows if r["ims_per_group"] == x]
            head = f"**{fmt(x)} image(s) per normalization group**"
            cs = [c for c in comparisons if c["metric"] == metric and c["ims_per_group"] == x]
            if len(at_x) < 2:
                lines.append(f"- {head}: only {at_x[0]['setting']}; nothing to compare.")
                continue
            if not cs:
                lines.append(f"- {head}: {title} missing; nothing to compare.")
                continue
            lines.append(f"- {head}:")
            for c in sorted(cs, key=lambda c: (-c["diff"], c["a"], c["b"])):
                pair = (f"({_pm(c['mean_a'], c['std_a'], c['n_a'], metric, scale)} vs "
                        f"{_pm(c['mean_b'], c['std_b'], c['n_b'], metric, scale)})")
                diff, spread = _diff(c["diff"], metric, scale), _diff(c["spread"], metric, scale)
                if c["verdict"] == "exceeds":
                    lines.append(f"  - **{c['a']} > {c['b']}: difference {diff} exceeds the "
                                 f"seed spread {spread}** {pair}")
                elif c["verdict"] == "within":
                    lines.append(f"  - {c['a']} ≈ {c['b']}: difference {diff} is within the "
                                 f"seed spread {spread} {pair}")
                else:
                    lines.append(f"  - {c['a']} vs {c['b']}: difference {diff} not judged "
                                 f"(n=1, no spread) {pair}")
        lines.append("")
    emulated = [r for r in rows if "emulated" in r["mode"]]
    if emulated:
        lines += ["Rows marked *emulated* compute the norm statistics over sub-groups of one "
                  "device's batch (model.norm_opts.bn_group_size) instead of over separate processes.", ""]
    return "\n".join(lines)
