"""One process per run folder: a second trainer on a folder stops at once naming the owner's pid
and touches nothing; the lock of a dead process is taken over with a warning; a 'running' status
whose process is gone shows as crashed, to the next start and to the sweep report."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from gn_detect.engine.hooks import MetricsWriter
from gn_detect.engine.run_lock import RunFolderInUse, RunLock
from gn_detect.runs import pid_alive
from gn_detect.engine.trainer import build_trainer, train
from gn_detect.sweeps.collect import load_run

from ._train_utils import REPO, child_env, one_thread, read_status, shapes_root, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

_HOLD = ("import sys, time; from gn_detect.engine.run_lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
         "print('locked', flush=True); time.sleep(120)")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


def _close(trainer) -> None:
    trainer.get_hook(MetricsWriter).writer.close()
    trainer.run_lock.release()


def test_second_trainer_on_one_folder_stops_at_once(shapes_root, tmp_path, monkeypatch):  # noqa: F811
    run_dir = tmp_path / "run"
    first = build_trainer(tiny_cfg(shapes_root), run_dir, base_dir=tmp_path)
    written = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    monkeypatch.setattr("gn_detect.engine.trainer.build_dataset", _no_data)
    try:
        with pytest.raises(RunFolderInUse) as info:
            train(tiny_cfg(shapes_root), run_dir, base_dir=tmp_path)
        msg = str(info.value)
        assert f"in use by pid {os.getpid()} on {socket.gethostname()}" in msg and "\n" not in msg
        assert str(run_dir) in msg and "hydra.run.dir" in msg
        with pytest.raises(RunFolderInUse):  # even a bad config does not mark the owner's run failed
            train(tiny_cfg(shapes_root, **{"model.head.act": "gelu"}), run_dir, base_dir=tmp_path)
        # nothing of the owner's folder was touched: its status still says running, not failed
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == written
        assert read_status(run_dir)["state"] == "running" and read_status(run_dir)["pid"] == os.getpid()
    finally:
        _close(first)
    monkeypatch.undo()
    second = build_trainer(tiny_cfg(shapes_root), run_dir, base_dir=tmp_path)  # released: free again
    _close(second)


def test_lock_and_running_status_of_a_dead_process(shapes_root, tmp_path, caplog):  # noqa: F811
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = _dead_pid()
    host = socket.gethostname()
    (run_dir / ".lock").write_text(json.dumps({"pid": dead, "host": host}))
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "pid": dead, "host": host, "iteration": 3}))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(tiny_cfg(shapes_root))))
    run = load_run(run_dir, tmp_path)  # what the sweep report shows
    assert run.state == "crashed" and str(dead) in run.error
    caplog.set_level("WARNING")
    train(tiny_cfg(shapes_root, **{"solver.max_iter": 1}), run_dir, base_dir=tmp_path)
    assert f"took over the lock of pid {dead}" in caplog.text
    assert f"previous run (pid {dead} on {host}) crashed" in caplog.text
    status = read_status(run_dir)
    assert status["state"] == "done" and status["pid"] == os.getpid() and status["host"] == host
    assert load_run(run_dir, tmp_path).state == "done"


def test_running_status_of_a_live_process_stays_running(shapes_root, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(),
                                                     "host": socket.gethostname()}))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(tiny_cfg(shapes_root))))
    assert load_run(run_dir, tmp_path).state == "running"


def test_a_concurrent_process_holds_the_folder(shapes_root, tmp_path, caplog):  # noqa: F811
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], cwd=str(REPO), env=child_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUse, match=f"in use by pid {holder.pid} "):
            train(tiny_cfg(shapes_root), run_dir, base_dir=tmp_path)
        assert not (run_dir / "status.json").exists()
    finally:
        holder.kill()
        holder.wait()
    caplog.set_level("WARNING")
    train(tiny_cfg(shapes_root, **{"solver.max_iter": 1}), run_dir, base_dir=tmp_path)  # its lock died with it
    assert f"took over the lock of pid {holder.pid}" in caplog.text
    assert read_status(run_dir)["state"] == "done"
    assert json.loads((run_dir / ".lock").read_text() or "{}") == {}  # released: names no owner


def test_lock_file_names_the_owner_while_held(tmp_path):
    lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    with pytest.raises(RunFolderInUse):
        RunLock(tmp_path).acquire()  # a second open file description: refused even in one process
    lock.release()
    lock.release()  # harmless
    RunLock(tmp_path).acquire().release()


def _no_data(*args, **kwargs):
    raise AssertionError("a dataset was read although the folder is in use")
