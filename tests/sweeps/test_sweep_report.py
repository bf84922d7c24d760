"""End-to-end tests of the sweep report on fabricated run folders."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gn_detect.sweeps import write_sweep_report
from gn_detect.sweeps.sweep_report import main

from .fabricate import make_config, write_run

REPO = Path(__file__).resolve().parents[2]
METRICS = ("AP", "AP50", "label_recall", "label_precision", "box_recall", "box_precision",
           "ims_per_sec", "peak_mem_mb")
IMS_PER_DEVICE = 8  # x=2 is emulated with bn_group_size=2, x=8 uses the whole device batch

# AP per (norm, images per norm group) for seeds 0 and 1; gn (no batch statistics) is the reference
# at every group size, stored at its device batch: it beats bn at 2 images per group by far more
# than the seed spread; bn at 8 is within the spread of it.
AP = {
    ("bn", 2): [30.0, 31.0],
    ("bn", 8): [39.0, 40.0],
    ("gn", 8): [40.0, 40.6],
}


def final_metrics(norm: str, x: int, seed: int) -> dict:
    ap = AP[(norm, x)][seed]  # in percent; the final record holds fractions, as evaluation writes them
    m = {
        "AP": ap / 100,
        "AP50": (ap + 18.0 + 0.3 * seed) / 100,
        "AP75": (ap + 2.0) / 100,
        "label_precision": 0.60 + ap / 200 + 0.01 * seed,
        "label_recall": 0.50 + ap / 100 - 0.02 * seed,
        "label_f1": 0.55,
        "box_precision": 0.40 + ap / 300 + 0.005 * seed,
        "box_recall": 0.45 + ap / 250,
        "box_f1": 0.4,
        "ims_per_sec": (12.0 if norm == "bn" else 9.0) + seed * 0.5 + x / 10,
        "peak_mem_mb": 1500.0 + 10 * x + 3 * seed,
        "peak_mem_kind": "process_rss",
    }
    if (norm, x, seed) == ("gn", 8, 1):
        m["peak_mem_mb"] = None  # reported as null
    if (norm, x, seed) == ("bn", 2, 0):
        del m["box_precision"]  # key missing altogether
    return m


def expected(norm: str, x: int, metric: str) -> tuple[float, float, int]:
    vals = [final_metrics(norm, x, s).get(metric) for s in (0, 1)]
    vals = np.array([v for v in vals if v is not None], dtype=float)
    std = float(np.std(vals, ddof=1)) if vals.size >= 2 else math.nan
    return float(np.mean(vals)), std, int(vals.size)


def build_sweep(root: Path) -> Path:
    sweep = root / "multirun" / "2024-01-01" / "12-00-00"
    job = 0
    for norm, x in AP:
        for seed in (0, 1):
            cfg = make_config(norm, seed, IMS_PER_DEVICE, bn_group_size=x if x < IMS_PER_DEVICE else None)
            write_run(sweep / str(job), cfg, final=final_metrics(norm, x, seed))
            job += 1
    write_run(sweep / str(job), make_config("gn", 2, IMS_PER_DEVICE), state="failed",
              error="Traceback (most recent call last):\n  File x\nRuntimeError: loss is NaN at iter 40",
              train_iters=(0, 20, 40))
    job += 1
    write_run(sweep / str(job), make_config("bn", 2, IMS_PER_DEVICE, bn_group_size=2), state="running",
              train_iters=(0, 20), extra_lines=['{"type": "train", "iter": 4'])  # half-written line
    return sweep


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    sweep = build_sweep(root)
    out = root / "report"
    res = write_sweep_report(sweep, out, quiet=True)
    return sweep, out, res


def _num(s: str) -> float:
    return math.nan if s in ("", "n/a") else float(s)


def test_summary_csv_means_and_stds(report):
    _, out, _ = report
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert {(r["setting"], int(r["ims_per_group"])) for r in rows} == set(AP)
    for r in rows:
        norm, x = r["setting"], int(r["ims_per_group"])
        assert int(r["n"]) == 2
        assert r["seeds"] == "0 1"
        assert r["mode"] == ("emulated" if x < IMS_PER_DEVICE else "single process")
        assert r["reference"] == str(norm == "gn")
        assert int(r["ims_per_device"]) == IMS_PER_DEVICE and int(r["world_size"]) == 1
        for m in METRICS:
            mean, std, n = expected(norm, x, m)
            assert _num(r[f"{m}_mean"]) == pytest.approx(mean, rel=1e-12), (norm, x, m)
            if n >= 2:
                assert _num(r[f"{m}_std"]) == pytest.approx(std, rel=1e-12), (norm, x, m)
            else:
                assert r[f"{m}_std"] == "n/a", (norm, x, m)
    gn8 = next(r for r in rows if (r["setting"], r["ims_per_group"]) == ("gn", "8"))
    assert "peak_mem_mb missing for 1 of 2 runs" in gn8["notes"]


def test_summary_json_matches_csv(report):
    _, out, res = report
    data = json.loads((out / "summary.json").read_text())
    assert data["counts"] == {"done": 6, "failed": 1, "unfinished": 1, "excluded": 0, "runs": 8, "settings": 3}
    assert res["counts"] == data["counts"]
    row = next(r for r in data["rows"] if r["setting"] == "bn" and r["ims_per_group"] == 2)
    mean, std, _ = expected("bn", 2, "AP")
    assert row["AP_mean"] == pytest.approx(mean) and row["AP_std"] == pytest.approx(std)
    assert row["box_precision_std"] is None  # one value: no std (JSON null, not NaN)
    for name in res["outputs"]:
        assert (out / name).is_file(), name


def test_failed_and_running_runs_are_listed(report):
    _, out, res = report
    assert [(f["setting"], f["seed"], f["state"]) for f in res["failed"]] == [("gn", 2, "failed")]
    assert "loss is NaN" in res["failed"][0]["error"]
    assert [(u["setting"], u["seed"], u["state"]) for u in res["unfinished"]] == [("bn", 2, "running")]
    md = (out / "summary.md").read_text()
    failed_section = md.split("## Failed runs")[1].split("##")[0]
    assert "RuntimeError: loss is NaN at iter 40" in failed_section
    assert "`6`" in failed_section  # the run folder
    unfinished = md.split("## Unfinished runs")[1].split("##")[0]
    assert "`7`" in unfinished and "running" in unfinished and "21/100 iterations done" in unfinished  # no status count: last record + 1
    runs_csv = list(csv.DictReader(open(out / "runs.csv", newline="")))
    assert sorted(r["state"] for r in runs_csv) == ["done"] * 6 + ["failed", "running"]


def test_figures_and_series(report):
    _, out, _ = report
    for name in ("ap_vs_batch.png", "label_pr_bars.png", "speed_memory.png", "loss_curves.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    figs = json.loads((out / "figures.json").read_text())
    line, band = figs["ap_vs_batch"]["series"]
    assert (line["name"], line["kind"], band["name"], band["kind"]) == ("bn", "line", "gn", "band")
    assert line["points"] == 2 and line["x"] == [2, 8]
    assert line["mean"] == pytest.approx([np.mean(AP[("bn", 2)]) / 100, np.mean(AP[("bn", 8)]) / 100])
    for vals, x in zip(line["values"], (2, 8)):
        assert vals == pytest.approx([v / 100 for v in AP[("bn", x)]])
    assert band["mean"] == pytest.approx(np.mean(AP[("gn", 8)]) / 100)
    assert band["std"] == pytest.approx(np.std(AP[("gn", 8)], ddof=1) / 100)
    bars = figs["label_pr_bars"]["series"]
    assert [s["name"] for s in bars] == ["label_precision", "label_recall"]
    assert all(s["points"] == 3 for s in bars)
    loss = figs["loss_curves"]["series"]
    assert len(loss) == 8  # every run with training records, failed and running included
    assert sorted(s["points"] for s in loss) == [2, 3] + [5] * 6


def test_comparison_flags_large_not_small(report):
    _, out, res = report
    text = (out / "comparison.md").read_text()
    assert "|mean_a - mean_b| > std_a + std_b" in text  # the rule is stated
    ap_section = text.split("## AP")[1].split("## ")[0]
    x2 = ap_section.split("**2 image(s) per normalization group**")[1].split("**8 image(s)")[0]
    x8 = ap_section.split("**8 image(s) per normalization group**")[1]
    assert "**bn @2 vs gn: gn higher by 9.8, exceeds the seed spread 1.1**" in x2
    assert "exceeds" not in x8 and "within the seed spread" in x8
    verdicts = {(c["metric"], c["ims_per_group"]): c["verdict"] for c in res["comparisons"]}
    assert verdicts[("AP", 2)] == "exceeds"
    assert verdicts[("AP", 8)] == "within"
    assert text.strip() in (out / "summary.md").read_text()


def test_cli_subprocess(report, tmp_path):
    sweep, _, _ = report
    out = tmp_path / "cli_out"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "sweep_report.py"), str(sweep), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "8 run(s)" in proc.stdout and "6 done, 1 failed" in proc.stdout
    assert (out / "summary.csv").is_file() and (out / "comparison.md").is_file()


def test_cli_main_default_out_and_missing_folder(tmp_path, capsys):
    sweep = tmp_path / "sw"
    write_run(sweep / "a", make_config("gn", 0, 2), final=final_metrics("gn", 8, 0))
    assert main([str(sweep)]) == 0
    assert "1 run(s)" in capsys.readouterr().out
    assert (sweep / "summary.md").is_file()  # default: into the sweep folder
    assert main([str(tmp_path / "nope")]) == 2
    # a second report over the same folder does not take its own outputs for runs
    assert main([str(sweep), "--quiet"]) == 0


def test_percent_tables_and_latex(report):
    _, out, _ = report
    md = (out / "summary.md").read_text()
    results = md.split("## Results (ready to paste)")[1].split("\n## ")[0]
    # bn @ 2: AP 30.0, 31.0 -> 30.5 ± 0.7 (percent, one decimal)
    assert "| bn (emulated) | 2 | 2 | 30.5 ± 0.7 |" in results, results
    assert "0.305" not in md and "0.3050" not in md
    settings = md.split("## Settings")[1].split("\n## ")[0]
    assert "30.5 ± 0.7" in settings and "AP (%)" in settings
    comparison = (out / "comparison.md").read_text()
    assert "(30.5 ± 0.7, n=2 vs 40.3 ± 0.4, n=2)" in comparison
    assert "| gn | any | 2 | 40.3 ± 0.4 |" in results  # a reference: any images per group
    tex = (out / "summary.tex").read_text()
    assert tex.count("\\begin{tabular}") == 1 == tex.count("\\end{tabular}")
    ncols = len(tex.split("\\begin{tabular}{")[1].split("}")[0])
    rows = [ln for ln in tex.splitlines() if ln.endswith("\\\\")]
    assert len(rows) == 1 + 3 and all(ln.count(" & ") == ncols - 1 for ln in rows)
    assert "$30.5 \\pm 0.7$" in tex
    data = json.loads((out / "summary.json").read_text())
    bn2 = next(r for r in data["rows"] if r["setting"] == "bn" and r["ims_per_group"] == 2)
    assert bn2["AP_mean"] == pytest.approx(0.305, rel=1e-12) and bn2["AP_values"] == pytest.approx([0.30, 0.31])


def test_single_seed_has_no_pm_and_latex_escapes(tmp_path):
    sweep = tmp_path / "sw"
    cfg = make_config("gn_ws", 0, 2)
    write_run(sweep / "a", cfg, final={"AP": 0.4957, "AP50": 0.7, "label_precision": 0.5, "label_recall": 0.25,
                                        "ims_per_sec": 77.04, "peak_mem_mb": 7612.3, "peak_mem_kind": "process_rss"})
    write_sweep_report(sweep, quiet=True)
    md = (sweep / "summary.md").read_text()
    assert "| gn_ws | any | 1 | 49.6 | 70.0 | 50.0 | 25.0 |" in md
    table = [ln for ln in md.split("## Results")[1].split("\n## ")[0].splitlines() if ln.startswith("|")]
    assert len(table) == 3 and not any("±" in ln for ln in table)
    assert "| 77.0 | 7612 |" in md
    tex = (sweep / "summary.tex").read_text()
    assert "gn\\_ws & any & 1 & $49.6$ & $70.0$ & $50.0$ & $25.0$ \\\\" in tex
    assert "label P (\\%)" in tex
    assert "speed_memory.png" in md


def test_label_baseline_beside_label_p_and_degenerate_marked(tmp_path: Path) -> None:
    # two seeds of one setting; seed 1's run flagged its label P/R as not above the baseline
    sweep = tmp_path / "multirun" / "s"
    finals = [{"AP": 0.01, "label_precision": 0.83, "label_recall": 0.5, "label_baseline_precision": 0.82,
               "label_degenerate": s == 1} for s in (0, 1)]
    for s, fin in enumerate(finals):
        write_run(sweep / str(s), make_config("gn", s, IMS_PER_DEVICE), final=fin)
    res = write_sweep_report(sweep, tmp_path / "out", quiet=True)
    (row,) = res["rows"]
    assert row["label_baseline_precision_mean"] == pytest.approx(0.82) and row["label_degenerate_n"] == 1
    md = (tmp_path / "out" / "summary.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| setting |") and "label P base" in ln)
    cells = [c.strip() for c in header.strip("|").split("|")]
    line = next(ln for ln in md.splitlines() if ln.startswith("| gn ") and "degenerate" in ln)
    values = [c.strip() for c in line.strip("|").split("|")]
    assert values[cells.index("label P base (%)")] == "82.0 ± 0.0"
    assert values[cells.index("label P (%)")].endswith("(degenerate 1/2)")
