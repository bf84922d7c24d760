"""A real CPU sweep end to end: tools/train.py -m -> run folders -> the sweep report (written by
the Hydra callback), then resume semantics (finished runs skipped, deleted/failed ones re-run)
and failure isolation (a run failing at start-up is recorded and the others go on).

2 norms x 2 images per device x 2 seeds = 8 runs of the tiny model on synthetic shapes, 3
iterations each. Images are 96 px resized to 160 (padded to 256): BN over one image needs the
smallest FPN level (stride 128) to have more than one pixel, which a 128-px pad does not give.
About 40 s on two CPU cores for the whole module.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "tools" / "train.py"
pytestmark = pytest.mark.slow

REPORT_FILES = ("summary.csv", "summary.md", "summary.json", "comparison.md", "ap_vs_batch.png",
                "label_pr_bars.png", "loss_curves.png", "figures.json")
RUN_FILES = ("config.yaml", "env.json", "status.json", "metrics.jsonl", "report.json")
MAX_ITER = 3


def tiny_overrides(tmp: Path) -> list[str]:
    return [
        f"data.root={tmp / 'shapes'}",
        "data.synthetic.num_train=12", "data.synthetic.num_val=6", "data.synthetic.image_size=96",
        "data.min_size_train=[160]", "data.min_size_test=160", "data.max_size=256",
        "data.num_workers=0", "eval.num_vis_images=0", "checkpoint.period=1000",
        "log.progress=log", "log.period=1",
        f"solver.max_iter={MAX_ITER}", "solver.warmup_iters=1",
    ]


def run_sweep(tmp: Path, sweep_dir: Path, sweep_args: list[str],
              check: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, str(TRAIN), "-m", *sweep_args, *tiny_overrides(tmp),
           f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    assert not check or proc.returncode == 0, f"sweep exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc, elapsed


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.rglob("config.yaml") if ".hydra" not in p.parts)


def run_config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


MAIN_SWEEP = ["norm=bn,gn", "data.ims_per_device=1,2", "seed=0,1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("sweep_run")
    sweep_dir = tmp / "sweep"
    proc, elapsed = run_sweep(tmp, sweep_dir, MAIN_SWEEP)
    print(f"\n[test_sweep_run] 8-run sweep: {elapsed:.1f}s")
    return {"tmp": tmp, "dir": sweep_dir, "proc": proc, "elapsed": elapsed}


def test_sweep_writes_run_folders_and_report(sweep: dict) -> None:
    sweep_dir: Path = sweep["dir"]
    out = output(sweep["proc"])
    assert "FAILED" not in out, out[-3000:]
    assert "[sweep_report] 8 run(s)" in out and "8 done, 0 failed" in out

    runs = run_dirs(sweep_dir)
    assert len(runs) == 8, [r.name for r in runs]
    combos = set()
    for r in runs:
        assert r.parent == sweep_dir, f"run folder is not one level under the sweep folder: {r}"
        for name in RUN_FILES:
            assert (r / name).is_file(), f"{r.name}: {name} missing"
        assert json.loads((r / "status.json").read_text())["state"] == "done"
        records = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert [rec["iter"] for rec in records if rec["type"] == "train"] == list(range(MAX_ITER))
        assert sum(rec["type"] == "final" for rec in records) == 1
        cfg = run_config(r)
        combos.add((cfg["norm"]["name"], cfg["data"]["ims_per_device"], cfg["seed"]))
    assert combos == {(n, b, s) for n in ("bn", "gn") for b in (1, 2) for s in (0, 1)}

    for name in REPORT_FILES:
        assert (sweep_dir / name).is_file() and (sweep_dir / name).stat().st_size > 0, name

    with open(sweep_dir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["setting"], int(r["ims_per_group"])) for r in rows) == [
        ("bn", 1), ("bn", 2), ("gn", 1), ("gn", 2)]
    for r in rows:
        assert int(r["n"]) == 2 and r["mode"] == "single process", r

    figures = json.loads((sweep_dir / "figures.json").read_text())
    ap = {s["name"]: s for s in figures["ap_vs_batch"]["series"]}
    assert set(ap) == {"bn", "gn"}
    for s in ap.values():
        assert s["points"] == 2 and s["x"] == [1, 2] and s["n"] == [2, 2], s
    loss = figures["loss_curves"]["series"]
    assert len(loss) == 8
    assert all(s["points"] == MAX_ITER for s in loss)
    for bar in figures["label_pr_bars"]["series"]:
        assert len(bar["settings"]) == 4

    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"]["done"] == 8 and summary["counts"]["settings"] == 4
    assert summary["failed"] == [] and summary["unfinished"] == []


def test_rerun_skips_finished_and_reruns_deleted_or_failed(sweep: dict) -> None:
    sweep_dir: Path = sweep["dir"]
    runs = run_dirs(sweep_dir)
    assert len(runs) == 8
    deleted, failed = runs[0], runs[-1]
    kept = {r: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs[1:-1]}
    shutil.rmtree(deleted)
    # a run that failed early: status failed, no checkpoint, partial metrics
    shutil.rmtree(failed / "checkpoints")
    (failed / "metrics.jsonl").write_text('{"type": "train", "iter": 0, "loss": 1.0}\n')
    (failed / "status.json").write_text(json.dumps({"state": "failed", "error": "RuntimeError: boom"}))

    proc, elapsed = run_sweep(sweep["tmp"], sweep_dir, MAIN_SWEEP)
    out = output(proc)
    print(f"\n[test_sweep_run] re-run (6 skipped, 2 re-run): {elapsed:.1f}s (first run {sweep['elapsed']:.1f}s)")
    skipped = [line for line in out.splitlines() if "skip (already done)" in line]
    assert len(skipped) == 6, out[-3000:]
    assert not any(str(deleted) in line or str(failed) in line for line in skipped)
    assert "FAILED" not in out
    assert "8 done, 0 failed" in out

    for r in (deleted, failed):
        assert json.loads((r / "status.json").read_text())["state"] == "done"
        records = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert sum(rec["type"] == "final" for rec in records) == 1
        assert (r / "checkpoints" / "last.pth").is_file()
    assert len(run_dirs(sweep_dir)) == 8
    # the skipped runs were not touched (no training, no evaluation, nothing appended)
    for r, mtime in kept.items():
        assert (r / "metrics.jsonl").stat().st_mtime_ns == mtime, r.name


def test_failed_run_is_reported_and_does_not_stop_the_sweep(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "failing"
    # A backbone weights file that is not a checkpoint: the config is valid (pre-flight passes),
    # the run fails at its start (the weights are read before the data); the run without weights goes on.
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_text("not a checkpoint")
    proc, _ = run_sweep(tmp_path, sweep_dir, ["norm=bn", "data.ims_per_device=2", "model.norm_opts.bn_group_size=1",
                                              f"model.backbone.weights={bad},null", "seed=0"], check=False)
    out = output(proc)
    # the sweep went on, wrote its report, and exits 1 naming the failed run in its last line
    assert proc.returncode == 1, out[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("[gn-detect] sweep not complete: 1 of 2 run(s) not done") and "not_a_checkpoint" in last
    failed_lines = [line for line in proc.stdout.splitlines() if line.startswith("[gn-detect] FAILED run")]
    assert len(failed_lines) == 1 and "not_a_checkpoint" in failed_lines[0], out[-3000:]
    assert "cannot read" in failed_lines[0]
    assert "1 done, 1 failed" in out

    runs = {run_config(r)["model"]["backbone"]["weights"]: r for r in run_dirs(sweep_dir)}
    assert set(runs) == {str(bad), None}
    status = json.loads((runs[str(bad)] / "status.json").read_text())
    assert status["state"] == "failed" and "WeightsError" in status["error"]
    assert json.loads((runs[None] / "status.json").read_text())["state"] == "done"

    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"]["failed"] == 1 and summary["counts"]["done"] == 1
    [failed] = summary["failed"]
    assert "cannot read" in json.dumps(failed)
    md = (sweep_dir / "summary.md").read_text()
    failed_section = md.split("## Failed runs", 1)[1].split("##", 1)[0]
    assert "not_a_checkpoint" in failed_section and "cannot read" in failed_section
    [row] = summary["rows"]
    assert row["mode"] == "emulated" and row["ims_per_group"] == 1


def test_invalid_sweep_value_is_refused_before_any_run(tmp_path: Path) -> None:
    """A config error in any combination stops the whole command at once, one line, no folder."""
    sweep_dir = tmp_path / "refused"
    proc, _ = run_sweep(tmp_path, sweep_dir, ["norm=bn", "data.ims_per_device=2",
                                              "model.norm_opts.bn_group_size=1,3", "seed=0"], check=False)
    assert proc.returncode == 2
    assert "model.norm_opts.bn_group_size: 3 must divide data.ims_per_device=2" in output(proc)
    assert not sweep_dir.exists()


STUDIES = {
    # study: (hydra.sweeper.params, data.ims_per_device it sets)
    "batch_size": ({"norm": "bn,gn,gn_ws", "data.ims_per_device": "1,2,4,8,16", "seed": "0"}, 2),
    "batch_size_emulated": ({"model.norm_opts.bn_group_size": "1,2,4,8,16", "seed": "0"}, 16),
    "where_gn": ({"norm": "affine,gn_fpn_head,gn_ws", "seed": "0,1,2"}, 16),
    "from_scratch": ({"norm": "bn,gn,gn_ws,ln_pn", "seed": "0,1,2"}, 16),
}


def compose_study(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from gn_detect.engine.launch import CONFIG_DIR  # registers the gn_* resolvers

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_study_config_expands(study: str) -> None:
    """`-m +study=<name>` composes: its own sweep folder, the swept values, the GPU model and
    data, LR scaling; the tiny model and shapes can be swapped in from the command line."""
    from omegaconf import OmegaConf

    params, ims_per_device = STUDIES[study]
    cfg = compose_study([f"+study={study}"])
    assert cfg.sweep_name == study
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == params
    assert cfg.model.name == "retinanet_r50_fpn" and cfg.data.name == "coco"
    assert cfg.solver.scale_lr is True and cfg.solver.reference_batch == 16 and cfg.solver.max_iter == 90000
    assert cfg.data.ims_per_device == ims_per_device
    assert "study" in cfg.hydra.job.config.override_dirname.exclude_keys
    if study == "where_gn":
        with pytest.raises(Exception, match="model.backbone.weights=/path/to/resnet50.pth"):
            OmegaConf.to_container(cfg.model, resolve=True)
    else:
        assert cfg.model.backbone.weights is None and cfg.model.backbone.freeze_at == 0

    cpu = compose_study([f"+study={study}", "model=retinanet_tiny", "data=shapes", "schedule=short",
                         "model.backbone.weights=null", "model.backbone.freeze_at=0"])
    assert cpu.model.name == "retinanet_tiny" and cpu.data.name == "shapes" and cpu.solver.max_iter == 100
    assert cpu.sweep_name == study


def test_run_folder_names_are_one_safe_component() -> None:
    from gn_detect.engine.launch import safe_dirname

    assert safe_dirname("data.root=/data/coco,norm=gn") == "data.root=%2Fdata%2Fcoco,norm=gn"
    long = ",".join(f"key{i}=value{i}" for i in range(60))
    a, b = safe_dirname(long), safe_dirname(long + "x")
    assert len(a) <= 240 and "/" not in a and a == safe_dirname(long) and a != b
