"""Aggregating finished runs into one row per setting, and writing the tables."""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from gn_detect.io import atomic_open

from .collect import METRICS, Run, component_label, config_differences, metric_values, uses_batch_stats

METRIC_TITLES = {
    "AP": "AP",
    "AP50": "AP50",
    "label_recall": "label R",
    "label_precision": "label P",
    "label_baseline_precision": "label P base",
    "box_recall": "box R",
    "box_precision": "box P",
    "ims_per_sec": "img/s",
    "peak_mem_mb": "peak MB",
}

ROW_INFO_COLUMNS = (
    "setting",
    "norm_name",
    "components",
    "ims_per_group",
    "ims_per_device",
    "bn_group_size",
    "world_size",
    "ims_per_batch",
    "max_iter",
    "mode",
    "reference",
    "n",
    "seeds",
)


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, count) over the finite values; NaN where undefined."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n >= 2 else math.nan
    return mean, std, n


def group_runs(runs: list[Run]) -> dict[tuple, list[Run]]:
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.setting_key].append(r)
    return dict(sorted(groups.items(), key=lambda kv: kv[0][:1] + kv[0][2:] + (str(kv[0][1]),)))


def aggregate(done_runs: list[Run]) -> list[dict[str, Any]]:
    """One dict per setting (sorted by label, then the batch axis, then world size ...)."""
    rows = []
    for key, runs in group_runs(done_runs).items():
        runs = sorted(runs, key=lambda r: (r.seed if r.seed is not None else -1, r.rel_dir))
        first = runs[0]
        row: dict[str, Any] = {
            "setting": first.label,
            "norm_name": first.norm_name,
            "components": component_label(first.components),
            "ims_per_group": first.ims_per_group,
            "ims_per_device": first.ims_per_device,
            "bn_group_size": first.bn_group_size,
            "world_size": first.world_size,
            "ims_per_batch": first.ims_per_batch,
            "max_iter": first.max_iter,
            "mode": first.mode,
            # no component takes batch statistics: the same at every images-per-group value
            "reference": not uses_batch_stats(first.components),
            "n": len(runs),
            "seeds": [r.seed for r in runs],
            "run_dirs": [r.rel_dir for r in runs],
        }
        notes = []
        vals = [metric_values(r) for r in runs]
        for m in METRICS:
            mean, std, k = mean_std([v[m] for v in vals])
            row[f"{m}_values"] = [v[m] for v in vals]  # per seed (raw; NaN where missing), as `seeds`
            row[f"{m}_mean"] = mean
            row[f"{m}_std"] = std
            row[f"{m}_n"] = k
            if k < len(runs) and not (k == 0 and m in ADDED_METRICS):  # runs from before a metric existed
                notes.append(f"{m} missing for {len(runs) - k} of {len(runs)} runs")
        seeds = [r.seed for r in runs]
        dup = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
        if dup:
            notes.append("seed(s) %s appear more than once" % ", ".join(map(str, dup)))
        if any(s is None for s in seeds):
            notes.append("run(s) without a seed in config.yaml")
        diff = config_differences(runs)
        if diff:
            shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
            notes.append(f"config differs between seeds in: {shown}")
        kinds = sorted({str(r.final.get("peak_mem_kind")) for r in runs if r.final.get("peak_mem_kind")})
        row["peak_mem_kind"] = "/".join(kinds) if kinds else None
        # runs whose label P/R does not beat the baseline (report.json's predict_everything)
        row["label_degenerate_n"] = sum(bool(r.final.get("label_degenerate")) for r in runs)
        row["notes"] = notes
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def fmt(v: Any) -> str:
    """Human formatting: n/a for missing, 4 significant digits, whole numbers above 1000."""
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "n/a"
        if abs(v) >= 1000:
            return f"{v:.0f}"
        return f"{v:.4g}"
    return str(v)


# Metrics that evaluation writes as fractions in [0, 1]; the tables show them in percent.
# Metrics newer than some run folders a report may read: absent from every run of a row is no news.
ADDED_METRICS = ("label_baseline_precision",)
PERCENT_METRICS = ("AP", "AP50", "label_recall", "label_precision", "label_baseline_precision", "box_recall",
                   "box_precision")
# Decimals of the other metrics in the tables (img/s, MB).
DECIMALS = {"ims_per_sec": 1, "peak_mem_mb": 0}
PAPER_METRICS = ("AP", "AP50", "label_precision", "label_recall")


def display_scale(rows: list[dict], metric: str) -> float:
    """100 for a fraction metric (shown in percent); 1 for others, and for a fraction metric with
    some seed value above 1 (a run that already wrote percent: shown as written)."""
    if metric not in PERCENT_METRICS:
        return 1.0
    vals = [v for r in rows for v in r.get(f"{metric}_values", [r.get(f"{metric}_mean")])
            if v is not None and math.isfinite(v)]
    return 1.0 if any(abs(v) > 1.0 for v in vals) else 100.0


def fmt_metric(mean: float, std: float, n: int, metric: str, scale: float, tex: bool = False) -> str:
    """``49.6 ± 0.9`` (fractions in percent, one decimal; ± the sample std when n >= 2, nothing
    with one value); img/s with one decimal, MB whole; ``n/a`` when undefined."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    d = 1 if metric in PERCENT_METRICS else DECIMALS.get(metric, 1)
    s = f"{mean * scale:.{d}f}"
    if n >= 2 and std is not None and math.isfinite(std):
        s += (r" \pm " if tex else " ± ") + f"{std * scale:.{d}f}"
    return f"${s}$" if tex else s


def fmt_row_metric(row: dict, metric: str, scale: float, tex: bool = False) -> str:
    return fmt_metric(row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"], metric, scale, tex)


def row_name(row: dict, rows_at_x: list[dict], base: str | None = None) -> str:
    """``base`` (default the setting's label), plus what tells the row apart from others with the
    same label in ``rows_at_x``."""
    base = row["setting"] if base is None else base
    same = [r for r in rows_at_x if r["setting"] == row["setting"]]
    if len(same) <= 1:
        return base
    fields = (("mode", str), ("world_size", lambda v: f"world size {v}"),
              ("ims_per_device", lambda v: f"{v} img/device"),
              ("ims_per_batch", lambda v: f"{v} img/step"),
              ("max_iter", lambda v: f"{v} iters"))
    extra: list[tuple] = []
    for key, fmt_fn in fields:  # add distinguishing fields until the names are unique
        if len({tuple(r[k] for k, _ in extra) for r in same}) == len(same):
            break
        if len({r[key] for r in same}) > 1:
            extra.append((key, fmt_fn))
    parts = [f(row[k]) for k, f in extra]
    return f"{base} ({', '.join(parts)})" if parts else base


REFERENCE_X = "any"  # the img/group cell of a setting without batch statistics


def group_cell(row: dict) -> str:
    """The img/group cell: the number, or ``any`` for a reference (no batch statistics)."""
    return REFERENCE_X if row["reference"] else fmt(row["ims_per_group"])


def paper_rows(rows: list[dict], tex: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and body of the paper table: setting (with its mode unless a plain single process),
    img/group (``any`` for a reference), img/step when the rows differ in it, n, AP, AP50, label P,
    label R."""
    steps = len({r["ims_per_batch"] for r in rows}) > 1
    header = ["setting", "img/group"] + (["img/step"] if steps else []) + ["n"]
    header += [METRIC_TITLES[m] + " (%)" for m in PAPER_METRICS]
    scales = {m: display_scale(rows, m) for m in PAPER_METRICS}
    body = []
    for row in rows:
        at_x = [r for r in rows if r["ims_per_group"] == row["ims_per_group"] and r["reference"] == row["reference"]]
        name = row_name(row, at_x)
        if row["mode"] != "single process" and row["mode"] not in name:
            name += f" ({row['mode']})"
        line = [name, group_cell(row)] + ([fmt(row["ims_per_batch"])] if steps else []) + [str(row["n"])]
        body.append(line + [fmt_row_metric(row, m, scales[m], tex) for m in PAPER_METRICS])
    return header, body


def paper_table_md(rows: list[dict]) -> str:
    header, body = paper_rows(rows)
    return md_table(header, body)


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s: Any) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(s))


def paper_table_tex(rows: list[dict]) -> str:
    """A plain LaTeX tabular (no packages needed) of :func:`paper_rows`: mean $\\pm$ sample std."""
    header, body = paper_rows(rows, tex=True)
    n_text = len(header) - len(PAPER_METRICS)
    cols = "ll" + "r" * (len(header) - 2)
    lines = ["% gn-detect sweep report: mean \\pm sample std (ddof=1) over seeds; AP, AP50, label P/R in percent",
             f"\\begin{{tabular}}{{{cols}}}", "\\hline",
             " & ".join(tex_escape(h) for h in header) + r" \\", "\\hline"]
    for line in body:
        cells = [tex_escape(c) for c in line[:n_text]] + line[n_text:]  # the metric cells are math already
        lines.append(" & ".join(cells) + r" \\")
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _csv_value(v: Any) -> Any:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else "n/a"
    if isinstance(v, (list, tuple)):
        return " ".join("n/a" if x is None else str(x) for x in v)
    return v


def csv_columns() -> list[str]:
    cols = list(ROW_INFO_COLUMNS)
    for m in METRICS:
        cols += [f"{m}_mean", f"{m}_std"]
    return cols + ["notes"]


def write_summary_csv(rows: list[dict], path: Path) -> None:
    cols = csv_columns()
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in rows:
            w.writerow([_csv_value("; ".join(row["notes"]) if c == "notes" else row.get(c)) for c in cols])


RUN_CSV_COLUMNS = ("run_dir", "state", "setting", "seed", "ims_per_group", "ims_per_device",
                   "world_size", "mode", "last_iter", "iters_done", "max_iter") + METRICS + ("error",)


def run_record(r: Run) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "run_dir": r.rel_dir,
        "state": r.state,
        "setting": r.label,
        "components": component_label(r.components) if r.components else None,
        "seed": r.seed,
        "ims_per_group": r.ims_per_group,
        "ims_per_device": r.ims_per_device,
        "bn_group_size": r.bn_group_size,
        "world_size": r.world_size,
        "mode": r.mode if r.state != "unreadable" else None,
        "last_iter": r.last_iter,
        "iters_done": r.iters_done,
        "max_iter": r.max_iter,
        "error": r.error,
        "notes": list(r.notes),
    }
    rec.update(metric_values(r) if r.final is not None else {m: math.nan for m in METRICS})
    return rec


def write_runs_csv(runs: list[Run], path: Path) -> None:
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(RUN_CSV_COLUMNS)
        for r in runs:
            rec = run_record(r)
            w.writerow([_csv_value(rec.get(c)) for c in RUN_CSV_COLUMNS])


def md_escape(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


def short_error(err: str | None, limit: int = 200) -> str:
    """The last line of an error that names an exception (tracebacks end with it; OmegaConf
    errors add ``full_key: ...`` / ``object_type=...`` lines after it), else the last
    non-empty line; shortened."""
    if not err:
        return "n/a"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    named = [ln for ln in lines if _EXC_LINE.match(ln)]
    s = named[-1] if named else (lines[-1] if lines else str(err))
    return s if len(s) <= limit else s[: limit - 3] + "..."


def md_table(header: list[str], body: list[list[Any]]) -> str:
    out = ["| " + " | ".join(md_escape(h) for h in header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
    for line in body:
        out.append("| " + " | ".join(md_escape(c) for c in line) + " |")
    return "\n".join(out)


def settings_table_md(rows: list[dict]) -> str:
    scales = {m: display_scale(rows, m) for m in METRICS}
    header = ["setting", "backbone/fpn/head", "img/group", "img/device", "img/step", "world size", "mode", "n",
              "seeds"] + [METRIC_TITLES[m] + (" (%)" if scales[m] == 100.0 else "") for m in METRICS]
    body = []
    for row in rows:
        line = [row["setting"], row["components"], group_cell(row), fmt(row["ims_per_device"]),
                fmt(row["ims_per_batch"]), row["world_size"], row["mode"], row["n"],
                " ".join("n/a" if s is None else str(s) for s in row["seeds"])]
        for m in METRICS:
            cell = fmt_row_metric(row, m, scales[m])
            if 0 < row[f"{m}_n"] < row["n"]:
                cell += f" (n={row[f'{m}_n']})"
            if m == "label_precision" and row.get("label_degenerate_n"):
                cell += f" (degenerate {row['label_degenerate_n']}/{row['n']})"
            line.append(cell)
        body.append(line)
    return md_table(header, body)


def problem_table_md(runs: list[Run], with_progress: bool = False) -> str:
    header = ["setting", "img/group", "world size", "seed", "run folder", "state"]
    header += ["progress"] if with_progress else []
    header += ["error"]
    body = []
    for r in runs:
        line = [r.label or "n/a", fmt(r.ims_per_group), fmt(r.world_size) if r.state != "unreadable" else "n/a",
                fmt(r.seed), f"`{r.rel_dir}`", r.state]
        if with_progress:  # completed iterations, the count status.json and the error messages give
            done = "?" if r.iters_done is None else str(r.iters_done)
            total = "?" if r.max_iter is None else str(r.max_iter)
            line.append(f"{done}/{total} iterations done")
        line.append(short_error(r.error))
        body.append(line)
    return md_table(header, body)
