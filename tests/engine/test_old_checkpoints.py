"""Checkpoints written before the norm table (gn-detect 0.1.0, issue 16) still resume, evaluate
and export. tests/fixtures/description_v0_1.json holds what that version wrote for a tiny model
with BN backbone, GN+WS FPN and per-level BN head: the checkpoint description and the state-dict
key shapes (made with the code of commit 5aebb91). The weights here are this version's, trained a
few steps; their description is replaced by the old one, as an old file would carry it."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gn_detect.config.schema import EvaluateConfig, TrainConfig
from gn_detect.deploy.export import export_run
from gn_detect.deploy.options import ExportConfig
from gn_detect.engine.checkpoint import save_checkpoint
from gn_detect.engine.evaluate import evaluate_checkpoint
from gn_detect.engine.trainer import train
from gn_detect.modeling import build_model

from ._train_utils import one_thread, shapes_root  # noqa: F401  (fixtures)

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "description_v0_1.json").read_text())


def _old_description(data_root: Path) -> dict:
    description = copy.deepcopy(FIXTURE["description"])
    description["config"]["data"]["root"] = str(data_root)
    return description


def test_state_dict_keys_are_those_the_old_version_wrote():
    description = FIXTURE["description"]
    model = build_model(description["config"]["model"], description["model"]["num_classes"])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == FIXTURE["state_dict_shapes"]


@pytest.mark.slow
def test_an_old_checkpoint_resumes_evaluates_and_exports(shapes_root, tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    description = _old_description(shapes_root)
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), description["config"])  # as a command composes it today
    cfg.solver.max_iter = 2
    run_dir = tmp_path / "run"
    train(cfg, run_dir, base_dir=tmp_path)
    for name in ("last.pth", "model_final.pth"):  # as the old version wrote them
        path = run_dir / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        state["description"] = _old_description(shapes_root)
        state["description"]["config"]["solver"]["max_iter"] = 2
        save_checkpoint(path, state)

    cfg.solver.max_iter = 4  # resume for two more steps (drops in iterations: allowed)
    metrics = train(cfg, run_dir, base_dir=tmp_path)
    assert "AP" in metrics
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["type"] == "train"] == [0, 1, 2, 3]

    final = run_dir / "checkpoints" / "model_final.pth"
    state = torch.load(final, weights_only=True)
    state["description"] = _old_description(shapes_root)
    save_checkpoint(final, state)
    evaluated = evaluate_checkpoint(OmegaConf.merge(OmegaConf.structured(EvaluateConfig),
                                                    {"checkpoint": str(final)}), base_dir=tmp_path)
    assert evaluated["AP"] == pytest.approx(metrics["AP"], abs=1e-9)
    check = export_run(OmegaConf.merge(OmegaConf.structured(ExportConfig), {"checkpoint": str(final)}),
                       base_dir=tmp_path)
    assert check["passed"]
