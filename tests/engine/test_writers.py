import json
import logging
import sys

import pytest
import torch

from gn_detect.engine.env import collect_env
from gn_detect.engine.writers import MetricWriter, write_json_atomic
from gn_detect.runs import read_status, write_status


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    # strict JSON: NaN/Infinity would make json.loads call parse_constant
    return [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) for line in lines]


def test_metric_writer_jsonl_tb_and_log_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gn_detect.engine.writers")
    w = MetricWriter(tmp_path, log_period=2, ims_per_batch=4, progress="log")
    for it in range(5):
        w.train(it, 5, {"loss": torch.tensor(float(it)), "lr": 0.01})
    w.eval(4, {"bbox": {"AP": 0.31, "AP50": 0.5}, "per_class": [0.1, 0.2]})
    w.final({"AP": 0.31, "bad": float("nan")})
    assert w.tb is not None
    w.close()

    recs = _records(tmp_path)
    assert [(r["type"], r["iter"]) for r in recs] == [
        ("train", 1), ("train", 3), ("train", 4), ("eval", 4), ("final", 4)]
    assert recs[0]["loss"] == pytest.approx(0.5)  # window mean of iters 0 and 1
    assert recs[1]["loss"] == pytest.approx(2.5) and recs[2]["loss"] == pytest.approx(4.0)
    assert recs[1]["ims_per_s"] > 0 and recs[1]["sec_per_iter"] > 0
    assert recs[3]["bbox"] == {"AP": 0.31, "AP50": 0.5}
    assert recs[4]["bad"] is None  # NaN written as null
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    lines = [m for m in caplog.messages if m.startswith("iter ")]
    assert len(lines) == 3 and "iter 3 (4/5)" in lines[1] and "ims/s" in lines[1] and "eta" in lines[1]


def test_metric_writer_appends_on_resume(tmp_path):
    with MetricWriter(tmp_path, log_period=1, use_tensorboard=False, progress="none") as w:
        w.train(0, 10, {"loss": 1.0})
    with MetricWriter(tmp_path, log_period=1, use_tensorboard=False, progress="none") as w:
        w.train(5, 10, {"loss": 2.0})
    assert [r["iter"] for r in _records(tmp_path)] == [0, 5]
    with pytest.raises(ValueError, match="reserved"):
        MetricWriter(tmp_path, use_tensorboard=False, progress="none").eval(0, {"iter": 3})


def test_non_main_rank_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    w = MetricWriter(run_dir, log_period=1, rank=1)
    w.train(0, 1, {"loss": 1.0})
    w.eval(0, {"AP": 1.0})
    w.final({"AP": 1.0})
    w.close()
    assert w.tb is None and not run_dir.exists()


def test_status_and_json_helpers(tmp_path):
    write_status(tmp_path, "running", pid=123)
    write_status(tmp_path, "failed", error="boom")
    write_status(tmp_path, "done")
    status = read_status(tmp_path)
    assert status["state"] == "done" and status["error"] is None and status["pid"] == 123
    with pytest.raises(ValueError):
        write_status(tmp_path, "paused")
    write_json_atomic(tmp_path / "x.json", {"a": torch.tensor(1.5), "b": float("inf")})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1.5, "b": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json", "x.json"]


def test_collect_env():
    env = collect_env()
    assert json.loads(json.dumps(env)) == env  # what env.json holds
    assert env["torch"] == torch.__version__ and env["world_size"] == 1
    assert env["git_commit"]  # a sha, or "unknown" outside git / before the first commit
    assert env["device"] and env["num_threads"] >= 1


def test_tqdm_progress_and_missing_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.warns(UserWarning, match="TensorBoard disabled"):
        w = MetricWriter(tmp_path, log_period=2, progress="bar")
    assert w.tb is None
    for it in range(3, 6):  # resumed run: starts mid-way
        w.train(it, 6, {"loss": 1.0})
    assert w._bar is not None and w._bar.n == 6
    w.close()
    assert [r["iter"] for r in _records(tmp_path)] == [3, 5]
    assert not (tmp_path / "tb").exists()
