"""train() in-process on the tiny model: the run folder and its records, one TensorBoard point
per evaluation, PreciseBN in a run, the solver.compile hook point, and an interrupted run that
resumes to bit-identical weights and losses."""
from __future__ import annotations

import pytest
import torch

import gn_detect.engine.trainer as trainer_mod
from gn_detect.data import build_dataset, build_train_loader
from gn_detect.engine.precise_bn import update_bn_stats
from gn_detect.engine.train_loop import HookBase
from gn_detect.engine.trainer import build_trainer, train
from gn_detect.modeling import build_model

from ._train_utils import one_thread, read_status, records, shapes_root, tb_scalars, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

BN = {"model.fpn.norm": "bn", "model.head.norm": "bn"}


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def test_run_folder_records_and_tensorboard(shapes_root, tmp_path, capsys):  # noqa: F811
    run_dir = tmp_path / "run"
    final = train(tiny_cfg(shapes_root, **{"eval.period": 2, "eval.full_reports": True}), run_dir, base_dir=tmp_path)
    files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
    for name in ("config.yaml", "env.json", "status.json", "metrics.jsonl", "data_skipped.json", "report.json",
                 "report.md", "per_class.csv", "checkpoints/last.pth", "checkpoints/model_final.pth",
                 "eval/iter_0000001/report.json"):
        assert name in files, (name, sorted(files))
    assert any(f.startswith("tb/events.out.tfevents") for f in files)
    status = read_status(run_dir)
    assert status["state"] == "done" and status["iteration"] == 4
    assert [r["iter"] for r in records(run_dir, "train")] == [0, 1, 2, 3]
    assert [r["iter"] for r in records(run_dir, "eval")] == [1, 3]
    finals = records(run_dir, "final")
    assert len(finals) == 1 and finals[0]["iter"] == 3
    assert {k: v for k, v in finals[0].items() if k not in ("type", "iter", "time")} == final
    assert final["skipped_steps"] == 0 and final["world_size"] == 1 and final["ims_per_sec"] > 0
    # each evaluation once, at the iteration of its metrics.jsonl record (not also at iter + 1)
    assert [s for s, _ in tb_scalars(run_dir, "eval/AP")] == [1, 3]
    assert [s for s, _ in tb_scalars(run_dir, "train/loss")] == [0, 1, 2, 3]
    # the run ends with the results table on the console: AP, the run folder, the report path
    out = capsys.readouterr().out
    table = out[out.index("gn-detect results"):]
    assert f"{final['AP']:.3f}" in table and str(run_dir / "report.md") in table


def test_precise_bn_statistics_are_those_of_the_final_weights(shapes_root, tmp_path, caplog):  # noqa: F811
    caplog.set_level("INFO", logger="gn_detect.engine.precise_bn")
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(shapes_root, **BN, **{"solver.precise_bn.enabled": True, "solver.precise_bn.num_iter": 3,
                                        "eval.period": 2})
    train(cfg, run_dir, base_dir=tmp_path)
    assert caplog.text.count("recomputed over 3 batches") == 2  # before the evaluations at iter 1 and 3
    saved = _weights(run_dir)
    # recompute by hand from the saved weights on the batches after the last iteration
    dataset = build_dataset(cfg.data, "train", base_dir=tmp_path)
    model = build_model(cfg.model, len(dataset.label_to_cat_id))
    model.load_state_dict(saved)
    loader = build_train_loader(dataset, 2, seed=cfg.seed, num_workers=0, start_iter=cfg.solver.max_iter,
                                size_divisibility=128)
    update_bn_stats(model, loader, lambda m, b: m(b[0], b[2], b[1]), num_iter=3)
    stats = [k for k in saved if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k in stats:
        torch.testing.assert_close(model.state_dict()[k], saved[k], rtol=1e-5, atol=1e-6)


def test_compile_pads_batches_to_buckets_and_compiles_the_model(shapes_root, tmp_path, monkeypatch):  # noqa: F811
    """solver.compile: compile_model gets the bare model and the number of bucket shapes, and
    every training batch is padded to one of those shapes (bounded recompilation)."""
    calls = []

    def fake_compile(model, *, num_buckets):
        calls.append((model, num_buckets))
        return model

    monkeypatch.setattr(trainer_mod, "compile_model", fake_compile)
    cfg = tiny_cfg(shapes_root, **{"solver.compile": True, "data.max_size": 300})
    trainer = build_trainer(cfg, tmp_path / "b", base_dir=tmp_path)
    buckets = trainer_mod._buckets(cfg)
    assert calls == [(trainer.bare_model, len(buckets))] and len(buckets) == 4
    shapes = {tuple(next(iter(trainer.data_loader))[0].shape[-2:]) for _ in range(3)}
    assert shapes <= set(buckets)
    trainer.get_hook(trainer_mod.MetricsWriter).writer.close()


class StopAt(HookBase):
    """Asks for a stop at iteration ``at``, as SIGTERM would (SignalHandler calls request_stop)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            self.trainer.request_stop("test stop")


def test_interrupted_and_resumed_equals_uninterrupted(shapes_root, tmp_path):  # noqa: F811
    overrides = {**BN, "solver.max_iter": 8, "solver.warmup_iters": 3, "checkpoint.period": 3, "eval.period": 4,
                 "solver.precise_bn.enabled": True, "solver.precise_bn.num_iter": 2}
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    train(tiny_cfg(shapes_root, **overrides), ref_dir, base_dir=tmp_path)

    out = train(tiny_cfg(shapes_root, **overrides), run_dir, base_dir=tmp_path, hooks=[StopAt(4)])
    assert out.pop("message") == read_status(run_dir)["error"]
    assert out == {"interrupted": True, "iter": 5, "exit_code": 1}  # not a success: no exit status 0
    status = read_status(run_dir)
    assert status["state"] == "interrupted" and status["iteration"] == 5
    assert "test stop" in status["error"] and "rerun the same command" in status["error"]
    last = torch.load(run_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert last["iteration"] == 5 and not (run_dir / "checkpoints" / "model_final.pth").exists()
    assert not records(run_dir, "final")

    train(tiny_cfg(shapes_root, **overrides), run_dir, base_dir=tmp_path)  # the same run folder: resumes
    assert read_status(run_dir)["state"] == "done"
    assert [r["iter"] for r in records(run_dir, "train")] == list(range(8))  # each iteration once
    assert [r["iter"] for r in records(run_dir, "eval")] == [3, 7]
    ref_losses = {r["iter"]: r["loss"] for r in records(ref_dir, "train")}
    assert {r["iter"]: r["loss"] for r in records(run_dir, "train")} == ref_losses
    ref, got = _weights(ref_dir), _weights(run_dir)
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert ref.keys() == got.keys() and not differ, differ[:5]
    assert records(run_dir, "final")[0]["AP"] == records(ref_dir, "final")[0]["AP"]
