#!/usr/bin/env python
"""The data side at COCO-train scale, measured against pycocotools and torchvision (docs/benchmarks.md).

    python scripts/bench_data.py                      # 118,000 images, ~860,000 boxes (slow on 2 cores)
    python scripts/bench_data.py --quick --json /tmp/bench_data.json   # a few hundred images, seconds

Generates (deterministically, nothing downloaded) a COCO-train-sized instances json whose file
names are hard links, under distinct names, to coco128's real JPEGs, and measures side by side:

(a) ``pycocotools.COCO(path)`` load time and peak RSS, in a fresh process (the anchor);
(b) ``tools/train.py`` start to its first training iteration, first start (an empty cache
    folder: no image verification record, no json check record), second start (both recorded),
    with the peak RSS of its process tree, and a third with the images' record only (the first
    start less its verification);
(c) peak RSS and PSS of a process tree that builds the training dataset and runs its loader
    with ``data.num_workers`` 0, 2, 4, 8 (PSS from /proc/<pid>/smaps_rollup);
(d) items per second per core (one thread) of the training dataset + collate at 800/1333 on
    coco128's JPEGs, against a torchvision-references pipeline (PIL + transforms.v2) and
    ``torchvision.io.decode_jpeg`` + uint8 resize.

Prints ratios; ``--json OUT`` writes them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("GN_DETECT_SHARED_DATA", ROOT.parent / "shared" / "data"))
POOL = SHARED / "coco128"
VAL = SHARED / "tiny_coco"
FULL_IMAGES, BOXES_PER_IMAGE = 118_000, 7.3


# ----------------------------------------------------------------------------- the data


def _pool() -> tuple[list[dict], list[dict]]:
    """(coco128's image entries by file name, its categories: COCO's 80)."""
    data = json.loads((POOL / "annotations" / "instances_train2017.json").read_text())
    return sorted(data["images"], key=lambda e: e["file_name"]), data["categories"]


def make_dataset(folder: Path, num_images: int, seed: int = 0) -> Path:
    """``folder/annotations/train.json`` + ``folder/images/`` (hard links to a copy of the pool).
    Same arguments, same bytes; reused when already there."""
    ann = folder / "annotations" / "train.json"
    meta = folder / "meta.json"
    want = {"num_images": num_images, "seed": seed, "version": 2}
    if ann.is_file() and meta.is_file() and json.loads(meta.read_text()) == want:
        return ann
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    (folder / "pool").mkdir()
    (folder / "annotations").mkdir()
    pool, categories = _pool()
    cat_ids = np.asarray(sorted(c["id"] for c in categories))
    for e in pool:
        shutil.copyfile(POOL / "train2017" / e["file_name"], folder / "pool" / e["file_name"])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(pool), num_images)
    # COCO train2017: ~7.3 boxes per image, a long tail (a few images with 50+), ~1% empty
    counts = np.minimum(rng.negative_binomial(1.2, 1.2 / (1.2 + BOXES_PER_IMAGE), num_images), 90)
    images, anns, ann_id = [], [], 1
    for i in range(num_images):
        src = pool[int(pick[i])]
        name = f"{i + 1:012d}.jpg"
        os.link(folder / "pool" / src["file_name"], folder / "images" / name)
        w, h = src["width"], src["height"]
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h, "license": 1,
                       "coco_url": "", "date_captured": "2013-11-14 17:02:52", "flickr_url": ""})
        n = int(counts[i])
        if not n:
            continue
        # box sides: log-normal around ~10% of the image side (COCO: 41% small, 34% medium, 24% large)
        bw = np.clip(np.exp(rng.normal(np.log(0.12), 1.0, n)) * w, 2, w)
        bh = np.clip(bw / np.exp(rng.normal(0, 0.5, n)), 2, h)
        x = rng.random(n) * (w - bw)
        y = rng.random(n) * (h - bh)
        cats = cat_ids[rng.integers(0, len(cat_ids), n)]
        crowd = rng.random(n) < 0.01
        for j in range(n):
            box = [round(float(x[j]), 2), round(float(y[j]), 2), round(float(bw[j]), 2), round(float(bh[j]), 2)]
            # a polygon like COCO's (it makes up most of the json's bytes)
            x0, y0, x1, y1 = box[0], box[1], box[0] + box[2], box[1] + box[3]
            seg = [round(v, 2) for v in (x0, y0, x1, y0, x1, y1, x0, y1, (x0 + x1) / 2, y1, x0, (y0 + y1) / 2)]
            anns.append({"id": ann_id, "image_id": i + 1, "category_id": int(cats[j]), "bbox": box,
                         "area": round(box[2] * box[3] * 0.6, 2), "iscrowd": int(crowd[j]), "segmentation": [seg]})
            ann_id += 1
    data = {"info": {"description": "gn-detect bench_data"}, "licenses": [{"id": 1, "name": "x", "url": ""}],
            "images": images, "annotations": anns, "categories": categories}
    ann.write_text(json.dumps(data, separators=(",", ":")))
    meta.write_text(json.dumps(want))
    return ann


# ----------------------------------------------------------------------------- process-tree memory


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _mem_kb(pid: int) -> tuple[int, int]:
    """(rss, pss) in kB of one process, (0, 0) when gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line and not line.startswith("0"))
        return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0, 0


class TreeMemory:
    """Peak sum of RSS and of PSS over a process and its descendants, sampled."""

    def __init__(self) -> None:
        self.rss = self.pss = 0

    def sample(self, pid: int) -> None:
        rss = pss = 0
        for p in _tree(pid):
            r, s = _mem_kb(p)
            rss, pss = rss + r, pss + s
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)


def _python(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- (a) pycocotools


_COCO_LOAD = """
import contextlib, io, json, resource, sys, time
from pycocotools.coco import COCO
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    COCO(sys.argv[1])
print(json.dumps({"s": time.perf_counter() - t, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_pycocotools(ann: Path, repeats: int) -> dict:
    runs = [_python(_COCO_LOAD, str(ann)) for _ in range(repeats)]
    return {"load_s": min(r["s"] for r in runs), "rss_mb": max(r["rss_mb"] for r in runs)}


# ----------------------------------------------------------------------------- (b) train.py start-up


def _train_args(folder: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / "train.py"), "model=retinanet_tiny", "data=coco",
            f"data.root={folder}", "data.train.images=images", "data.train.ann=annotations/train.json",
            f"data.val.images={VAL / 'val2017'}", f"data.val.ann={VAL / 'annotations' / 'instances_val2017.json'}",
            "data.min_size_train=[128]", "data.max_size=224", "data.min_size_test=128", "data.ims_per_device=2",
            "data.num_workers=0", "device=cpu", "solver.max_iter=1000", "log.period=1", "log.progress=log",
            "eval.period=0", f"hydra.run.dir={run_dir}", *extra]


def start_to_first_iter(folder: Path, run_dir: Path, timeout: float, cache: Path) -> dict:
    """Seconds from launching tools/train.py (its cache folder ``cache``) to its first iteration's
    log line, and the tree's peak memory; the process is stopped there."""
    shutil.rmtree(run_dir, ignore_errors=True)
    mem = TreeMemory()
    t0 = time.perf_counter()
    proc = subprocess.Popen(_train_args(folder, run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                 "GN_DETECT_CACHE": str(cache)})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    seconds = None
    while time.perf_counter() - t0 < timeout:
        mem.sample(proc.pid)
        if any("iter 0 (1/" in line for line in lines[-50:]):
            seconds = time.perf_counter() - t0
            break
        if proc.poll() is not None:
            reader.join(5)
            break
        time.sleep(0.1)
    buf = "".join(lines)
    proc.kill()
    proc.wait()
    if seconds is None:
        raise SystemExit(f"bench_data: tools/train.py did not reach its first iteration; its output:\n{buf[-3000:]}")
    return {"s": seconds, "rss_mb": mem.rss / 1024, "pss_mb": mem.pss / 1024}


# ----------------------------------------------------------------------------- (c) memory per worker


_WORKERS = """
import json, os, sys, time
import torch
sys.path.insert(0, os.environ["PYTHONPATH"])
from scripts.bench_data import TreeMemory
from gn_detect.data import build_dataset
from gn_detect.data.samplers import build_train_loader
folder, workers, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = {"name": "coco", "root": folder, "train": {"images": "images", "ann": "annotations/train.json"},
       "min_size_train": [64], "max_size": 96, "verify_images": False}
ds = build_dataset(cfg, "train")
mem = TreeMemory()
mem.sample(os.getpid())
base = mem.pss
loader = build_train_loader(ds, 2, seed=0, num_workers=workers, size_divisibility=32)
it = iter(loader)
for i in range(batches):
    next(it)
    if i % 4 == 0:
        mem.sample(os.getpid())
mem.sample(os.getpid())
print(json.dumps({"rss_mb": mem.rss / 1024, "pss_mb": mem.pss / 1024, "dataset_pss_mb": base / 1024}))
os._exit(0)
"""


def bench_workers(folder: Path, counts: list[int], batches: int) -> dict:
    out = {}
    for n in counts:
        out[n] = _python(_WORKERS, str(folder), str(n), str(max(batches, 4 * n)))
    return out


# ----------------------------------------------------------------------------- (d) throughput


def _tv_reference(paths, sizes, flips, min_size, max_size, decoder):
    """torchvision-references-style items: decode, flip, resize shortest edge (v2, uint8, antialias)."""
    import torch
    from torchvision import tv_tensors
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms import v2
    from PIL import Image

    resize = v2.Resize(min_size, max_size=max_size, antialias=True)
    out = []
    for p, flip, boxes in zip(paths, flips, sizes):
        if decoder == "pil":
            img = v2.functional.pil_to_tensor(Image.open(p).convert("RGB"))
        else:
            img = decode_jpeg(read_file(str(p)), mode=ImageReadMode.RGB)  # coco128 has grayscale JPEGs
        b = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=img.shape[-2:])
        img = tv_tensors.Image(img)
        if flip:
            img, b = v2.functional.horizontal_flip(img), v2.functional.horizontal_flip(b)
        img, b = resize(img, b)
        out.append((img.as_subclass(torch.Tensor), {"boxes": b.as_subclass(torch.Tensor)}))
    return out


def bench_throughput(repeats: int, images: int | None) -> dict:
    import torch
    from gn_detect.data import build_dataset, collate

    torch.set_num_threads(1)
    cfg = {"name": "coco", "root": str(POOL), "train": {"images": "train2017", "ann": "annotations/instances_train2017.json"},
           "min_size_train": [800], "max_size": 1333, "verify_images": False, "filter_empty": False}
    ds = build_dataset(cfg, "train")  # data.decode at its default
    ds_pil = build_dataset({**cfg, "decode": "pil"}, "train")
    n = min(len(ds), images or len(ds))
    keys = [(i, 1000 + i) for i in range(n)]
    flips = [bool(i % 2) for i in range(n)]  # about flip_prob=0.5, like ours
    paths = [ds.image_path(i) for i in range(n)]
    boxes = [torch.from_numpy(ds.annotations(i)[0]) for i in range(n)]

    def ours(d):
        def run(warmup=False):
            for j in range(0, 2 if warmup else n, 2):
                collate([d[k] for k in keys[j:j + 2]], 128)
        return run

    def reference(decoder):
        def run(warmup=False):
            for j in range(0, 2 if warmup else n, 2):
                collate(_tv_reference(paths[j:j + 2], boxes[j:j + 2], flips[j:j + 2], 800, 1333, decoder), 128)
        return run

    out = {}
    for name, fn in (("gn_detect", ours(ds)), ("gn_detect_decode_pil", ours(ds_pil)), ("tv_reference_pil", reference("pil")),
                     ("tv_decode_jpeg_uint8", reference("tensor"))):
        fn(warmup=True)  # first calls load libraries and kernels
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        out[name] = n / best
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=FULL_IMAGES, help="images in the generated json")
    ap.add_argument("--quick", action="store_true", help="a small run: 400 images, fewer repeats (seconds)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="where the generated data goes (default: a folder under the system temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--workers", default="0,2,4,8", help="data.num_workers values for (c)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c,d")
    args = ap.parse_args(argv)
    if args.quick:
        args.images = 400 if args.images == FULL_IMAGES else args.images
    skip = set(filter(None, args.skip.split(",")))
    repeats = 1 if args.quick else 3
    cache = args.cache or Path(tempfile.gettempdir()) / f"gn_detect_bench_data_{args.images}"
    if not POOL.is_dir():
        print(f"bench_data: {POOL} not found. Fix: set GN_DETECT_SHARED_DATA to the folder holding coco128",
              file=sys.stderr)
        return 2
    t = time.perf_counter()
    ann = make_dataset(cache, args.images)
    from gn_detect.io import parse_json

    annotations = len(parse_json(ann.read_bytes())["annotations"])
    print(f"data: {args.images} images, {annotations} annotations in {ann} ({ann.stat().st_size / 1e6:.0f} MB, "
          f"made/reused in {time.perf_counter() - t:.1f} s); machine: {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}")
    res: dict = {"images": args.images, "annotations": annotations, "cpu_count": os.cpu_count(),
                 "load_avg_start": os.getloadavg()[0]}

    if "a" not in skip:
        a = bench_pycocotools(ann, repeats)
        res.update(pycocotools_load_s=a["load_s"], pycocotools_rss_mb=a["rss_mb"])
        print(f"(a) pycocotools COCO(): {a['load_s']:.2f} s, peak RSS {a['rss_mb']:.0f} MB")
    if "b" not in skip:
        run_dir = cache / "run"
        records = cache / "gn_detect_cache"  # the starts' own cache folder: emptied, the first start is a first
        shutil.rmtree(records, ignore_errors=True)
        timeout = 60 + args.images * 0.05
        first = start_to_first_iter(cache, run_dir, timeout, records)
        second = start_to_first_iter(cache, run_dir, timeout, records)
        record_mb = sum(p.stat().st_size for p in (records / "checked").glob("*.npz")) / 1e6
        shutil.rmtree(records / "checked")  # the json check records gone, the image verification record kept
        unrecorded = start_to_first_iter(cache, run_dir, timeout, records)
        res.update(startup_first_s=first["s"], startup_second_s=second["s"], startup_rss_mb=second["rss_mb"],
                   startup_pss_mb=second["pss_mb"], startup_json_unrecorded_s=unrecorded["s"],
                   json_check_records_mb=record_mb)
        print(f"(b) tools/train.py start -> first iteration: first {first['s']:.1f} s, second {second['s']:.1f} s; "
              f"peak tree RSS {second['rss_mb']:.0f} MB, PSS {second['pss_mb']:.0f} MB")
        print(f"    images verified and recorded, json checks not recorded: {unrecorded['s']:.1f} s (the first start "
              f"less its verification); json check records {record_mb:.0f} MB")
        if "pycocotools_load_s" in res:
            print(f"    second start / pycocotools load = {second['s'] / res['pycocotools_load_s']:.2f}x "
                  f"(goal <= 1.5x); first = {first['s'] / res['pycocotools_load_s']:.2f}x")
    if "c" not in skip:
        counts = [int(x) for x in args.workers.split(",")]
        c = bench_workers(cache, counts, 8 if args.quick else 24)
        lo, hi = min(counts), max(counts)
        per_pss = (c[hi]["pss_mb"] - c[lo]["pss_mb"]) / max(hi - lo, 1)
        per_rss = (c[hi]["rss_mb"] - c[lo]["rss_mb"]) / max(hi - lo, 1)
        res.update(rss_per_worker_mb=per_pss, rss_sum_per_worker_mb=per_rss,
                   workers={str(k): v for k, v in c.items()})
        for k, v in c.items():
            print(f"(c) num_workers={k}: peak tree RSS {v['rss_mb']:.0f} MB, PSS {v['pss_mb']:.0f} MB")
        print(f"    growth per added worker: PSS {per_pss:.1f} MB (goal <= 50), RSS sum {per_rss:.1f} MB")
    if "d" not in skip:
        d = bench_throughput(repeats, 16 if args.quick else None)
        ratio = d["gn_detect"] / d["tv_reference_pil"]
        res.update(items_per_s=d, items_per_s_ratio_vs_tv_reference=ratio,
                   items_per_s_ratio_vs_tv_decode_jpeg=d["gn_detect"] / d["tv_decode_jpeg_uint8"])
        print(f"(d) items/s/core at 800/1333 (dataset + collate, 1 thread): gn-detect {d['gn_detect']:.1f} "
              f"(data.decode=pil: {d['gn_detect_decode_pil']:.1f}), "
              f"torchvision reference (PIL + v2) {d['tv_reference_pil']:.1f}, decode_jpeg + uint8 resize "
              f"{d['tv_decode_jpeg_uint8']:.1f}; ratio vs reference {ratio:.2f}x (goal >= 1)")
    res["load_avg_end"] = os.getloadavg()[0]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
