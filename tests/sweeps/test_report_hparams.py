"""TensorBoard's HParams view of a sweep, read back through TensorBoard's own HParams plugin (the
code behind ``tensorboard --logdir <sweep dir>``): each finished run writes its swept keys and the
report's headline metrics."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import hparams_plugin
from werkzeug.test import Client

from gn_detect.engine.writers import MetricWriter
from gn_detect.engine.launch import swept_values

FIXED = ["solver.max_iter=2", "sweep_name=hp"]  # fixed overrides: not columns


def _ap(norm: str, seed: int) -> float:
    return (0.30 if norm == "gn" else 0.20) + 0.01 * seed


def _job(run_dir: Path, task: list[str], mode: str = "MULTIRUN") -> None:
    """What Hydra writes into a job's folder (the keys swept_values reads)."""
    (run_dir / ".hydra").mkdir(parents=True)
    job = {"mode": mode, "overrides": {"task": task},
           "job": {"config": {"override_dirname": {"exclude_keys": ["sweep_name", "study"]}}}}
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": job}))


def make_sweep(root: Path) -> Path:
    """A 2x2 sweep as Hydra leaves it: seed swept by a study's sweeper params, norm on the command
    line; each run ends through MetricWriter.final, as a finished training run does."""
    sweep = root / "multirun" / "hp"
    sweep.mkdir(parents=True)
    record = {"hydra": {"sweeper": {"params": {"seed": "0,1"}}, "overrides": {"task": ["norm=bn,gn", *FIXED]}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))
    for norm in ("bn", "gn"):
        for seed in (0, 1):
            run = sweep / f"norm={norm},seed={seed}"
            _job(run, [f"norm={norm}", f"seed={seed}", *FIXED])
            with MetricWriter(run, progress="none", hparams=swept_values(run)) as writer:
                writer.train(0, 2, {"loss": 1.0})
                writer.final({"AP": _ap(norm, seed), "AP50": 0.5, "label_precision": 0.6, "label_recall": 0.7,
                              "ims_per_sec": 3.0, "box_recall": 0.4}, iter=1)
    return sweep


def _plugin_post(logdir: Path, route: str, body: dict) -> dict:
    mx = plugin_event_multiplexer.EventMultiplexer()
    mx.AddRunsFromDirectory(str(logdir))
    mx.Reload()
    ctx = base_plugin.TBContext(logdir=str(logdir), multiplexer=mx,
                                data_provider=data_provider.MultiplexerDataProvider(mx, str(logdir)))
    app = hparams_plugin.HParamsPlugin(ctx).get_plugin_apps()[route]
    resp = Client(app).post("/", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return json.loads(resp.get_data(as_text=True))


def test_hparams_of_a_2x2_sweep_read_back_by_tensorboard(tmp_path):
    sweep = make_sweep(tmp_path)
    exp = _plugin_post(sweep, "/experiment", {"experimentName": ""})
    assert sorted(h["name"] for h in exp["hparamInfos"]) == ["norm", "seed"]
    assert sorted(m["name"]["tag"] for m in exp["metricInfos"]) == ["AP", "AP50", "label_precision", "label_recall"]
    groups = _plugin_post(sweep, "/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [], "startIndex": 0, "sliceSize": 100})["sessionGroups"]
    assert len(groups) == 4
    seen = {}
    for g in groups:
        ap = {m["name"]["tag"]: m["value"] for m in g["metricValues"]}["AP"]
        seen[(g["hparams"]["norm"], int(g["hparams"]["seed"]))] = (ap, g["name"], [s["name"] for s in g["sessions"]])
    assert sorted(seen) == [("bn", 0), ("bn", 1), ("gn", 0), ("gn", 1)]
    for (norm, seed), (ap, name, sessions) in seen.items():
        assert abs(ap - _ap(norm, seed)) < 1e-6  # float32 in the event file
        assert name == f"norm={norm},seed={seed}"  # the row is named by the run folder
        assert sessions == [f"norm={norm},seed={seed}/tb/hparams"]


def test_swept_values_follow_the_folder_naming_rule(tmp_path):
    sweep = tmp_path / "sw"
    sweep.mkdir()
    record = {"hydra": {"sweeper": {"params": {"seed": "0,1,2"}},
                        "overrides": {"task": ["seed=3", "model.norm_opts.bn_group_size=2,4", "norm=bn,gn", "sweep_name=x"]}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))
    run = sweep / "a"
    _job(run, ["seed=3", "model.norm_opts.bn_group_size=4", "norm=gn", "sweep_name=x"])
    # seed=3 on the command line un-sweeps the study's seeds; sweep_name is excluded from names
    assert swept_values(run) == {"model.norm_opts.bn_group_size": 4, "norm": "gn"}
    single = tmp_path / "single"
    _job(single, ["norm=gn"], mode="RUN")
    assert swept_values(single) == {} and swept_values(tmp_path / "no_hydra") == {}


def test_a_run_outside_a_sweep_writes_no_hparams(tmp_path):
    with MetricWriter(tmp_path / "run", progress="none") as writer:
        writer.final({"AP": 0.1}, iter=0)
    assert (tmp_path / "run" / "tb").is_dir() and not (tmp_path / "run" / "tb" / "hparams").exists()
