"""The sweep report on a partial sweep (fabricated folders): a job that never started (only
Hydra's .hydra/ and launch.log) is listed as unfinished with its setting; the progress column
counts completed iterations from status.json, the number the run's own message gives; label
differences between settings whose AP are both below the floor are not called meaningful."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from gn_detect.sweeps import write_sweep_report
from gn_detect.sweeps.compare import AP_FLOOR

from .fabricate import make_config, write_run


def _never_started(run_dir: Path, config: dict) -> None:
    """What Hydra leaves for a job the sweep never ran: .hydra/ (its composed config) and launch.log."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "data": {
        **config["data"], "root": "${oc.env:DATA}"}}))  # interpolations stay unresolved there
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"mode": "MULTIRUN"}}))
    (run_dir / "launch.log").write_text("")


def test_never_started_and_interrupted_runs_in_the_unfinished_table(tmp_path):
    sweep = tmp_path / "sweep"
    final = {"AP": 0.2, "label_precision": 0.5, "label_recall": 0.5}
    write_run(sweep / "norm=gn,seed=0", make_config("gn", 0, 2, max_iter=40), final=final, train_iters=(9, 19, 29, 39))
    stopped = write_run(sweep / "norm=gn,seed=1", make_config("gn", 1, 2, max_iter=40), state="interrupted",
                        error="stopped by signal SIGTERM after 35 iterations; last.pth is kept",
                        train_iters=(9, 19, 29))  # log.period 10: the last record is iteration 29
    status = json.loads((stopped / "status.json").read_text())
    (stopped / "status.json").write_text(json.dumps({**status, "iteration": 35}))
    _never_started(sweep / "norm=gn,seed=2", make_config("gn", 2, 2, max_iter=40))

    res = write_sweep_report(sweep, quiet=True)
    assert res["counts"]["runs"] == 3
    assert [(u["run_dir"], u["state"], u["setting"], u["seed"]) for u in res["unfinished"]] == [
        ("norm=gn,seed=1", "interrupted", "gn", 1), ("norm=gn,seed=2", "not started", "gn", 2)]
    md = (sweep / "summary.md").read_text()
    unfinished = md.split("## Unfinished runs")[1].split("\n## ")[0]
    row = next(ln for ln in unfinished.splitlines() if "norm=gn,seed=1" in ln)
    assert "35/40 iterations done" in row and "after 35 iterations" in row and "29" not in row
    row = next(ln for ln in unfinished.splitlines() if "norm=gn,seed=2" in ln)
    assert "not started" in row and "never started" in row and "?/40" in row
    assert "1 done, 0 failed, 2 running or not started" in md


def _study(sweep: Path, max_iter: int, ap: float) -> None:
    """bn and gn, two seeds each, one optimizer group (max_iter): label precision apart by far more
    than the seed spread (84.5 vs 80.5 %, stds 0.7), AP ``ap`` for all."""
    for norm, precision in (("bn", 0.80), ("gn", 0.84)):
        for seed in (0, 1):
            final = {"AP": ap + 0.001 * seed, "label_precision": precision + 0.01 * seed, "label_recall": 0.9}
            write_run(sweep / f"it={max_iter},norm={norm},seed={seed}", make_config(norm, seed, 8, max_iter=max_iter),
                      final=final)


def test_label_differences_below_the_ap_floor_are_not_meaningful(tmp_path):
    sweep = tmp_path / "sweep"
    _study(sweep, 40, ap=AP_FLOOR / 2)   # AP 0.5 %: the detector barely works
    _study(sweep, 80, ap=0.30)           # AP 30 %: the same label difference means something
    res = write_sweep_report(sweep, quiet=True)
    verdicts = {(c["metric"], c["max_iter"]): c for c in res["comparisons"]}
    low, high = verdicts[("label_precision", 40)], verdicts[("label_precision", 80)]
    assert low["diff"] > low["spread"] and high["diff"] > high["spread"]  # both exceed the seed spread ...
    assert low["verdict"] == "not meaningful" and low["seed_verdict"] == "exceeds"  # ... one is not meaningful
    assert high["verdict"] == "exceeds" and verdicts[("AP", 40)]["verdict"] != "not meaningful"
    text = (sweep / "comparison.md").read_text()
    assert "mean AP are both below 1%" in text  # the floor is stated in the rule
    precision = text.split("## label precision")[1].split("\n## ")[0]
    low_part = precision.split("### ")[1]
    assert "not meaningful: the AP of both is below 1%" in low_part and "**" not in low_part.replace(
        "**8 image(s) per normalization group**", "")
    assert "exceeds the seed spread" in precision.split("### ")[2]
    assert "2 label difference(s) not meaningful" in text  # label precision and label recall at it=40
