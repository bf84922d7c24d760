"""Hostile inputs through the real command lines (tools/train.py, tools/evaluate.py, tools/predict.py,
tools/convert_dataset.py): each case asserts the exit status (README: Exit statuses), one
``gn-detect:`` line per problem naming the cause and the fix, and no traceback. Cases that only
need the pre-flight are batched into one train.py start (every problem is listed at once)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from tests.deploy._runs import make_run, write_report
from tests.engine._train_utils import REPO, child_env, shapes_root, tail  # noqa: F401

NAMES = {1: "circle", 2: "square", 3: "triangle", 4: "star", 5: "cross"}


def _coco(root: Path, *, n: int = 3, cats: tuple[str, ...] = ("a", "b"), val_cats: tuple[str, ...] | None = None,
          train_text: str | None = None, val_annotations: bool = True) -> Path:
    """A COCO-layout dataset of ``n`` 40x32 PNG images per split; ``train_text`` replaces the train json."""
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(np.full((32, 40, 3), 40 * i, np.uint8)).save(root / split / f"{i}.png")
    (root / "annotations").mkdir()
    for split, names in (("train2017", cats), ("val2017", val_cats or cats)):
        data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 32} for i in range(1, n + 1)],
                "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400,
                                 "iscrowd": 0} for i in range(1, n + 1)],
                "categories": [{"id": k + 1, "name": c} for k, c in enumerate(names)]}
        if split == "val2017" and not val_annotations:
            data["annotations"] = []
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    if train_text is not None:
        (root / "annotations" / "instances_train2017.json").write_text(train_text)
    return root


def _run(tool: str, args: list[str], cwd: Path, timeout: float = 120) -> tuple[int, str, list[str]]:
    proc = subprocess.run([sys.executable, str(REPO / "tools" / tool), *args], cwd=str(cwd),
                          env=child_env(HYDRA_FULL_ERROR="0", PYTHONPATH=str(REPO)), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gn-detect:")]
    return proc.returncode, proc.stdout, lines


def _tiny(root: Path, *extra: str) -> list[str]:
    return ["data=coco", f"data.root={root}", "data.min_size_train=[32]", "data.min_size_test=32", "data.max_size=64",
            "data.ims_per_device=2", "data.num_workers=0", "solver.max_iter=2", *extra]


# --------------------------------------------------------------------------- the table

def _config_error_before_unreadable_image(tmp: Path) -> tuple[str, list[str], int, list[str]]:
    """The first training image is a FIFO: opening it would block (the test would time out). The
    config error comes first, exit 2, and nothing opened it."""
    root = _coco(tmp / "coco")
    (root / "train2017" / "1.png").unlink()
    os.mkfifo(root / "train2017" / "1.png")
    return "train.py", _tiny(root, "solver.base_lr=-1"), 2, ["config error: solver.base_lr"]


def _every_problem_at_once(tmp: Path) -> tuple[str, list[str], int, list[str]]:
    """Category mismatch, GroupNorm groups, a run folder that is a file and a batch larger than the
    split: four lines, before any image is opened (the first image is a FIFO again)."""
    root = _coco(tmp / "coco", val_cats=("a", "z"))
    (root / "train2017" / "1.png").unlink()
    os.mkfifo(root / "train2017" / "1.png")
    (tmp / "not_a_folder").write_text("x")
    args = _tiny(root, "model.norm_opts.num_groups=5", "hydra.run.dir=not_a_folder", "data.ims_per_device=4")
    return "train.py", args, 2, ["categories differ", "GroupNorm with 5 groups", "model.norm_opts.num_groups",
                                 "hydra.run.dir=not_a_folder", "data.ims_per_device=3 or less"]


def _truncated_and_empty_annotations(tmp: Path) -> tuple[str, list[str], int, list[str]]:
    root = _coco(tmp / "coco", train_text='{"images": [{"id": 1, "file_name": "1.png"', val_annotations=False)
    return "train.py", _tiny(root), 2, ["instances_train2017.json is not valid JSON", "AP is undefined"]


def _user_config_dir(tmp: Path) -> tuple[str, list[str], int, list[str]]:
    """A preset in the user's own folder (``--config-dir DIR data=mine``) composes like a shipped one:
    the pre-flight reads its data and finds the category mismatch planted there."""
    root = _coco(tmp / "coco", val_cats=("a", "z"))
    (tmp / "mine" / "data").mkdir(parents=True)
    (tmp / "mine" / "data" / "mine.yaml").write_text(f"name: coco\nroot: {root}\n")
    args = ["--config-dir", str(tmp / "mine"), *[a for a in _tiny(root) if not a.startswith("data=")], "data=mine"]
    return "train.py", args, 2, ["categories differ"]


def _predict_nan_threshold(tmp: Path, shapes: Path) -> tuple[str, list[str], int, list[str]]:
    ckpt = make_run(tmp / "run", shapes)
    report = write_report(tmp / "run", {1: 0.5, 2: float("nan"), 3: 0.2, 4: None, 5: 0.9}, NAMES)
    shutil_images = tmp / "images"
    shutil_images.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(shutil_images / "a.png")
    return "predict.py", [f"checkpoint={ckpt}", f"input={shutil_images}", "output=o"], 2, \
        [str(report), "class 2 (square)", "nan", "score_thresh"]


def _voc(tmp: Path, width: str = "40", box: tuple[str, ...] = ("2", "3", "20", "30")) -> Path:
    d = tmp / "voc"
    d.mkdir(exist_ok=True)
    (d / "a.xml").write_text(
        f"<annotation><filename>a.jpg</filename><size><width>{width}</width><height>32</height></size>"
        "<object><name>cat</name><bndbox>" + "".join(f"<{k}>{v}</{k}>" for k, v in zip(
            ("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>")
    return d


def _yolo(tmp: Path, label: bytes) -> tuple[Path, Path]:
    images, labels = tmp / "y" / "images", tmp / "y" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(images / "a.png")
    (labels / "a.txt").write_bytes(label)
    (tmp / "names.txt").write_text("cat\ndog\n")
    return images, labels


def _convert_case(kind: str) -> Callable[[Path], tuple[str, list[str], int, list[str]]]:
    def case(tmp: Path) -> tuple[str, list[str], int, list[str]]:
        out = ["--out", str(tmp / "out.json")]
        if kind == "voc_width":
            return "convert_dataset.py", ["voc", "--ann-dir", str(_voc(tmp, width="forty")), *out], 2, \
                ["<width> is 'forty', not a number", "a.xml"]
        if kind == "voc_image_set":
            return "convert_dataset.py", ["voc", "--ann-dir", str(_voc(tmp)), "--image-set", str(tmp / "nope.txt"),
                                          *out], 2, ["--image-set file not found", "nope.txt"]
        if kind == "yolo_latin1":
            images, labels = _yolo(tmp, "0 0.5 0.5 0.2 0.2 # caf\xe9\n".encode("latin-1"))
            return "convert_dataset.py", ["yolo", "--images", str(images), "--labels", str(labels), "--names",
                                          str(tmp / "names.txt"), *out], 2, ["a.txt", "not UTF-8", "re-save"]
        images, labels = _yolo(tmp, b"0 0.5 0.5 0.2 0.2\n")  # yolo_names
        return "convert_dataset.py", ["yolo", "--images", str(images), "--labels", str(labels), "--names",
                                      str(tmp / "missing_names.txt"), *out], 2, ["class names file not found"]
    return case


def _evaluate_categories_differ(tmp: Path, shapes: Path) -> tuple[str, list[str], int, list[str]]:
    """tools/evaluate.py's pre-flight: the split's categories against the checkpoint's model."""
    ckpt = make_run(tmp / "run", shapes)
    root = _coco(tmp / "coco", cats=("circle", "square"))
    return "evaluate.py", [f"checkpoint={ckpt}", "data=coco", f"data.root={root}"], 2, \
        ["categories differ", "instances_val2017.json"]


def _every_image_missing(tmp: Path) -> tuple[str, list[str], int, list[str]]:
    """The json is fine (the pre-flight passes) but no image file exists: found while loading, after
    the run folder is made -> exit 1, one line, status.json 'failed' with the same cause."""
    root = _coco(tmp / "coco")
    for p in (root / "train2017").iterdir():
        p.unlink()
    return "train.py", _tiny(root, "hydra.run.dir=run"), 1, ["run failed", "none of the 3 images listed could be used",
                                                             "status.json"]


def _config_values_out_of_range(tmp: Path) -> tuple[str, list[str], int, list[str]]:
    """Round four: an integer beyond int64 and a list item below its minimum are config errors naming
    the key, exit 2 before the run folder exists (were exit 1 after it)."""
    root = _coco(tmp / "coco")
    return "train.py", _tiny(root, f"seed={2**70}"), 2, ["config error: seed", "64-bit"]


def _list_item_below_minimum(tmp: Path) -> tuple[str, list[str], int, list[str]]:
    root = _coco(tmp / "coco")
    return "train.py", [*_tiny(root)[:1], f"data.root={root}", "data.min_size_train=[-128]"], 2, \
        ["config error: data.min_size_train", "-128"]


def _huge_integer_in_the_json(tmp: Path) -> tuple[str, list[str], int, list[str]]:
    """A 5000-digit integer passes Python's int-string limit: one line naming the file and the fix."""
    root = _coco(tmp / "coco")
    ann = root / "annotations" / "instances_train2017.json"
    ann.write_text(ann.read_text().replace('"area": 400', '"area": ' + "9" * 5000, 1))
    return "train.py", _tiny(root), 2, ["instances_train2017.json: a number in the JSON cannot be read", "Fix:"]


def _preset_train(tmp: Path, hydra_node: str) -> list[str]:
    """train.py's arguments with a preset in --config-dir: data from a tiny coco, plus ``hydra_node``
    (YAML lines under ``hydra:``, indented two spaces)."""
    root = _coco(tmp / "coco")
    (tmp / "mine" / "data").mkdir(parents=True)
    (tmp / "mine" / "data" / "mine.yaml").write_text(
        f"# @package _global_\ndata:\n  name: coco\n  root: {root}\nhydra:\n{hydra_node}")
    return ["--config-dir", str(tmp / "mine"), *[a for a in _tiny(root) if not a.startswith("data=")], "data=mine"]


def _code_from_a_preset(target: str, node: str) -> Callable[[Path], tuple[str, list[str], int, list[str]]]:
    """A preset in --config-dir naming a callable that is not the project's own: refused in one
    line, exit 2, before anything runs (numpy.savetxt would have written ``pwned.txt``)."""
    def case(tmp: Path) -> tuple[str, list[str], int, list[str]]:
        args = _preset_train(tmp, f"  {node}:\n    evil:\n      _target_: {target}\n      fname: {tmp / 'pwned.txt'}\n"
                                  "      X: [1]\n")
        return "train.py", args, 2, [f"config error: hydra.{node}.evil._target_: '{target}'", "Fix: remove"]
    return case


def _log_file_from_a_preset(tmp: Path) -> tuple[str, list[str], int, list[str]]:
    """A preset whose logging config writes a file outside the run folder: refused like a _target_."""
    args = _preset_train(tmp, f"  job_logging:\n    handlers:\n      file:\n        filename: {tmp / 'elsewhere.log'}\n")
    return "train.py", args, 2, ["config error: hydra.job_logging.handlers.file.filename:", "Fix: log files go in"]


CASES: dict[str, Callable[..., tuple[str, list[str], int, list[str]]]] = {
    "config_values_out_of_range": _config_values_out_of_range,
    "list_item_below_minimum": _list_item_below_minimum,
    "huge_integer_in_the_json": _huge_integer_in_the_json,
    "callback_from_a_preset": _code_from_a_preset("numpy.savetxt", "callbacks"),
    "blocklisted_callback_from_a_preset": _code_from_a_preset("os.system", "callbacks"),
    "log_file_from_a_preset": _log_file_from_a_preset,
    "config_error_before_unreadable_image": _config_error_before_unreadable_image,
    "every_problem_at_once": _every_problem_at_once,
    "truncated_and_empty_annotations": _truncated_and_empty_annotations,
    "user_config_dir": _user_config_dir,
    "every_image_missing": _every_image_missing,
    "predict_nan_threshold": _predict_nan_threshold,
    "evaluate_categories_differ": _evaluate_categories_differ,
    **{f"convert_{k}": _convert_case(k) for k in ("voc_width", "voc_image_set", "yolo_latin1", "yolo_names")},
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_through_the_command_line(name: str, tmp_path: Path, shapes_root: Path) -> None:  # noqa: F811
    case = CASES[name]
    needs_run = name.startswith(("predict", "evaluate"))
    tool, args, status, needles = case(tmp_path, shapes_root) if needs_run else case(tmp_path)
    rc, output, lines = _run(tool, args, tmp_path)
    assert rc == status, (name, tail(subprocess.CompletedProcess(args, rc, output)))
    assert "Traceback" not in output, output[-3000:]
    assert lines and all(len(ln) < 1000 for ln in lines), output[-3000:]
    for needle in needles:
        assert any(needle in ln for ln in lines), (needle, lines)
    if tool == "train.py" and status == 2:  # refused before Hydra: no run folder, no generated data
        assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
        assert not (tmp_path / "pwned.txt").exists()
    if status == 1:
        state = json.loads((tmp_path / "run" / "status.json").read_text())
        assert state["state"] == "failed" and "none of the 3 images" in state["error"]
    if name == "every_problem_at_once":
        assert len(lines) == 4, lines


def test_converter_drops_bad_boxes_counted_never_null(tmp_path: Path) -> None:
    """A NaN VOC box is dropped and counted; the written json holds no null box and loads in pycocotools."""
    rc, output, lines = _run("convert_dataset.py", ["voc", "--ann-dir", str(_voc(tmp_path, box=("nan", "3", "20", "30"))),
                                                    "--out", str(tmp_path / "out.json")], tmp_path)
    assert rc == 0 and not lines and "Traceback" not in output, output
    assert "1 degenerate_box" in output.splitlines()[-1]
    data = json.loads((tmp_path / "out.json").read_text())
    assert [a["bbox"] for a in data["annotations"]] == [[0.0, 0.0, 9.0, 9.0]]
    assert data["info"]["dropped"] == {"degenerate_box": 1}


def test_evaluate_completes_and_counts_an_image_unreadable_at_run_time(tmp_path: Path, shapes_root: Path) -> None:  # noqa: F811
    """Before: a bad image met by the evaluation loader crashed it (report lost) or was replaced by
    its neighbour. Now the report is written and the results table says how many were left out."""
    ckpt = make_run(tmp_path / "run", shapes_root)
    root = _coco(tmp_path / "coco", cats=tuple(NAMES.values()))
    (root / "val2017" / "2.png").write_bytes((root / "val2017" / "2.png").read_bytes()[:60])
    rc, output, lines = _run("evaluate.py", [f"checkpoint={ckpt}", "data=coco", f"data.root={root}",
                                             "data.verify_images=false", "data.min_size_test=64", "data.max_size=128",
                                             f"out_dir={tmp_path / 'eval'}"], tmp_path)
    assert rc == 0 and "Traceback" not in output and not lines, output[-3000:]
    assert "1 could not be read and are left out" in output
    assert (tmp_path / "eval" / "report.json").is_file()


@pytest.mark.parametrize("bad", [[0.5], "0.5", True, 1.5, -0.1, float("inf")])
def test_predict_refuses_every_non_probability_threshold(tmp_path: Path, bad: Any) -> None:
    from gn_detect.deploy.predict import class_thresholds, read_threshold_file

    report = write_report(tmp_path, {1: 0.5, 2: bad, 3: None}, NAMES)
    cats = [{"id": k, "name": NAMES[k]} for k in (1, 2, 3)]
    with pytest.raises(ValueError) as info:
        class_thresholds(report, None, cats)
    assert str(report) in str(info.value) and "class 2 (square)" in str(info.value) and "\n" not in str(info.value)
    thr, _ = class_thresholds(write_report(tmp_path, {1: 0.5, 2: 0, 3: None}, NAMES), None, cats)
    assert thr == {1: 0.5, 2: 0.0, 3: float("inf")}
    own = tmp_path / "mine.json"  # a user's threshold file (predict's thresholds=): the same rule
    own.write_text(json.dumps({"square": bad}))
    with pytest.raises(ValueError) as info:
        read_threshold_file(own)
    assert str(own) in str(info.value) and "'square'" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- output paths that cannot be written

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, shapes_root: Path) -> Path:  # noqa: F811
    """One tiny run (config.yaml + checkpoints/model_final.pth) shared by the output-path cases."""
    return make_run(tmp_path_factory.mktemp("out_paths") / "run", shapes_root)


def _output_command(tool: str, ckpt: Path, bad: Path, tmp: Path) -> tuple[str, list[str], str, str]:
    """(script, arguments with ``bad`` as the output, prefix of its error lines, the output's key)."""
    if tool == "export":
        return "export.py", [f"checkpoint={ckpt}", f"out_dir={bad}", "onnx=false"], "gn-detect:", "out_dir"
    if tool == "predict":
        (tmp / "images").mkdir()
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp / "images" / "a.png")
        return "predict.py", [f"checkpoint={ckpt}", f"input={tmp / 'images'}", f"output={bad}",
                              "score_thresh=0.5"], "gn-detect:", "output"
    if tool == "evaluate":
        return "evaluate.py", [f"checkpoint={ckpt}", f"out_dir={bad}"], "gn-detect:", "out_dir"
    if tool == "sweep_report":
        (tmp / "sweep").mkdir()
        return "sweep_report.py", [str(tmp / "sweep"), "--out", str(bad)], "sweep_report:", "--out"
    if tool == "convert_weights":
        return "convert_weights.py", [str(ckpt), str(bad)], "convert_weights:", "dst"
    return "train.py", _tiny(_coco(tmp / "coco"), f"hydra.run.dir={bad}"), "gn-detect:", "hydra.run.dir"


@pytest.mark.parametrize("tool, where", [
    *[(t, w) for t in ("export", "predict", "evaluate", "sweep_report") for w in ("existing_file", "under_file")],
    ("convert_weights", "existing_folder"), ("convert_weights", "under_file"), ("train", "under_file")])
def test_unwritable_output_is_refused_before_any_work(tool: str, where: str, tmp_path: Path,
                                                      tiny_checkpoint: Path) -> None:
    """An output path that is a file (a folder where a file is written) or lies under a file: one
    line naming the path, the file in the way and the key to change, exit status 2 from the start-up
    checks (before the model is loaded, so the source of convert_weights is never read), no traceback."""
    taken = tmp_path / "taken"
    taken.mkdir() if where == "existing_folder" else taken.write_text("x")
    bad = taken / "sub" if where == "under_file" else taken
    script, args, prefix, key = _output_command(tool, tiny_checkpoint, bad, tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / script), *args], cwd=str(tmp_path),
                          env=child_env(HYDRA_FULL_ERROR="0", PYTHONPATH=str(REPO)), timeout=120,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(prefix)]
    assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    what = "a folder, not a file" if where == "existing_folder" else f"{taken} is a file, not a folder"
    assert len(lines) == 1 and f"{key}" in lines[0] and what in lines[0], proc.stdout[-3000:]
    assert str(bad) in lines[0] and ("choose another" in lines[0] or "Fix:" in lines[0]), lines
    assert taken.is_dir() if where == "existing_folder" else taken.read_text() == "x"


def test_fifo_image_string_iscrowd_and_repeated_file_are_counted_skips(tmp_path: Path) -> None:
    """Round four: an image path that is a FIFO is skipped, never opened (a regression blocks and the
    timeout fails the test); ``"iscrowd": "0"`` (a string), ``2`` and null are ``invalid_iscrowd``
    skips, not crowd boxes; one file under two ids keeps the first entry (``duplicate_image_file``).
    The run completes (exit 0) and data_skipped.json counts each reason; nothing is written outside
    the run folder."""
    root = _coco(tmp_path / "coco", n=5)
    os.mkfifo(root / "train2017" / "fifo.png")
    ann = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["images"] += [{"id": 6, "file_name": "fifo.png", "width": 40, "height": 32},
                       {"id": 7, "file_name": "./2.png", "width": 40, "height": 32}]
    data["annotations"][2]["iscrowd"] = "0"
    data["annotations"][3]["iscrowd"] = 2
    data["annotations"][4]["iscrowd"] = None
    data["annotations"] += [{"id": 9, "image_id": 7, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81, "iscrowd": 0},
                            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81,
                             "iscrowd": True}]
    ann.write_text(json.dumps(data))
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, output, lines = _run("train.py", _tiny(root, "hydra.run.dir=run", "solver.max_iter=1"), tmp_path, timeout=300)
    assert rc == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    counts = json.loads((tmp_path / "run" / "data_skipped.json").read_text())["datasets"][0]["counts"]
    assert counts["not_a_regular_file"] == 1 and counts["invalid_iscrowd"] == 3, counts
    assert counts["duplicate_image_file"] == 1 and counts["crowd"] == 1, counts
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "run"])


def _images(folder: Path, n: int, size: tuple[int, int] = (40, 50)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((*size, 3), 10 * i % 255, np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_predict_never_reads_its_own_output_nor_blames_the_report_for_a_plain_weights_file(
        tmp_path: Path, shapes_root: Path) -> None:  # noqa: F811
    """Round four: output=input is refused (exit 2); an output inside the input is left out of the
    input (a second run reads the same 2 images, not the drawn ones); a plain ImageNet-style .pth is
    named as what it is (was: 'no report.json')."""
    ckpt = make_run(tmp_path / "run", shapes_root)
    images = _images(tmp_path / "images", 2)
    rc, output, lines = _run("predict.py", [f"checkpoint={ckpt}", f"input={images}", f"output={images}",
                                            "score_thresh=0.5"], tmp_path)
    assert rc == 2 and "Traceback" not in output and any("output: " in ln and "read back" in ln for ln in lines), output
    assert sorted(p.name for p in images.iterdir()) == ["000.png", "001.png"]
    for _ in range(2):
        rc, output, lines = _run("predict.py", [f"checkpoint={ckpt}", f"input={images}", f"output={images / 'out'}",
                                                "score_thresh=0.0"], tmp_path)
        assert rc == 0, output[-3000:]
        listed = json.loads((images / "out" / "images.json").read_text())["images"]
        assert sorted(e["file_name"] for e in listed) == ["000.png", "001.png"], listed
    import torch
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "bn1.weight": torch.ones(4)}, tmp_path / "resnet.pth")
    rc, output, lines = _run("predict.py", [f"checkpoint={tmp_path / 'resnet.pth'}", f"input={images}",
                                            f"output={tmp_path / 'o'}"], tmp_path)
    assert rc == 2 and "Traceback" not in output, output[-3000:]
    assert len(lines) == 1 and "plain weights file" in lines[0] and "report.json" not in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_sigterm_to_predict_is_one_line_exit_143_and_no_half_written_result(tmp_path: Path,
                                                                            shapes_root: Path) -> None:  # noqa: F811
    """SIGTERM while predict draws: one line, exit 143 (as tools/evaluate.py), no detections.json and
    no temporary or truncated drawn image left."""
    import signal
    import time

    ckpt = make_run(tmp_path / "run", shapes_root)
    images = _images(tmp_path / "images", 300, size=(64, 64))
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "predict.py"), f"checkpoint={ckpt}",
                             f"input={images}", f"output={out}", "score_thresh=0.0", "batch_size=1"], cwd=str(tmp_path),
                            env=child_env(HYDRA_FULL_ERROR="0", PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "drawn").glob("*.png")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [ln for ln in output.splitlines() if ln.startswith("gn-detect:")]
    assert len(lines) == 1 and "interrupted" in lines[0] and "SIGTERM" in lines[0], lines
    assert not (out / "detections.json").exists() and not (out / "images.json").exists()
    drawn = list((out / "drawn").iterdir())
    assert drawn and not [p for p in drawn if p.suffix != ".png"]
    for p in drawn:
        Image.open(p).load()  # whole files only


def test_a_sweep_whose_run_folder_another_command_holds_exits_1(tmp_path: Path) -> None:
    """Round four: two sweeps on one sweep folder. The run this command could not take (another
    process holds its folder: RunFolderInUse) is not done by this command, even when the other one
    has finished it by the time this one ends: exit 1, the last line names it, no traceback (was: a
    traceback and exit 0)."""
    from gn_detect.engine.run_lock import RunLock

    root = _coco(tmp_path / "coco")
    held = RunLock(tmp_path / "sw" / "seed=0").acquire()
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), "-m", *_tiny(root, "solver.max_iter=1"),
                             "seed=0,1", "hydra.sweep.dir=sw"], cwd=str(tmp_path),
                            env=child_env(HYDRA_FULL_ERROR="0", PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "FAILED run" in line and "seed=0" in line:  # the other command finishes that run now
                (tmp_path / "sw" / "seed=0" / "status.json").write_text(json.dumps({"state": "done"}))
                held.release()
                break
        seen.append(proc.communicate(timeout=300)[0])
    finally:
        held.release()
        proc.kill()
    output = "".join(seen)
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    last = [ln for ln in output.splitlines() if ln.strip()][-1]
    assert "sweep not complete" in last and "seed=0" in last and "RunFolderInUse" in last, last
    assert json.loads((tmp_path / "sw" / "seed=1" / "status.json").read_text())["state"] == "done"


def test_resume_over_a_changed_training_json_is_refused_naming_the_file(tmp_path: Path) -> None:
    """Round four: a run's training json rewritten in place (5 images to 4), then the run resumed (a
    longer schedule, which a resume allows): refused in one line naming the file, exit 2 (was: it
    resumed and trained on other data). The data file's fingerprint (size + BLAKE2b) is in the
    checkpoint's description; the run folder keeps its checkpoint."""
    root = _coco(tmp_path / "coco", n=5)
    args = _tiny(root, "hydra.run.dir=run", "solver.lr_schedule=step", "solver.steps=[]", "solver.step_fractions=[]",
                 "solver.warmup_iters=0", "eval.period=0")
    rc, output, _ = _run("train.py", [*args, "solver.max_iter=1"], tmp_path, timeout=300)
    assert rc == 0, output[-3000:]
    ann = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["images"] = data["images"][:4]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] <= 4]
    ann.write_text(json.dumps(data))
    last = (tmp_path / "run" / "checkpoints" / "last.pth").read_bytes()
    rc, output, lines = _run("train.py", [*args, "solver.max_iter=2"], tmp_path, timeout=300)
    assert rc == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len(lines) == 1 and "data file train" in lines[0] and str(ann) in lines[0], lines
    assert "restore the annotation file" in lines[0], lines
    assert (tmp_path / "run" / "checkpoints" / "last.pth").read_bytes() == last


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl", "launch.log", "status.json", "checkpoints/last.pth",
                                  ".hydra/config.yaml"])
def test_a_run_folder_file_that_is_a_symlink_is_refused_and_its_target_untouched(name: str, tmp_path: Path) -> None:
    """Round four: a run folder whose files are symlinks to files outside it: refused in one line
    naming the link, exit 2, before Hydra starts; the outside file is neither emptied nor appended to."""
    root = _coco(tmp_path / "coco")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    link = tmp_path / "run" / name
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    rc, output, lines = _run("train.py", _tiny(root, "hydra.run.dir=run"), tmp_path)
    assert rc == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len(lines) == 1 and str(Path("run") / name) in lines[0] and "symbolic link" in lines[0], lines
    assert outside.read_text() == "keep me\n"


@pytest.fixture
def small_disk(tmp_path: Path) -> Callable[[str], Path]:
    """A real full disk: a tmpfs of the given size mounted under tmp_path (needs the right to
    mount, as root on the CI machine; skipped elsewhere), unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"disk_{size}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.parametrize("size, writing", [("8k", "/sw/multirun.yaml"), ("64k", "/.hydra/"), ("2m", "/sw/seed=")])
def test_a_sweep_on_a_full_disk_ends_in_one_line_exit_1(size: str, writing: str, tmp_path: Path, small_disk) -> None:
    """Round four: a sweep folder on a disk that fills up (a real tmpfs of 8k: Hydra's multirun.yaml;
    64k: a job's .hydra/ record; 2m: a run's own file, usually its checkpoint, which one depends on
    timing). Whoever wrote, the command exits 1, its last line
    names the full disk and a file, a one-line message gives the fix; no traceback (was: Hydra's stack)."""
    root = _coco(tmp_path / "coco")
    disk = small_disk(size)
    rc, output, _ = _run("train.py", ["-m", *_tiny(root), "seed=0,1", f"hydra.sweep.dir={disk / 'sw'}"], tmp_path,
                         timeout=300)
    assert rc == 1, output[-3000:]
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output, output[-3000:]
    said = [ln for ln in output.splitlines() if ln.startswith(("gn-detect:", "[gn-detect]"))]
    assert "no space left on device" in said[-1] and str(disk) in said[-1], said  # the last line: the cause
    assert writing in said[-1], said  # the writer this disk size stops
    assert any("no space left on device" in ln and "Fix: free space" in ln for ln in said), said  # and the fix
