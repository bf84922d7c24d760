"""build_dataset from configs, and the two command-line tools."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gn_detect.config.schema import TrainConfig
from gn_detect.data import build_dataset
from gn_detect.data.json_checks import ParsedFiles
from gn_detect.data.build import build_transform, data_config

from .conftest import no_cache

REPO = Path(__file__).resolve().parents[2]
DATA_PRESETS = REPO / "configs" / "data"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shapes_relative_root_and_dictconfig(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"name": "shapes", "root": "datasets/shapes", "min_size_train": [64, 80],
                            "max_size": 128, "min_size_test": 64,
                            "synthetic": {"num_train": 5, "num_val": 2, "image_size": 64, "seed": 9}})
    train = build_dataset(cfg, "train", base_dir=tmp_path)
    assert (tmp_path / "datasets" / "shapes" / "shapes_meta.json").is_file()
    val = build_dataset(cfg, "val", base_dir=tmp_path)
    assert len(train) == 5 and len(val) == 2 and train.num_classes == 5
    assert train.transform.min_sizes == (64, 80) and train.transform.flip_prob == 0.5
    assert val.transform.min_sizes == (64,) and val.transform.flip_prob == 0.0
    assert train.label_to_cat_id == val.label_to_cat_id == [1, 2, 3, 4, 5]


def test_coco_layout_and_filter_empty_only_for_train(coco128: Path, tiny_coco: Path) -> None:
    cfg = {"name": "coco", "root": str(coco128.parent), "filter_empty": True, "verify_images": False,
           "train": {"images": "coco128/train2017", "ann": "coco128/annotations/instances_train2017.json"},
           "val": {"images": "tiny_coco/val2017", "ann": "tiny_coco/annotations/instances_val2017.json"}}
    assert len(build_dataset(cfg, "train")) == 126
    assert len(build_dataset(cfg, "val")) == 50  # evaluation keeps images without annotations
    assert len(build_dataset(cfg, "train", train=False)) == 128
    # default COCO-2017 layout under root
    ds = build_dataset({"name": "coco", "root": str(tiny_coco), "verify_images": False}, "val")
    assert len(ds) == 50


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.root is required.*data\.root=/path/to/coco"):
        build_dataset({"name": "coco"}, "train")
    with pytest.raises(ValueError, match="unknown dataset name data.name='voc'"):
        build_dataset({"name": "voc", "root": "x"}, "train", base_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown split 'test'.*eval.split=val"):
        build_dataset({"name": "coco", "root": "x"}, "test", base_dir=tmp_path)
    # keys and types come from the schema: a key that moved or a scalar for a list fails, named
    with pytest.raises(ValueError, match=r"data\.bn_group_size: Key 'bn_group_size' not in 'DataConfig'"):
        build_dataset({"name": "coco", "root": "x", "bn_group_size": 2}, "train", base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"data\.min_size_train: .*not a ListConfig"):
        build_transform({"min_size_train": 600}, train=True)
    with pytest.raises(ValueError, match=r"data\.train\.imgs"):
        data_config({"train": {"imgs": "a"}})
    with pytest.raises(TypeError, match="must be a mapping"):
        data_config(["coco"])  # type: ignore[arg-type]
    # the generated shapes dataset has a fixed layout: moving a split is refused, not ignored
    with pytest.raises(ValueError, match=r"data\.train = .*cannot move the generated shapes"):
        build_dataset({"name": "shapes", "root": "s", "train": {"images": "imgs", "ann": "a.json"}}, "train",
                      base_dir=tmp_path)
    assert not (tmp_path / "s").exists()  # refused before generating anything


def test_build_transform_defaults() -> None:
    # docs/data.md: Detectron's sizes, short side 800, long side at most 1333, flip 0.5
    t = build_transform({}, train=True)
    assert t.min_sizes == (800,) and t.max_size == 1333 and t.flip_prob == 0.5
    t = build_transform({}, train=False)
    assert t.min_sizes == (800,) and t.max_size == 1333 and t.flip_prob == 0.0
    t = build_transform({"min_size_train": [600], "max_size_train": 1000}, train=True)
    assert t.min_sizes == (600,) and t.max_size == 1000
    assert build_transform({"min_size_train": [600], "max_size_train": 1000}, train=False).max_size == 1333


def test_typed_config_is_used_as_is(tiny_coco: Path) -> None:
    """What Hydra composes (the data node of TrainConfig) reaches build_dataset unchanged."""
    cfg = OmegaConf.structured(TrainConfig)
    cfg.data.root = str(tiny_coco)
    cfg.data.verify_images = False
    assert data_config(cfg.data) is cfg.data
    ds = build_dataset(cfg.data, "val")  # standard COCO layout: the schema's default paths
    assert len(ds) == 50 and ds.image_dir == tiny_coco / "val2017"


@pytest.mark.parametrize("preset", ["coco", "coco128", "shapes"])
def test_data_presets_state_only_schema_keys(preset: str) -> None:
    raw = OmegaConf.load(DATA_PRESETS / f"{preset}.yaml")
    c = data_config(raw)  # an unknown key would raise here
    stated = OmegaConf.to_container(raw)
    defaults = OmegaConf.to_container(OmegaConf.structured(TrainConfig).data)
    for key, value in stated.items():  # each key stated differs from the schema (name: the preset's label)
        assert key == "name" or value != defaults[key], f"{preset}.yaml restates the default {key}"
    assert c.name == ("shapes" if preset == "shapes" else "coco")


def test_coco_preset_needs_root_and_reads_the_standard_layout(tiny_coco: Path) -> None:
    cfg = OmegaConf.load(DATA_PRESETS / "coco.yaml")
    with pytest.raises(ValueError, match="data.root=/path/to/coco"):
        build_dataset(cfg, "val")
    cfg.root = str(tiny_coco)
    cfg.verify_images = False
    ds = build_dataset(cfg, "val")
    assert len(ds) == 50 and ds.ann_file == tiny_coco / "annotations" / "instances_val2017.json"
    assert ds.transform.min_sizes == (800,) and ds.transform.max_size == 1333


def test_coco128_preset_reads_the_shared_data(coco128: Path, tiny_coco: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = OmegaConf.load(DATA_PRESETS / "coco128.yaml")
    cfg.verify_images = False
    monkeypatch.setenv("GN_DETECT_SHARED_DATA", str(coco128.parent))
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (126, 50)  # coco128 minus 2 images without boxes; tiny_coco val
    assert train.image_dir == coco128 / "train2017" and val.image_dir == tiny_coco / "val2017"
    # without the variable: ../shared/data relative to the launch folder
    monkeypatch.delenv("GN_DETECT_SHARED_DATA")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(coco128.parent)
    (tmp_path / "launch").mkdir()
    rel = build_dataset(cfg, "val", base_dir=tmp_path / "launch")
    assert rel.ann_file == tmp_path / "launch" / "../shared/data/tiny_coco/annotations/instances_val2017.json"
    assert len(rel) == 50


def test_make_synthetic_tool(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tool = load_tool("make_synthetic")
    assert tool.main(["--out", str(tmp_path / "s"), "--num-train", "3", "--num-val", "1",
                      "--image-size", "48", "--seed", "4"]) == 0
    meta = json.loads((tmp_path / "s" / "shapes_meta.json").read_text())
    assert meta["params"]["num_train"] == 3 and meta["params"]["seed"] == 4
    assert len(list((tmp_path / "s" / "train").iterdir())) == 3


def test_convert_tool(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (40, 20)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "names.txt").write_text("thing\n")
    tool = load_tool("convert_dataset")
    assert tool.main(["yolo", "--images", str(tmp_path / "images"), "--names", str(tmp_path / "names.txt"),
                      "--out", str(tmp_path / "out.json")]) == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["annotations"][0]["bbox"] == [10.0, 5.0, 20.0, 10.0]
    (tmp_path / "Ann").mkdir()
    (tmp_path / "Ann" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>40</width><height>20</height></size>"
        "<object><name>thing</name><bndbox><xmin>11</xmin><ymin>6</ymin><xmax>30</xmax><ymax>15</ymax>"
        "</bndbox></object></annotation>")
    (tmp_path / "set.txt").write_text("a\n")
    assert tool.main(["voc", "--ann-dir", str(tmp_path / "Ann"), "--image-set", str(tmp_path / "set.txt"),
                      "--out", str(tmp_path / "voc.json")]) == 0
    assert json.loads((tmp_path / "voc.json").read_text())["annotations"][0]["bbox"] == [10.0, 5.0, 20.0, 10.0]
    (tmp_path / "labels" / "a.txt").write_text("3 0.5 0.5 0.5 0.5\n")
    assert tool.main(["yolo", "--images", str(tmp_path / "images"), "--names", str(tmp_path / "names.txt"),
                      "--out", str(tmp_path / "bad.json")]) == 2
    assert "class 3" in capsys.readouterr().err


def test_preflight_hands_each_parsed_file_to_the_dataset_build(coco128: Path, tiny_coco: Path, tmp_path: Path,
                                                               monkeypatch, parses: list[int]) -> None:
    """One process, pre-flight of a single run then its datasets: each annotation file is parsed
    once and handed over explicitly (``Parsed.files`` -> ``build_dataset(parsed=)``); a file that
    changed after the pre-flight is parsed again (its new content is what the dataset sees); a
    sweep's pre-flight hands nothing over (its runs build later or elsewhere); nothing is kept
    between pre-flights (no process-global cache)."""
    from gn_detect.preflight import Parsed, annotation_problems

    parsed = parses
    no_cache(tmp_path, monkeypatch)  # every read parses (records: tests/data/test_json_checks.py)
    val_ann = tmp_path / "instances_val2017.json"
    val_ann.write_bytes((tiny_coco / "annotations" / "instances_val2017.json").read_bytes())
    cfg = {"name": "coco", "root": str(coco128.parent), "verify_images": False, "filter_empty": False,
           "train": {"images": "coco128/train2017", "ann": "coco128/annotations/instances_train2017.json"},
           "val": {"images": "tiny_coco/val2017", "ann": str(val_ann)}}
    single = Parsed(files=ParsedFiles())
    problems, train = annotation_problems(cfg, train_split="train", eval_split="val", base_dir=None, parsed=single)
    assert problems == [] and train is not None and len(parsed) == 2 and len(single.files) == 2
    assert len(build_dataset(cfg, "train", parsed=single.files)) == 128 and len(parsed) == 2  # taken, not parsed
    assert len(build_dataset(cfg, "train")) == 128 and len(parsed) == 3  # nothing handed over: parsed
    data = json.loads(val_ann.read_text())  # not the counted parser
    data["images"] = data["images"][:10]
    val_ann.write_text(json.dumps(data))  # changed between the pre-flight and the build
    assert len(build_dataset(cfg, "val", parsed=single.files)) == 10 and len(parsed) == 4
    assert len(single.files) == 0  # the stale hand-over was dropped, nothing left in memory
    sweep = Parsed()  # a sweep's: no files kept, the summaries shared by its runs
    annotation_problems(cfg, train_split="train", eval_split="val", base_dir=None, parsed=sweep)
    annotation_problems(cfg, train_split="train", eval_split="val", base_dir=None, parsed=sweep)
    assert len(parsed) == 6 and sweep.files is None


def test_the_preflight_selects_data_classes_as_the_dataset_does(coco128: Path) -> None:
    """data.classes: the pre-flight's summary holds the classes (and boxes) the dataset will train on,
    so the model's class count and the split checks are the run's."""
    from gn_detect.preflight import Parsed, annotation_problems

    cfg = {"name": "coco", "root": str(coco128.parent), "verify_images": False, "filter_empty": False,
           "train": {"images": "coco128/train2017", "ann": "coco128/annotations/instances_train2017.json"},
           "val": {"images": "coco128/train2017", "ann": "coco128/annotations/instances_train2017.json"},
           "classes": ["person"]}
    parsed = Parsed()
    problems, summary = annotation_problems(cfg, train_split="train", eval_split="val", base_dir=None, parsed=parsed)
    dataset = build_dataset(cfg, "train")
    assert problems == [] and [c["name"] for c in summary.categories] == ["person"] == dataset.class_names
    assert summary.boxes == dataset.num_annotations
    _, everything = annotation_problems({**cfg, "classes": None}, train_split="train", eval_split=None,
                                        base_dir=None, parsed=parsed)
    assert len(everything.categories) > 1 and everything.boxes > summary.boxes  # another key: not the cached one


@pytest.mark.parametrize("break_it", [False, True])
def test_a_handed_over_json_check_gives_the_dataset_a_fresh_build_gives(break_it: bool, coco128: Path,
                                                                        tmp_path: Path, monkeypatch) -> None:
    """The pre-flight's json-only checks are handed to the build with the parsed file: when the image
    checks keep the same images, the annotation pass is taken, not repeated; when they drop one (a
    missing file), it runs again. Either way the dataset (items' boxes, .coco, skip counts) equals
    one built without a hand-over."""
    from gn_detect.data import checks
    from gn_detect.data.build import build_dataset
    from gn_detect.preflight import Parsed, annotation_problems

    images = tmp_path / "train2017"
    images.mkdir()
    for p in sorted((coco128 / "train2017").iterdir())[:40]:
        (images / p.name).symlink_to(p)
    data = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    kept = {p.name for p in images.iterdir()}
    data["images"] = [e for e in data["images"] if e["file_name"] in kept]
    (tmp_path / "ann.json").write_text(json.dumps(data))
    if break_it:
        (images / data["images"][3]["file_name"]).unlink()
    cfg = {"name": "coco", "root": str(tmp_path), "verify_images": False, "filter_empty": True,
           "train": {"images": "train2017", "ann": "ann.json"}, "min_size_train": [64], "max_size": 96}
    passes = []
    real = checks._check_annotations
    monkeypatch.setattr(checks, "_check_annotations", lambda *a: passes.append(1) or real(*a))
    single = Parsed(files=ParsedFiles())
    problems, _ = annotation_problems(cfg, train_split="train", eval_split=None, base_dir=None, parsed=single)
    assert problems == [] and len(passes) == 1
    handed = build_dataset(cfg, "train", parsed=single.files)
    assert len(passes) == (2 if break_it else 1)
    recorded = build_dataset(cfg, "train")  # the pre-flight's record: the annotations are read again only if needed
    assert len(passes) == (3 if break_it else 1)
    no_cache(tmp_path, monkeypatch)
    fresh = build_dataset(cfg, "train")
    assert len(passes) == (5 if break_it else 2)  # its json-only pass, then (break_it) the one over the images kept
    for other in (handed, recorded):
        assert other.skipped == fresh.skipped and (other.skipped["missing_image"] == 1) == break_it
        assert other.skip_log.examples == fresh.skip_log.examples
        assert len(other) == len(fresh) and all(
            (other.annotations(i)[0] == fresh.annotations(i)[0]).all() for i in range(len(fresh)))
        assert other.coco.dataset == fresh.coco.dataset

