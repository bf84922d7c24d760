"""The image verification record: a second start decodes nothing, a changed file is decoded again,
a foreign or broken record is not trusted, and the skip counts are those of a fresh verification."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gn_detect.data import CocoDetection
from gn_detect.data import checks
from gn_detect.data.transforms import DetectionTransform

from .conftest import no_cache
from .test_data_checks import ann, img


def _build(d: Path, f: Path) -> CocoDetection:
    return CocoDetection(d, f, transform=DetectionTransform(32, 10_000))


def _count_decodes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = checks.check_image

    def counting(path, decode=True):
        if decode:
            calls.append(Path(path))
        return real(path, decode)

    monkeypatch.setattr(checks, "check_image", counting)
    return calls


def test_second_build_decodes_nothing_and_counts_the_same(make_coco, monkeypatch) -> None:
    d, f = make_coco([img(1), img(2), img(3), img(4, w=50)], [ann(k, k, [1, 1, 5, 5]) for k in (1, 2, 3, 4)])
    (d / "3.jpg").write_text("this is not an image")
    json_entries = json.loads(f.read_text())
    json_entries["images"][3]["width"] = 40  # 4.jpg is 50 wide: size_mismatch
    f.write_text(json.dumps(json_entries))
    calls = _count_decodes(monkeypatch)
    first = _build(d, f)
    assert len(calls) == 4
    second = _build(d, f)
    assert len(calls) == 4  # nothing decoded again
    assert second.skipped == first.skipped and second.image_ids == first.image_ids == [1, 2]
    assert first.skipped["unreadable_image"] == 1 and first.skipped["size_mismatch"] == 1
    records = list((checks.cache_dir() / "verified").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["folder"] == str(d.absolute())


def test_changed_file_is_decoded_again(make_coco, monkeypatch) -> None:
    d, f = make_coco([img(1), img(2)], [ann(k, k, [1, 1, 5, 5]) for k in (1, 2)])
    calls = _count_decodes(monkeypatch)
    _build(d, f)
    raw = (d / "2.jpg").read_bytes()
    (d / "2.jpg").write_bytes(raw[: len(raw) // 2])  # truncated after it was verified
    ds = _build(d, f)
    assert calls[2:] == [d / "2.jpg"] and ds.skipped["unreadable_image"] == 1 and ds.image_ids == [1]
    st = os.stat(d / "1.jpg")
    os.utime(d / "1.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, new mtime
    _build(d, f)
    assert calls[3:] == [d / "1.jpg"]


def test_foreign_or_broken_record_is_not_trusted(make_coco, monkeypatch) -> None:
    d, f = make_coco([img(1), img(2)], [ann(k, k, [1, 1, 5, 5]) for k in (1, 2)])
    (d / "2.jpg").write_text("this is not an image")
    _build(d, f)
    (record,) = (checks.cache_dir() / "verified").glob("*.json")
    data = json.loads(record.read_text())
    data["folder"] = "/somewhere/else"  # a record claiming every image is fine, for another folder
    for e in data["entries"].values():
        e[2] = None
    record.write_text(json.dumps(data))
    calls = _count_decodes(monkeypatch)
    assert _build(d, f).skipped["unreadable_image"] == 1 and len(calls) == 2
    record.write_text("{not json")
    assert _build(d, f).skipped["unreadable_image"] == 1 and len(calls) == 4


def test_unwritable_cache_only_costs_time(make_coco, monkeypatch, tmp_path: Path) -> None:
    no_cache(tmp_path, monkeypatch)
    d, f = make_coco([img(1)], [ann(1, 1, [1, 1, 5, 5])])
    assert _build(d, f).image_ids == [1] and _build(d, f).image_ids == [1]
