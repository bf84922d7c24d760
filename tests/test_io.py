"""gn_detect.io: strict JSON of tensors / NumPy values, and the atomic writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gn_detect.io import atomic_open, to_jsonable, unwritable_file, unwritable_folder, write_json_atomic, write_text_atomic


def test_to_jsonable_values() -> None:
    obj = {
        1: np.float32(0.5), "i": np.int64(7), "b": np.bool_(True), "arr": np.arange(3), "one": np.array([2.5]),
        "t": torch.tensor(1.5), "t1": torch.tensor([[3]]), "tv": torch.tensor([1, 2]), "empty": np.zeros(0),
        "nan": float("nan"), "inf": np.float64("inf"), "p": Path("a/b"), "tup": (1, "x", None), "other": {1, 2} - {1, 2},
    }
    assert to_jsonable(obj) == {
        "1": 0.5, "i": 7, "b": True, "arr": [0, 1, 2], "one": 2.5,
        "t": 1.5, "t1": 3, "tv": [1, 2], "empty": [],
        "nan": None, "inf": None, "p": "a/b", "tup": [1, "x", None], "other": "set()",
    }
    assert type(to_jsonable(np.int64(7))) is int and type(to_jsonable(torch.tensor(True))) is bool


def test_write_json_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "x.json"
    assert write_json_atomic(path, {"a": torch.tensor(1.5), "b": float("inf")}) == path
    text = path.read_text()
    assert json.loads(text) == {"a": 1.5, "b": None} and text.endswith("}\n") and "\n  " in text
    write_json_atomic(path, [1, 2], indent=None)
    assert path.read_text() == "[1, 2]\n"
    # a write failing halfway leaves the previous file whole and no temporary file behind
    def half_then_fail(obj, f, **kwargs) -> None:
        f.write("{")
        raise OSError("No space left on device")

    monkeypatch.setattr(json, "dump", half_then_fail)
    with pytest.raises(OSError, match="(?i)no space left"):
        write_json_atomic(path, {"x": 1})
    assert path.read_text() == "[1, 2]\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_atomic_text_writers_keep_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    """report.md, per_class.csv, the sweep's summary files and config.yaml are rewritten in place:
    a writer that fails (or is killed) halfway leaves the previous file whole."""
    import csv

    path = tmp_path / "report.md"
    assert write_text_atomic(path, "# old\n") == path
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path) as f:
            f.write("# new, half")
            raise KeyboardInterrupt  # e.g. Ctrl-C while rendering
    assert path.read_text() == "# old\n" and [p.name for p in tmp_path.iterdir()] == ["report.md"]
    rows = [["name", "AP"], ["a,b", "0.5"]]
    with atomic_open(tmp_path / "per_class.csv", newline="") as f:
        csv.writer(f).writerows(rows)
    with open(tmp_path / "per_class.csv", newline="") as f:
        assert list(csv.reader(f)) == rows
    assert (tmp_path / "per_class.csv").read_bytes().count(b"\r\n") == 2  # csv's own line ends, untranslated


def test_unwritable_folder_and_file(tmp_path: Path) -> None:
    """The output-path check behind every command's start-up refusal: a folder path must lead to an
    existing folder where a file can be created (tried, and nothing left behind); a file path must
    not be a folder."""
    (tmp_path / "f").write_text("x")
    assert unwritable_folder(tmp_path / "new" / "deeper") is None
    assert unwritable_folder("rel/dir", base=tmp_path) is None
    assert unwritable_folder(tmp_path / "f") == f"{tmp_path / 'f'} is a file, not a folder"
    assert unwritable_folder(tmp_path / "f" / "a" / "b") == f"{tmp_path / 'f'} is a file, not a folder"
    assert unwritable_file(tmp_path / "f") is None and unwritable_file(tmp_path / "new" / "x.pth") is None
    assert unwritable_file(tmp_path) == f"{tmp_path} is a folder, not a file"
    assert unwritable_file(tmp_path / "f" / "x.pth") == f"{tmp_path / 'f'} is a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # the probe files are gone, nothing made
    if Path("/proc/self").is_dir():  # no file can be created there, not even by root
        assert "/proc is not writable" in unwritable_folder("/proc/gn_detect_run")


@pytest.mark.parametrize("raw", [
    b'{"images": [{"id": 1, "width": 640.0}], "x": [1.5, -0.0, 1e-7, 0.1, 123456789.123456789]}',
    b'[' + b'9' * 19 + b', -' + b'9' * 19 + b']',         # 64-bit range: orjson's ints
    b'[' + b'1' * 25 + b']',                                # beyond: json's int, not orjson's float
    b'[' + b'1' * 5000 + b']',                              # beyond Python's int-string limit: json's error
    b'{"a": NaN, "b": Infinity, "c": 1e400}',               # json's extensions
    b'{"a": 1, "a": 2}', b'"\\ud800"', '{"\u00e9": "\u4e2d"}'.encode(), b'\xef\xbb\xbf{}',
    b'{"a": 1', b'', b'[1,]', '{"a": 1}'.encode("utf-16"),
])
def test_parse_json_is_json_loads(raw: bytes) -> None:
    """parse_json (orjson when installed) gives json.loads' value, or raises its exception with its
    message, on what orjson reads differently or refuses."""
    from gn_detect.io import parse_json

    try:
        want: object = json.loads(raw)
    except (ValueError, RecursionError) as e:
        with pytest.raises(type(e)) as info:
            parse_json(raw)
        assert str(info.value) == str(e)
        return
    got = parse_json(raw)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    assert type(got) is type(want)


def test_parse_json_reads_real_coco_files_as_json_does() -> None:
    """Every value of coco128's and tiny_coco's instances files (floats, unicode) is json's."""
    from gn_detect.io import parse_json
    from tests.data.conftest import shared_data_dir

    files = sorted(shared_data_dir().glob("*/annotations/instances_*.json"))
    if not files:
        pytest.skip("no shared COCO files")
    for f in files:
        raw = f.read_bytes()
        got, want = parse_json(raw), json.loads(raw)
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), f  # 1 and 1.0 told apart


def test_paused_gc_freezes_once_nested_and_a_run_end_releases() -> None:
    """paused_gc: the collector off within (nested: only the outermost one freezes and turns it on
    again); release_frozen (every training run's end) gives a cycle that became garbage while
    frozen back to the collector."""
    import gc
    import weakref

    from gn_detect.io import paused_gc, release_frozen

    class Node:
        pass

    release_frozen()  # what earlier tests' datasets froze
    assert gc.isenabled()
    with paused_gc():
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled() and gc.get_freeze_count() == 0
        a = Node()
        a.self = a  # a cycle
        ref = weakref.ref(a)
    assert gc.isenabled() and gc.get_freeze_count() > 0
    del a
    gc.collect()
    assert ref() is not None  # frozen: out of the collector's reach
    release_frozen()
    gc.collect()
    assert ref() is None and gc.get_freeze_count() == 0
