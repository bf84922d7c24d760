"""Fine-tuning a COCO detector on a user's own 2-class json through tools/train.py (issue 27's
Done-when): ``model.weights=`` a torchvision ``retinanet_resnet50_fpn`` file (random weights,
saved here), the class logits re-initialized for the user's classes, everything else loaded,
logged and written to the run folder; the run trains and evaluates. The file's frozen stem is in
the final checkpoint unchanged (loaded, not re-initialized), its settings in config.yaml.

A pickle that would run code given as ``model.weights`` is refused in one line with nothing run:
by train (in-process and tools/train.py), and never read by tools/evaluate.py (a run config
naming it).

R-50 at 64 px, 2 iterations, 13 + 7 images of the session's shapes data.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gn_detect.config import ConfigError

from ._train_utils import REPO, child_env, one_thread, read_status, shapes_root, tail, tiny_cfg, tiny_overrides  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
CLASSES = ("blob", "spike")  # the user's names: not COCO's, so the class logits start afresh


def _own_json(shapes: Path, split: str, out: Path) -> Path:
    """The shapes split as a user's own json: two of its categories, renamed."""
    data = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
    keep = {c["id"]: name for c, name in zip(data["categories"][:2], CLASSES)}
    data["categories"] = [{"id": i, "name": n, "supercategory": "user"} for i, n in keep.items()]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in keep]
    out.write_text(json.dumps(data))
    return out


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(0)
    state = retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    path = tmp_path_factory.mktemp("tv") / "retinanet_resnet50_fpn_coco.pth"
    torch.save(state, path)
    return path, state


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_two_class_run_from_a_torchvision_detector(shapes_root, tmp_path, tv_file):  # noqa: F811
    import subprocess
    import sys

    path, state = tv_file
    train_json = _own_json(shapes_root, "train", tmp_path / "train.json")
    val_json = _own_json(shapes_root, "val", tmp_path / "val.json")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "model=retinanet_r50_fpn", "norm=affine", "data=coco",
           f"model.weights={path}", f"data.root={shapes_root}", "data.train.images=train", f"data.train.ann={train_json}",
           "data.val.images=val", f"data.val.ann={val_json}", "data.min_size_train=[64]", "data.min_size_test=64",
           "data.max_size=64", "data.ims_per_device=2", "data.num_workers=0", "solver.max_iter=2",
           "solver.warmup_iters=1", "solver.base_lr=0.001", "solver.steps=[]", "solver.step_fractions=[]",
           "checkpoint.period=1000", "log.progress=log", "log.period=1", "eval.num_vis_images=1",
           f"hydra.run.dir={run_dir}"]
    r = subprocess.run(cmd, cwd=str(tmp_path), env=child_env(), timeout=600, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, tail(r)
    assert read_status(run_dir)["state"] == "done"
    assert "model.weights: loaded" in r.stdout and "re-initialized for 2 class(es)" in r.stdout, tail(r)
    loaded = json.loads((run_dir / "weights_loaded.json").read_text())
    rows = loaded["class_rows"]
    assert loaded["source"] == "torchvision_v1" and rows["reinitialized"] == list(CLASSES) and rows["kept"] == []
    assert len(rows["dropped"]) == 91
    # everything but the class logits came from the file: every tensor of its fpn and head, and the backbone
    names = set(loaded["loaded"])
    assert "head.cls_score.weight" not in names and {"fpn.p6.weight", "head.bbox_pred.weight",
                                                     "backbone.layer4.2.bn3.running_var"} <= names
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    assert cfg["anchors"]["style"] == "torchvision" and cfg["size_divisibility"] == 32
    assert cfg["backbone"]["norm_opts"]["eps"] == 0.0 and cfg["fpn"]["top_block_in"] == "p5"
    final = torch.load(run_dir / "checkpoints" / "model_final.pth", weights_only=True)["model"]
    assert torch.equal(final["backbone.conv1.weight"], state["backbone.body.conv1.weight"])  # frozen stem: as loaded
    assert final["head.cls_score.weight"].shape == (9 * 2, 256, 3, 3)
    assert (run_dir / "report.json").is_file()

    # tools/evaluate.py never reads the run's model.weights (a run config naming a code-running pickle)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"head.classification_head.cls_logits.weight": _Evil(marker)}, evil)
    full = yaml.safe_load((run_dir / "config.yaml").read_text())
    full["model"]["weights"] = str(evil)
    run_config = tmp_path / "run_config.yaml"
    run_config.write_text(yaml.safe_dump(full))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"),
                        f"checkpoint={run_dir / 'checkpoints' / 'model_final.pth'}", f"run_config={run_config}",
                        f"out_dir={tmp_path / 'evaluated'}"], cwd=str(tmp_path), env=child_env(), timeout=600,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, tail(r)
    assert not marker.exists()


def test_a_code_running_pickle_as_model_weights_is_refused_with_nothing_run(shapes_root, tmp_path):  # noqa: F811
    import subprocess
    import sys

    from gn_detect.engine.trainer import train
    from gn_detect.modeling import build_model

    marker = tmp_path / "pwned"
    evil_pth = tmp_path / "evil.pth"
    torch.save({"model": {"head.classification_head.cls_logits.weight": _Evil(marker)}}, evil_pth)
    evil_pkl = tmp_path / "evil.pkl"
    import pickle

    evil_pkl.write_bytes(pickle.dumps({"blobs": {"retnet_cls_pred_fpn3_w": _Evil(marker)}}, protocol=2))
    for path in (evil_pth, evil_pkl):
        with pytest.raises(ConfigError, match=r"^model.weights: .*(refused to unpickle|weights_only=True)") as e:
            build_model({"weights": str(path)}, 2)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(ConfigError, match=r"^model.weights: "):
            train(tiny_cfg(tmp_path / "no_data", **{"model.weights": str(path)}), tmp_path / "run", base_dir=tmp_path)
        assert not (tmp_path / "run" / "config.yaml").exists()
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *tiny_overrides(shapes_root),
                        f"model.weights={evil_pth}", f"hydra.run.dir={tmp_path / 'cli_run'}"], cwd=str(tmp_path),
                       env=child_env(HYDRA_FULL_ERROR="0"), timeout=300,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 2 and "weights_only=True" in r.stdout and str(evil_pth) in r.stdout, tail(r)
    assert not marker.exists()
