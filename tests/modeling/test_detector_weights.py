"""``model.weights``: whole-detector files told from their content, their sources' settings in the
config (a contradicting setting refused in one line), their weights loaded by name, and the class
logits kept, matched by COCO name or re-initialized (issue 27, items 1 and 3).

torchvision's own ``retinanet_resnet50_fpn[_v2]`` (random weights, never downloaded) give the
files; the COCO ids of the class rows are the published ones (person 1, dog 18).
Output parity with torchvision is scripts/detector_parity.py's (tests/modeling/test_detector_parity.py).
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gn_detect.checkpoint.detector_files import DetectorWeightsError, read_detector
from gn_detect.checkpoint.torchvision_detector import map_torchvision
from gn_detect.config import ConfigError
from gn_detect.config.schema import ModelConfig, TrainConfig
from gn_detect.config.validate import validate_train_config
from gn_detect.modeling import build_model
from gn_detect.modeling.detector_weights import resolve_detector_conventions

PERSON, DOG = 1, 18  # COCO category ids = torchvision's class rows
A = 9                # anchors per cell


@pytest.fixture(scope="module")
def tv_states() -> dict[str, dict[str, torch.Tensor]]:
    from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

    torch.manual_seed(0)
    return {"torchvision_v1": retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict(),
            "torchvision_v2": retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict()}


@pytest.fixture(scope="module")
def v1_file(tv_states, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tv") / "retinanet_v1.pth"
    torch.save({"model": {f"module.{k}": v for k, v in tv_states["torchvision_v1"].items()}}, path)
    return path


def _model_cfg(**keys):
    cfg = OmegaConf.structured(ModelConfig)
    for k, v in keys.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg


@pytest.mark.parametrize("version", ["torchvision_v1", "torchvision_v2"])
def test_torchvision_maps_every_model_key_and_tells_v1_from_v2(tv_states, version):
    state = tv_states[version]
    md = map_torchvision(state)
    assert md.source == version
    assert md.conventions["fpn.top_block_in"] == ("c5" if version.endswith("v2") else "p5")
    assert md.conventions["head.norm"] == ("gn" if version.endswith("v2") else "none")
    # wrapped and DDP-prefixed: the same map
    again = map_torchvision({"state_dict": {f"module.{k}": v for k, v in state.items()}})
    assert again.state_dict.keys() == md.state_dict.keys() and again.source == version
    cfg = _model_cfg(**md.conventions)
    with torch.device("meta"):
        model = build_model(cfg, 91)
    own = {k for k in model.state_dict() if not k.startswith("criterion.")}
    # BN statistics fold into the affine backbone (no keys of their own); nothing else is left over
    extra = {k for k in md.state_dict.keys() - own if not k.endswith(("running_mean", "running_var"))}
    assert own <= md.state_dict.keys() and not extra
    assert {k for k in md.ignored} == {k for k in state if k.endswith("num_batches_tracked")}
    assert md.class_names[PERSON] == "person" and md.class_names[DOG] == "dog" and md.class_names[0] is None


def test_torchvision_v1_written_by_older_torchvision_maps_the_same(tv_states):
    """torchvision < 0.13 saved the head towers as nn.Sequential(conv, relu, ...): conv.{2k}.*"""
    new = tv_states["torchvision_v1"]
    old = {}
    for k, v in new.items():
        for head in ("classification_head", "regression_head"):
            for i in range(4):
                k = k.replace(f"head.{head}.conv.{i}.0.", f"head.{head}.conv.{2 * i}.")
        old[k] = v
    assert old.keys() != new.keys()
    a, b = map_torchvision(new), map_torchvision(old)
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(a.state_dict[k] is b.state_dict[k] for k in a.state_dict)


def test_a_file_mixing_v1_and_v2_is_refused(tv_states):
    mixed = dict(tv_states["torchvision_v1"])
    mixed["backbone.fpn.extra_blocks.p6.weight"] = tv_states["torchvision_v2"]["backbone.fpn.extra_blocks.p6.weight"]
    with pytest.raises(ConfigError, match="mixing v1 and v2") as e:
        map_torchvision(mixed)
    assert "\n" not in str(e.value)


def test_the_source_settings_fill_defaults_and_a_contradiction_is_one_line(v1_file):
    cfg = _model_cfg(weights=str(v1_file))
    md = resolve_detector_conventions(cfg)
    assert md.source == "torchvision_v1"
    assert cfg.anchors.style == "torchvision" and cfg.size_divisibility == 32 and cfg.fpn.top_block_in == "p5"
    assert cfg.backbone.norm_opts.eps == 0.0 and cfg.input.format == "RGB" and cfg.backbone.stride_in_1x1 is False
    with pytest.raises(ConfigError) as e:
        resolve_detector_conventions(_model_cfg(weights=str(v1_file), **{"fpn.top_block_in": "c5"}))
    msg = str(e.value)
    assert msg.startswith("model.fpn.top_block_in: 'c5', but the torchvision_v1 file") and "'p5'" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match=r"^model.backbone.norm: 'gn'"):
        resolve_detector_conventions(_model_cfg(weights=str(v1_file), **{"backbone.norm": "gn"}))
    # BN statistics also fill bn (the frozen eps 0 is then not the source's to set)
    bn = _model_cfg(weights=str(v1_file), **{"backbone.norm": "bn"})
    resolve_detector_conventions(bn)
    assert bn.backbone.norm == "bn" and bn.backbone.norm_opts.eps is None


def test_two_starting_points_are_refused_in_one_line(tmp_path):
    for key in ("model.backbone.weights", "init_weights"):
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"data": {"root": str(tmp_path)}})
        OmegaConf.update(cfg, "model.weights", "a.pth")
        OmegaConf.update(cfg, key, "b.pth")
        with pytest.raises(ConfigError, match=rf"^model.weights: is set together with {key}") as e:
            validate_train_config(cfg)
        assert "\n" not in str(e.value)


def test_a_file_of_no_detector_is_refused_in_one_line(tmp_path):
    plain = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, plain)
    with pytest.raises(DetectorWeightsError, match="holds no whole RetinaNet.*model.backbone.weights") as e:
        read_detector(plain)
    assert "\n" not in str(e.value)
    with pytest.raises(DetectorWeightsError, match="does not exist"):
        read_detector(tmp_path / "nothing.pth")


def _rows(weight: torch.Tensor, ids: list[int], k: int = 91) -> torch.Tensor:
    # row a * K + k of the class-logit conv: anchor a, class k (torchvision's and gn-detect's layout)
    return torch.stack([weight[a * k + c] for a in range(A) for c in ids])


@pytest.mark.slow
def test_class_rows_of_coco_names_are_kept_others_reinitialized(tv_states, v1_file):
    file_w = tv_states["torchvision_v1"]["head.classification_head.cls_logits.weight"]
    file_b = tv_states["torchvision_v1"]["head.classification_head.cls_logits.bias"]
    kept = build_model({"weights": str(v1_file)}, 2, ["dog", "person"])
    assert torch.equal(kept.head.cls_score.weight.detach(), _rows(file_w, [DOG, PERSON]))
    assert torch.equal(kept.head.cls_score.bias.detach(), _rows(file_b[:, None], [DOG, PERSON])[:, 0])
    rows = kept.weights_report["class_rows"]
    assert [(r["class"], r["file_row"]) for r in rows["kept"]] == [("dog", DOG), ("person", PERSON)]
    assert not rows["reinitialized"] and len(rows["dropped"]) == 89
    assert torch.equal(kept.fpn.p7.weight.detach(), tv_states["torchvision_v1"]["backbone.fpn.extra_blocks.p7.weight"])
    prior = -math.log((1 - 0.01) / 0.01)
    for names, mode in ((["dog", "widget"], "auto"), (["dog", "person"], "reinit")):
        torch.manual_seed(1)
        model = build_model({"weights": str(v1_file), "weights_classes": mode}, 2, names)
        w = model.head.cls_score.weight.detach()
        assert w.shape == (A * 2, 256, 3, 3) and abs(w.std().item() - 0.01) < 5e-4
        assert torch.allclose(model.head.cls_score.bias.detach(), torch.full((A * 2,), prior))
        assert model.weights_report["class_rows"]["reinitialized"] == names
        assert torch.equal(model.head.bbox_pred.weight.detach(),
                           tv_states["torchvision_v1"]["head.regression_head.bbox_reg.weight"])
    with pytest.raises(ConfigError, match=r"weights_classes=match, but 1 run class.*'widget'") as e:
        build_model({"weights": str(v1_file), "weights_classes": "match"}, 2, ["dog", "widget"])
    assert "\n" not in str(e.value)


def test_a_gn_detect_checkpoint_brings_its_model_and_categories(tmp_path):
    from gn_detect.engine.description import describe_run
    from tests.engine._train_utils import tiny_cfg

    cfg = tiny_cfg(tmp_path, **{"model.head.norm": "gn", "model.norm_opts.num_groups": 8})
    resolved = OmegaConf.to_container(cfg, resolve=True)
    cats = [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}, {"id": 11, "name": "c"}]
    torch.manual_seed(0)
    source = build_model(cfg.model, 3)
    path = tmp_path / "model_final.pth"
    torch.save({"format": "gn_detect.checkpoint/1", "iteration": 4, "model": source.state_dict(),
                "description": describe_run(resolved, cats, {})}, path)
    model = build_model({"weights": str(path)}, 2, ["c", "a"])  # the schema's defaults everywhere else
    assert model.norms["head"].norm == "gn" and model.backbone.output_shape() == source.backbone.output_shape()
    src, got = source.state_dict(), model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src.items() if not k.startswith(("head.cls_score", "criterion")))
    k = 3
    assert torch.equal(got["head.cls_score.weight"], torch.stack([src["head.cls_score.weight"][a * k + c]
                                                                  for a in range(A) for c in (2, 0)]))


@pytest.fixture(scope="module")
def detector_files(v1_file) -> dict[str, Path]:
    """One whole-detector file per source the converter is checked on."""
    return {"torchvision_v1": v1_file}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["torchvision_v1"])
def test_convert_weights_round_trip_of_a_detector(detector_files, source, tmp_path, capsys):
    from tests.modeling.test_weight_sources import convert_tool  # tools/convert_weights.py, imported once

    original = detector_files[source]
    out = tmp_path / "converted.pth"
    assert convert_tool.main([str(original), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"detector   {source}: loadable as model.weights={out}" in printed
    assert "mapped     backbone.body.conv1.weight -> backbone.conv1.weight" in printed
    assert torch.load(out, weights_only=True)["source"] == source
    a, b = read_detector(original), read_detector(out)
    assert b.source == a.source and b.conventions == a.conventions and b.class_names == a.class_names
    torch.manual_seed(0)
    from_original = build_model({"weights": str(original)}, 2, ["dog", "person"]).state_dict()
    torch.manual_seed(0)
    from_converted = build_model({"weights": str(out)}, 2, ["dog", "person"]).state_dict()
    assert from_original.keys() == from_converted.keys()
    assert all(torch.equal(from_original[k], from_converted[k]) for k in from_original)


def test_a_whole_detector_given_as_backbone_weights_points_to_model_weights(v1_file):
    with pytest.raises(ConfigError, match=r"^model.backbone.weights: .*whole detector: give it as model.weights") as e:
        build_model({"backbone": {"weights": str(v1_file)}}, 2)
    assert "\n" not in str(e.value)


def test_a_contradiction_stops_the_start_before_any_data_is_read(v1_file, tmp_path):
    """train(): data.root does not exist here, and the run folder gets no file."""
    from gn_detect.engine.trainer import train
    from tests.engine._train_utils import tiny_cfg

    cfg = tiny_cfg(tmp_path / "no_data", **{"model.weights": str(v1_file)})  # the tiny model: depth 'tiny'
    with pytest.raises(ConfigError, match=r"^model.backbone.depth: 'tiny', but the torchvision_v1 file .*'50'") as e:
        train(cfg, tmp_path / "run", base_dir=tmp_path)
    assert "\n" not in str(e.value) and "model=" in str(e.value)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_the_pre_flight_refuses_a_contradiction_in_one_line(v1_file, tmp_path):
    """tools/train.py: a setting that contradicts model.weights' file is a pre-flight line (exit 2),
    before any annotation file is read and before Hydra starts a run."""
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.engine._train_utils import child_env

    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "model=retinanet_tiny",
                           f"model.weights={v1_file}", "data=coco", f"data.root={tmp_path / 'nothing'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=str(tmp_path), capture_output=True, text=True,
                          env=child_env(HYDRA_FULL_ERROR="0", PYTHONPATH=str(REPO)), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("gn-detect:")]
    assert "config error: model.backbone.norm: 'gn', but the torchvision_v1 file" in said[0], said  # norm=gn_ws default
    assert len(said) == 1, said  # refused before the annotation files were looked at (none exists here)
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_damaged_or_hand_made_detector_file_is_one_line(tmp_path):
    """A file that looks like a source but is not one (a checkpoint whose description is a string, a
    converted file without its conventions or with keys that are no model keys, class logits that
    do not divide into the class rows) is one line naming the file; a converted file cannot say
    where weights come from."""
    from gn_detect.checkpoint.detector_files import CONVERTED_FORMAT

    cases = {
        "ckpt.pth": {"description": "x", "model": {}},
        "no_conventions.pth": {"format": CONVERTED_FORMAT, "source": "torchvision_v1", "state_dict": {},
                               "class_names": ["a"]},
        "unknown_key.pth": {"format": CONVERTED_FORMAT, "source": "torchvision_v1", "conventions": {"nosuch.key": 3},
                            "state_dict": {"head.cls_score.weight": torch.zeros(9, 4, 3, 3)}, "class_names": ["a"]},
        "rows.pth": {"format": CONVERTED_FORMAT, "source": "torchvision_v1", "conventions": {},
                     "state_dict": {"head.cls_score.weight": torch.zeros(10, 4, 3, 3)}, "class_names": ["a", "b", "c"]},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(DetectorWeightsError, match=rf"^model.weights: {tmp_path / name}: ") as e:
            read_detector(tmp_path / name)
        assert "\n" not in str(e.value), name
    torch.save({"format": CONVERTED_FORMAT, "source": "torchvision_v1",
                "conventions": {"backbone.weights": "/etc/passwd", "fpn.top_block_in": "c5"},
                "state_dict": {"head.cls_score.weight": torch.zeros(9, 4, 3, 3)}, "class_names": ["a"]},
               tmp_path / "where.pth")
    assert read_detector(tmp_path / "where.pth").conventions == {"fpn.top_block_in": "c5"}
