"""The written comparison: which differences between settings exceed the seed spread.

Settings are compared only within one *optimizer group*: the same optimizer batch
(``solver.ims_per_batch``) and schedule (``solver.max_iter``). Within a group, a setting whose
norms use no batch statistics (the norm table's ``batch_stats`` is False for every component:
GN, GN+WS, LN, affine, none) is a *reference*: it has no images-per-group axis, so it stands at
every group size. Each batch-statistics setting (BN) at its group size is compared with each
reference (``bn @2 vs gn``), with the other batch-statistics settings at the same group size,
and the references with each other.

The rule (stated in the text it writes): a difference on a metric exceeds the seed spread when
both settings have at least two seeds with that metric and ``|mean_a - mean_b| > std_a + std_b``
(sample std, ddof=1). With one seed on either side there is no spread and it is *not judged*. A
label-metric difference between two settings whose mean AP are both below :data:`AP_FLOOR` is
*not meaningful* whatever the spread: a detector that finds almost nothing leaves label precision
and recall to the class frequencies (docs/metrics.md).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

from .summary import PERCENT_METRICS, display_scale, fmt, fmt_metric, row_name

COMPARED_METRICS = (("AP", "AP"), ("label_precision", "label precision"), ("label_recall", "label recall"))
AP_FLOOR = 0.01  # mean AP (a fraction) below which both settings' label-metric differences mean nothing

RULE_TEXT = (
    "Rule: settings are compared only when they share the optimizer batch (solver.ims_per_batch) and "
    "the schedule (solver.max_iter). A setting whose norms use no batch statistics (GN, GN+WS, LN, "
    "affine, no norm) is a *reference*: it has no images-per-group axis, so each batch-statistics "
    "setting (BN) is compared with it at every group size (`bn @2 vs gn`); BN settings are compared "
    "with each other at the same number of images per normalization group. A difference *exceeds "
    "the seed spread* when both settings have at least 2 seeds with that metric and "
    "|mean_a - mean_b| > std_a + std_b (std = sample standard deviation over seeds, ddof=1). It is "
    "*within the seed spread* otherwise. When either setting has a single seed there is no spread "
    "to judge against: the difference is listed as *not judged (n=1)*. A label precision or recall "
    f"difference between two settings whose mean AP are both below {AP_FLOOR:.0%} is *not meaningful*, "
    "whatever the spread: a detector that finds almost nothing leaves label precision and recall to how "
    "often each class occurs (predicting every class everywhere already scores the label baseline)."
)

WHY_NOT_ACROSS = (
    "Settings with a different optimizer batch or schedule are never compared: the optimizer batch "
    "sets the learning rate (solver.scale_lr) and the number of images seen, so a difference "
    "between them would mix the norm with the optimization."
)


def optimizer_key(row: dict) -> tuple:
    """(solver.ims_per_batch, solver.max_iter): settings are compared only when these agree."""
    return row["ims_per_batch"], row["max_iter"]


def _order(v: Any) -> tuple:
    return (v is None, v if v is not None else 0)


def optimizer_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[optimizer_key(row)].append(row)
    return dict(sorted(groups.items(), key=lambda kv: (_order(kv[0][0]), _order(kv[0][1]))))


def group_title(key: tuple) -> str:
    batch, iters = key
    return f"{fmt(batch)} images per step (solver.ims_per_batch), {fmt(iters)} iterations"


def setting_names(group: list[dict]) -> dict[int, str]:
    """id(row) -> its name in the comparison: ``bn @2`` for a batch-statistics setting at 2
    images per group, the label alone for a reference; what else tells two apart is added."""
    names = {}
    for row in group:
        if row["reference"]:
            names[id(row)] = row_name(row, [r for r in group if r["reference"]])
        else:
            same_x = [r for r in group if not r["reference"] and r["ims_per_group"] == row["ims_per_group"]]
            names[id(row)] = row_name(row, same_x, base=f"{row['setting']} @{fmt(row['ims_per_group'])}")
    return names


def pairs(group: list[dict]) -> list[tuple[dict, dict, Any]]:
    """(a, b, x) of one optimizer group: BN vs BN at the same x, each BN vs each reference (x:
    the BN side's group size), the references with each other (x None)."""
    refs = [r for r in group if r["reference"]]
    dep = sorted((r for r in group if not r["reference"]), key=lambda r: _order(r["ims_per_group"]))
    out = []
    for x in sorted({r["ims_per_group"] for r in dep}, key=_order):
        at_x = [r for r in dep if r["ims_per_group"] == x]
        out += [(a, b, x) for a, b in itertools.combinations(at_x, 2)]
        out += [(a, ref, x) for a in at_x for ref in refs]
    return out + [(a, b, None) for a, b in itertools.combinations(refs, 2)]


def judge(a: dict, b: dict, metric: str) -> dict[str, Any] | None:
    """The seed-spread verdict on ``metric`` between rows a and b; None when a mean is missing."""
    ma, mb = a[f"{metric}_mean"], b[f"{metric}_mean"]
    if not (math.isfinite(ma) and math.isfinite(mb)):
        return None
    sa, sb = a[f"{metric}_std"], b[f"{metric}_std"]
    na, nb = a[f"{metric}_n"], b[f"{metric}_n"]
    diff = abs(ma - mb)
    if na >= 2 and nb >= 2 and math.isfinite(sa) and math.isfinite(sb):
        spread = sa + sb
        verdict = "exceeds" if diff > spread else "within"
    else:
        spread, verdict = math.nan, "not judged"
    return {"mean_a": ma, "std_a": sa, "n_a": na, "mean_b": mb, "std_b": sb, "n_b": nb,
            "diff": diff, "spread": spread, "verdict": verdict}


def compare(rows: list[dict]) -> list[dict[str, Any]]:
    """All comparisons, per metric and optimizer group (see the module docstring), with a verdict each."""
    out = []
    for metric, _title in COMPARED_METRICS:
        for key, group in optimizer_groups(rows).items():
            names = setting_names(group)
            for a, b, x in pairs(group):
                verdict = judge(a, b, metric)
                if verdict is None:
                    continue
                if metric != "AP" and all(r["AP_mean"] < AP_FLOOR for r in (a, b)):  # NaN AP: not below
                    verdict |= {"seed_verdict": verdict["verdict"], "verdict": "not meaningful"}
                na, nb = names[id(a)], names[id(b)]
                out.append({
                    "metric": metric, "ims_per_batch": key[0], "max_iter": key[1], "ims_per_group": x,
                    "kind": "references" if x is None else ("vs reference" if b["reference"] else "same group size"),
                    "a": na, "b": nb, "higher": na if verdict["mean_a"] >= verdict["mean_b"] else nb,
                    **verdict,
                })
    return out


def _pm(mean: float, std: float, n: int, metric: str, scale: float) -> str:
    return f"{fmt_metric(mean, std, n, metric, scale)}, n={n}"


def _diff(value: float, metric: str, scale: float) -> str:
    """A difference or spread in the table's units (percentage points for fraction metrics)."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value * scale:.1f}" if metric in PERCENT_METRICS else fmt(value)


def comparison_line(c: dict, metric: str, scale: float) -> str:
    pair = (f"({_pm(c['mean_a'], c['std_a'], c['n_a'], metric, scale)} vs "
            f"{_pm(c['mean_b'], c['std_b'], c['n_b'], metric, scale)})")
    diff, spread = _diff(c["diff"], metric, scale), _diff(c["spread"], metric, scale)
    head = f"{c['a']} vs {c['b']}"
    if c["verdict"] == "exceeds":
        return f"**{head}: {c['higher']} higher by {diff}, exceeds the seed spread {spread}** {pair}"
    if c["verdict"] == "within":
        return f"{head}: difference {diff} is within the seed spread {spread} {pair}"
    if c["verdict"] == "not meaningful":
        return (f"{head}: difference {diff} not meaningful: the AP of both is below {AP_FLOOR:.0%} "
                f"(seed spread {spread}: {c['seed_verdict']}) {pair}")
    return f"{head}: difference {diff} not judged (n=1, no spread) {pair}"


def _group_lines(group: list[dict], cs: list[dict], metric: str, title: str, scale: float) -> list[str]:
    names = setting_names(group)
    if len(group) < 2:
        return [f"- only {names[id(group[0])]}: nothing to compare (no other setting has this optimizer "
                "batch and schedule)."]
    if not cs:
        return [f"- {title} missing; nothing to compare."]
    lines = []
    refs = [r for r in group if r["reference"]]
    if refs:
        shown = "; ".join(f"{names[id(r)]} {fmt_metric(r[f'{metric}_mean'], r[f'{metric}_std'], r[f'{metric}_n'], metric, scale)}"
                          f" (n={r[f'{metric}_n']})" for r in refs)
        lines.append(f"- references (no batch statistics, the same at every group size): {shown}")
    xs = sorted({c["ims_per_group"] for c in cs if c["ims_per_group"] is not None}, key=_order)
    for x in xs:
        lines.append(f"- **{fmt(x)} image(s) per normalization group**:")
        for c in sorted((c for c in cs if c["ims_per_group"] == x), key=lambda c: (c["kind"], c["b"], c["a"])):
            lines.append("  - " + comparison_line(c, metric, scale))
    ref_pairs = [c for c in cs if c["ims_per_group"] is None]
    if ref_pairs:
        lines.append("- **references with each other**:")
        lines += ["  - " + comparison_line(c, metric, scale) for c in ref_pairs]
    return lines


def comparison_markdown(rows: list[dict], comparisons: list[dict]) -> str:
    lines = ["# Written comparison", "", RULE_TEXT, ""]
    if not rows:
        lines.append("No finished runs: nothing to compare.")
        return "\n".join(lines) + "\n"
    if all(r["n"] <= 1 for r in rows):
        lines += ["**Every setting has a single seed (n=1): no seed spread can be judged.** "
                  "The differences below are raw and may be noise.", ""]
    n_exceed = sum(c["verdict"] == "exceeds" for c in comparisons)
    n_within = sum(c["verdict"] == "within" for c in comparisons)
    n_nj = sum(c["verdict"] == "not judged" for c in comparisons)
    n_low = sum(c["verdict"] == "not meaningful" for c in comparisons)
    lines += [f"In all: {n_exceed} difference(s) exceed the seed spread, {n_within} are within it, "
              f"{n_nj} not judged (n=1), {n_low} label difference(s) not meaningful (AP of both below "
              f"{AP_FLOOR:.0%}).", ""]
    groups = optimizer_groups(rows)
    if len(groups) > 1:
        lines += ["## Optimizer groups (never compared with each other)", "", WHY_NOT_ACROSS, ""]
        for key, group in groups.items():
            names = setting_names(group)
            alone = " (compared with nothing: no other setting has this optimizer batch and schedule)" \
                if len(group) == 1 else ""
            lines.append(f"- {group_title(key)}: {', '.join(names[id(r)] for r in group)}{alone}")
        lines.append("")
    for metric, title in COMPARED_METRICS:
        scale = display_scale(rows, metric)
        lines += [f"## {title}", ""]
        if scale == 100.0:
            lines += ["Values in %, differences in percentage points.", ""]
        for key, group in groups.items():
            cs = [c for c in comparisons if c["metric"] == metric and (c["ims_per_batch"], c["max_iter"]) == key]
            if len(groups) > 1:
                lines += [f"### {group_title(key)}", ""]
            lines += _group_lines(group, cs, metric, title, scale) + [""]
    emulated = [r for r in rows if "emulated" in r["mode"]]
    if emulated:
        lines += ["Rows marked *emulated* compute the norm statistics over sub-groups of one "
                  "device's batch (model.norm_opts.bn_group_size) instead of over separate processes.", ""]
    return "\n".join(lines)
