"""``write_sweep_report``: run folders -> summary tables, figures and a written comparison.

Outputs (in ``out_dir``, default the sweep folder): ``summary.csv``, ``summary.md`` (ends with
the comparison), ``summary.json``, ``runs.csv`` (one row per run folder, any state),
``summary.tex`` (the paper table as a LaTeX tabular), ``comparison.md``, ``ap_vs_batch.png``,
``label_pr_bars.png``, ``speed_memory.png``, ``loss_curves.png`` and ``figures.json``. See
docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from gn_detect.config import ConfigError, check_output_path, one_line
from gn_detect.io import to_jsonable, write_json_atomic, write_text_atomic

from .collect import METRICS, Run, collect_runs
from .compare import compare, comparison_markdown
from .sweep_figures import plot_ap_vs_batch, plot_label_pr_bars, plot_loss_curves, plot_speed_memory
from .summary import (aggregate, group_cell, paper_table_md, paper_table_tex, problem_table_md, run_record,
                      settings_table_md, write_runs_csv, write_summary_csv)

OUTPUT_FILES = ("summary.csv", "summary.md", "summary.json", "summary.tex", "runs.csv", "comparison.md",
                "ap_vs_batch.png", "label_pr_bars.png", "speed_memory.png", "loss_curves.png", "figures.json")


def split_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """done (with a final record) / failed / unfinished (running, interrupted, crashed, not started,
    unknown) / excluded."""
    parts: dict[str, list[Run]] = {"done": [], "failed": [], "unfinished": [], "excluded": []}
    for r in runs:
        if r.state == "done" and r.final is not None:
            parts["done"].append(r)
        elif r.state == "done":
            r.error = r.error or "state is done but metrics.jsonl has no final record"
            parts["excluded"].append(r)
        elif r.state == "failed":
            parts["failed"].append(r)
        elif r.state in ("running", "interrupted", "crashed", "not started", "unknown"):
            parts["unfinished"].append(r)
        else:  # unreadable config
            parts["excluded"].append(r)
    return parts


def _summary_md(sweep_dir: Path, runs: list[Run], parts: dict, rows: list[dict], comparison: str,
                figures: dict) -> str:
    lines = [f"# Sweep report: `{sweep_dir}`", ""]
    lines.append(
        f"{len(runs)} run folder(s): {len(parts['done'])} done, {len(parts['failed'])} failed, "
        f"{len(parts['unfinished'])} running or not started, {len(parts['excluded'])} excluded; "
        f"{len(rows)} setting(s)."
    )
    if rows:
        lines += ["", "## Results (ready to paste)", "",
                  "AP, AP50, label precision P and recall R in percent: mean ± sample std over the n seeds "
                  "(no ± with one seed). The same table as a LaTeX tabular: [summary.tex](summary.tex).", "",
                  paper_table_md(rows)]
    lines += ["", "## Settings (mean ± std over seeds)", "",
              "Std is the sample standard deviation over seeds (ddof=1), not shown with one seed; metrics "
              "marked (%) are in percent (summary.csv and summary.json hold the unrounded values). "
              "*img/group* is the batch axis: images per normalization group (the ghost-batch components' "
              "model.<part>.norm_opts.bn_group_size, null inheriting model.norm_opts.bn_group_size, "
              "the smallest if they differ, as the config check reads it; else images per device; SyncBN "
              "across processes: images per device × world size); *any* for a reference, a setting whose "
              "norms use no batch statistics (GN, LN, affine...), compared at every group size with the "
              "settings of its optimizer batch (*img/step*) and schedule. *emulated*: one process computes "
              "norm statistics over sub-groups of its batch; *real processes*: world size > 1. *label P base*: the "
              "label precision of predicting every class in every image (recall 1); *(degenerate k/n)* after label P: "
              "in k of the n runs label P/R does not beat it by the stated margin (docs/metrics.md, \"Label metrics "
              "against their baseline\"): read AP and box level there.", ""]
    lines.append(settings_table_md(rows) if rows else "No finished runs.")
    lines += ["", "## Failed runs", ""]
    lines.append(problem_table_md(parts["failed"], with_progress=True) if parts["failed"] else "None.")
    lines += ["", "## Unfinished runs (running or never started)", ""]
    lines.append(problem_table_md(parts["unfinished"], with_progress=True) if parts["unfinished"] else "None.")
    if parts["excluded"]:
        lines += ["", "## Excluded runs", ""]
        lines.append(problem_table_md(parts["excluded"]))
    notes = []
    for row in rows:
        notes += [f"{row['setting']} @ {group_cell(row)} img/group ({row['mode']}): {n}" for n in row["notes"]]
    seen = set()
    for r in runs:
        for n in r.notes:
            if n.startswith("norm.name"):
                if n not in seen:
                    seen.add(n)
                    notes.append(n)
            else:
                notes.append(f"`{r.rel_dir}`: {n}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Figures", ""]
    for key, fig in figures.items():
        lines.append(f"- [{fig['title']}]({fig['file']}): {len(fig['series'])} series")
    lines += ["", "---", "", comparison]
    return "\n".join(lines).rstrip() + "\n"


def write_sweep_report(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                       quiet: bool = False) -> dict:
    """Read every run folder under ``sweep_dir`` and write the study's tables and figures.

    Returns the content of ``summary.json`` (rows, failed/unfinished/excluded runs,
    comparisons, figures) plus ``"outputs"``: the written file paths.
    """
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {sweep}")
    out = Path(out_dir) if out_dir is not None else sweep
    out.mkdir(parents=True, exist_ok=True)

    runs = collect_runs(sweep)
    parts = split_runs(runs)
    rows = aggregate(parts["done"])
    comparisons = compare(rows)
    comparison = comparison_markdown(rows, comparisons)

    figures = {
        "ap_vs_batch": plot_ap_vs_batch(rows, out / "ap_vs_batch.png"),
        "label_pr_bars": plot_label_pr_bars(rows, out / "label_pr_bars.png"),
        "speed_memory": plot_speed_memory(rows, out / "speed_memory.png"),
        "loss_curves": plot_loss_curves(runs, out / "loss_curves.png"),
    }
    write_json_atomic(out / "figures.json", figures)

    write_summary_csv(rows, out / "summary.csv")
    write_runs_csv(runs, out / "runs.csv")
    write_text_atomic(out / "comparison.md", comparison)  # rewritten after every job of a sweep
    write_text_atomic(out / "summary.tex", paper_table_tex(rows))
    write_text_atomic(out / "summary.md", _summary_md(sweep, runs, parts, rows, comparison, figures))

    result = {
        "sweep_dir": str(sweep),
        "counts": {k: len(v) for k, v in parts.items()} | {"runs": len(runs), "settings": len(rows)},
        "metrics": list(METRICS),
        "rows": rows,
        "failed": [run_record(r) for r in parts["failed"]],
        "unfinished": [run_record(r) for r in parts["unfinished"]],
        "excluded": [run_record(r) for r in parts["excluded"]],
        "comparisons": comparisons,
        "figures": figures,
    }
    write_json_atomic(out / "summary.json", result)
    result = to_jsonable(result)
    result["outputs"] = {name: str(out / name) for name in OUTPUT_FILES}
    if not quiet:
        c = result["counts"]
        print(f"[sweep_report] {c['runs']} run(s) under {sweep}: {c['done']} done, {c['failed']} failed, "
              f"{c['unfinished']} unfinished, {c['excluded']} excluded -> {c['settings']} setting(s); "
              f"wrote summary.md, summary.csv, summary.tex, comparison.md and {len(figures)} figures to {out}", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="sweep_report",
        description="Summarize a sweep of gn-detect run folders: tables, figures, written comparison.")
    p.add_argument("sweep_dir", help="folder holding the run folders (searched recursively for config.yaml)")
    p.add_argument("--out", default=None, help="where to write the report (default: the sweep folder)")
    p.add_argument("--quiet", action="store_true", help="no summary line on stdout")
    args = p.parse_args(argv)
    try:
        if Path(args.sweep_dir).is_dir():  # a missing sweep folder is said by write_sweep_report
            check_output_path("--out", args.out or args.sweep_dir)
        res = write_sweep_report(args.sweep_dir, args.out, quiet=args.quiet)
    except (FileNotFoundError, ConfigError) as e:
        print(f"sweep_report: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write failing after the check (disk full, a folder gone)
        print(f"sweep_report: writing the report failed: {one_line(e)}", file=sys.stderr)
        return 1
    return 0 if res["counts"]["runs"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
