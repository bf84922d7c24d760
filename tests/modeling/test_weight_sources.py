"""Pretrained files of every source give the source model's features.

Each test builds a random ResNet/ResNeXt as a dict named the way its source names it (written
here from the published naming rules, not from gn_detect's mapping), writes it in the source's
file format, and runs the source's own forward (``reference``: F.conv2d over those names, the
source's channel order, mean, std, stride placement and norm). gn-detect loads the same file
through ``model.backbone.weights`` and through tools/convert_weights.py; C3-C5 for the same
0-255 RGB image must agree: max|ours - theirs| / max|theirs| < 1e-5 per map.

Bottleneck networks use R-50's block counts with small stage widths (``model.backbone.widths``),
so a file is a few hundred kB.
"""
from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gn_detect.modeling import build_model
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import convert_weights as convert_tool  # noqa: E402

BLOCKS = (3, 4, 6, 3)
WIDTHS = (8, 8, 16, 16)    # stage widths before expansion (planes), small
TV_MEAN, TV_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
C2_MEAN = [103.53, 116.28, 123.675]
C2_STD_X = [57.375, 57.12, 58.395]


# ----------------------------------------------------------------------------- source layouts
def c2_names(stage: int, block: int, layer: str, kind: str) -> tuple[str, str, str]:
    """Caffe2/Detectron: (conv weight, norm scale, norm shift) of layer 'a'|'b'|'c'|'short'|'stem'."""
    if layer == "stem":
        prefix = "res_conv1_bn" if kind == "bn" else "conv1_gn"
        return "conv1_w", f"{prefix}_s", f"{prefix}_b"
    branch = "branch1" if layer == "short" else f"branch2{layer}"
    base = f"res{stage}_{block}_{branch}"
    return f"{base}_w", f"{base}_{kind}_s", f"{base}_{kind}_b"


def d2_names(stage: int, block: int, layer: str, prefix: str = "") -> tuple[str, str]:
    """detectron2: (conv weight, norm prefix)."""
    if layer == "stem":
        return f"{prefix}stem.conv1.weight", f"{prefix}stem.conv1.norm."
    conv = "shortcut" if layer == "short" else {"a": "conv1", "b": "conv2", "c": "conv3"}[layer]
    return f"{prefix}res{stage}.{block}.{conv}.weight", f"{prefix}res{stage}.{block}.{conv}.norm."


def tv_names(stage: int, block: int, layer: str) -> tuple[str, str]:
    """torchvision/timm: (conv weight, norm prefix)."""
    if layer == "stem":
        return "conv1.weight", "bn1."
    base = f"layer{stage - 1}.{block}"
    if layer == "short":
        return f"{base}.downsample.0.weight", f"{base}.downsample.1."
    i = {"a": 1, "b": 2, "c": 3}[layer]
    return f"{base}.conv{i}.weight", f"{base}.bn{i}."


def layer_shapes(groups: int, width_per_group: int, widths: tuple[int, ...]):
    """(stage, block, layer, cin, cout, k, conv groups) of every conv, torchvision's width rule."""
    yield 2, 0, "stem", 3, widths[0], 7, 1
    cin = widths[0]
    for s, (planes, n) in enumerate(zip(widths, BLOCKS), start=2):
        width = int(planes * width_per_group / 64) * groups
        for b in range(n):
            yield s, b, "a", cin, width, 1, 1
            yield s, b, "b", width, width, 3, groups
            yield s, b, "c", width, planes * 4, 1, 1
            if b == 0:
                yield s, b, "short", cin, planes * 4, 1, 1
            cin = planes * 4


def random_layers(groups: int = 1, width_per_group: int = 64, seed: int = 0, widths=WIDTHS) -> dict:
    """(stage, block, layer) -> {"w", "scale", "shift", "mean", "var"} float32 numpy, random."""
    g = np.random.default_rng(seed)
    out = {}
    for s, b, layer, cin, cout, k, grp in layer_shapes(groups, width_per_group, widths):
        fan_in = cin // grp * k * k
        out[(s, b, layer)] = {
            "w": (g.standard_normal((cout, cin // grp, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32),
            "scale": g.uniform(0.5, 1.5, cout).astype(np.float32),
            "shift": (g.standard_normal(cout) * 0.2).astype(np.float32),
            "mean": (g.standard_normal(cout) * 0.3).astype(np.float32),
            "var": g.uniform(0.5, 2.0, cout).astype(np.float32)}
    return out


# ----------------------------------------------------------------------------- the sources' forward
def reference(layers: dict, image: torch.Tensor, *, bgr: bool, mean, std, stride_in_1x1: bool,
              norm: str, groups: int = 1, num_groups: int = 4) -> list[torch.Tensor]:
    """res3, res4, res5 of the source network (Detectron/detectron2/torchvision rules) in float64."""
    x = image.double()
    if bgr:
        x = x.flip(1)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    def conv_norm(x, key, stride, conv_groups=1):
        p = {k: torch.from_numpy(v).double() for k, v in layers[key].items()}
        k = p["w"].shape[-1]
        y = F.conv2d(x, p["w"], stride=stride, padding=k // 2, groups=conv_groups)
        if norm == "affine":
            return y * p["scale"].view(1, -1, 1, 1) + p["shift"].view(1, -1, 1, 1)
        if norm == "gn":
            return F.group_norm(y, num_groups, p["scale"], p["shift"], eps=1e-5)
        return F.batch_norm(y, p["mean"], p["var"], p["scale"], p["shift"], training=False, eps=1e-5)

    x = F.max_pool2d(F.relu(conv_norm(x, (2, 0, "stem"), 2)), 3, 2, 1)
    outs = []
    for s, n in zip(range(2, 6), BLOCKS):
        for b in range(n):
            stride = 2 if (b == 0 and s > 2) else 1
            s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
            y = F.relu(conv_norm(x, (s, b, "a"), s1))
            y = F.relu(conv_norm(y, (s, b, "b"), s3, groups))
            y = conv_norm(y, (s, b, "c"), 1)
            short = conv_norm(x, (s, b, "short"), stride) if b == 0 else x
            x = F.relu(y + short)
        if s >= 3:
            outs.append(x)
    return outs


# ----------------------------------------------------------------------------- file writers
def caffe2_blobs(layers: dict, kind: str) -> dict:
    blobs = {"fc1000_w": np.zeros((10, 64), np.float32), "fc1000_b": np.zeros(10, np.float32)}
    for (s, b, layer), p in layers.items():
        w, sc, sh = c2_names(s, b, layer, kind)
        blobs[w], blobs[sc], blobs[sh] = p["w"], p["scale"], p["shift"]
        blobs[f"{w}_momentum"] = np.zeros_like(p["w"])
    return blobs


class Py2Pickler(pickle._Pickler):  # noqa: SLF001 - the pure-Python pickler, to write opcodes as Python 2 did
    """Writes what Python 2's cPickle (protocol 2) writes: str/bytes as BINSTRING, numpy under
    ``numpy.core.multiarray``."""

    dispatch = dict(pickle._Pickler.dispatch)  # noqa: SLF001

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        qual = name or obj.__qualname__
        module = module.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{qual}\n".encode())
        self.memoize(obj)


def write_pickle(obj: Any, path: Path, protocol: int | str) -> Path:
    with open(path, "wb") as f:
        if protocol == "py2":
            Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=protocol)
    return path


def named_state(layers: dict, names: Callable, stats: bool) -> dict[str, np.ndarray]:
    out = {}
    for (s, b, layer), p in layers.items():
        w, norm = names(s, b, layer)
        out[w], out[norm + "weight"], out[norm + "bias"] = p["w"], p["scale"], p["shift"]
        if stats:
            out[norm + "running_mean"], out[norm + "running_var"] = p["mean"], p["var"]
    return out


# ----------------------------------------------------------------------------- gn-detect side
def ours(path: Path, norm: str, image: torch.Tensor, **backbone: Any) -> list[torch.Tensor]:
    backbone.setdefault("widths", list(WIDTHS))  # widths=None: the standard ones
    cfg = {"backbone": {"depth": "50", "norm": norm, "weights": str(path), **backbone},
           "norm_opts": {"num_groups": 4, "impl": "torch"}, "fpn": {"out_channels": 8}}
    model = build_model(cfg, num_classes=2).eval()
    with torch.no_grad():
        feats = model.backbone(model.normalizer(image, [tuple(image.shape[-2:])]))
    return [feats[k] for k in ("c3", "c4", "c5")], model


def assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for g, w in zip(got, want):
        rel = ((g.double() - w).abs().max() / w.abs().max()).item()
        assert rel < 1e-5, rel


IMAGE = torch.randint(0, 256, (1, 3, 64, 96), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


def check_both_ways(src: Path, tmp: Path, norm: str, want: list[torch.Tensor], **backbone: Any) -> Any:
    got, model = ours(src, norm, IMAGE, **backbone)
    assert_close(got, want)
    dst = tmp / f"{src.stem}.converted.pth"
    assert convert_tool.main([str(src), str(dst)]) == 0
    assert set(torch.load(dst, weights_only=True)) == {"state_dict", "conventions"}
    got2, model2 = ours(dst, norm, IMAGE, **backbone)
    assert_close(got2, want)
    return model


# ----------------------------------------------------------------------------- the sources
def test_detectron_msra_caffe2_pickle(tmp_path):
    """MSRA R-50: fused BN (affine), stride in the 1x1, BGR minus pixel means, std 1 (a Python 2
    cPickle file in a "blobs" wrapper)."""
    layers = random_layers()
    path = write_pickle({"blobs": caffe2_blobs(layers, "bn")}, tmp_path / "R-50.pkl", "py2")
    want = reference(layers, IMAGE, bgr=True, mean=C2_MEAN, std=[1, 1, 1], stride_in_1x1=True, norm="affine")
    model = check_both_ways(path, tmp_path, "affine", want)
    assert model.normalizer.format == "BGR"
    assert model.backbone.layer2[0].conv1.stride == (2, 2)


@pytest.mark.parametrize("protocol,wrapped", [(2, False), (3, True), (4, False), (5, True), (0, False)])
def test_caffe2_pickles_of_every_protocol_read_the_same(tmp_path, protocol, wrapped):
    """Python 3 protocols 0-5, with or without "blobs": the same weights as the Python 2 file."""
    from gn_detect.checkpoint import read_weights

    blobs = caffe2_blobs(random_layers(), "bn")
    py2 = read_weights(write_pickle({"blobs": blobs}, tmp_path / "py2.pkl", "py2"))
    py2_state = {k: v.clone() for k, v in py2.state_dict.items()}
    other = read_weights(write_pickle({"blobs": blobs} if wrapped else blobs, tmp_path / "p.pkl", protocol))
    assert (other.source, other.holds) == (py2.source, py2.holds) == ("detectron", "scale_shift")
    assert other.state_dict.keys() == py2_state.keys()
    assert all(torch.equal(other.state_dict[k], v) for k, v in py2_state.items())


def test_detectron_fair_gn_caffe2_pickle(tmp_path):
    """Detectron R-50-GN: GN weights (conv1_gn_s, ..._gn_s), stride in the 3x3, BGR, std 1."""
    layers = random_layers(seed=1)
    path = write_pickle({"blobs": caffe2_blobs(layers, "gn")}, tmp_path / "R-50-GN.pkl", "py2")
    want = reference(layers, IMAGE, bgr=True, mean=C2_MEAN, std=[1, 1, 1], stride_in_1x1=False, norm="gn")
    check_both_ways(path, tmp_path, "gn", want)


def test_detectron_resnext_32x4d_caffe2_pickle(tmp_path):
    """ResNeXt 32x4d in Caffe2 names: grouped 3x3, BGR with ResNeXt std, stride in the 3x3."""
    layers = random_layers(groups=32, width_per_group=4, seed=2, widths=(16, 16, 32, 32))  # 1-2 channels/group
    path = write_pickle(caffe2_blobs(layers, "bn"), tmp_path / "X-50-32x4d.pkl", 4)
    want = reference(layers, IMAGE, bgr=True, mean=C2_MEAN, std=C2_STD_X, stride_in_1x1=False, norm="affine",
                     groups=32)
    check_both_ways(path, tmp_path, "affine", want, groups=32, width_per_group=4, widths=[16, 16, 32, 32])


@pytest.mark.parametrize("fmt,author,prefix", [("pth", "torchvision", ""), ("pkl", None, "backbone.bottom_up.")])
def test_detectron2_bn_statistics_folded(tmp_path, fmt, author, prefix):
    """detectron2 FrozenBN with statistics -> affine (folded); __author__ torchvision -> RGB."""
    layers = random_layers(seed=4)
    state = named_state(layers, lambda s, b, l: d2_names(s, b, l, prefix), stats=True)
    state[f"{prefix}fpn_lateral3.weight"] = np.zeros((4, 4, 1, 1), np.float32)  # a detector's other parts
    if fmt == "pth":
        obj = {"model": {k: torch.from_numpy(v) for k, v in state.items()}, "__author__": author}
        path = tmp_path / "d2.pth"
        torch.save(obj, path)
    else:
        path = write_pickle({"model": state, "__author__": "FAIR"}, tmp_path / "d2.pkl", 2)
    tv = author == "torchvision"
    want = reference(layers, IMAGE, bgr=not tv, mean=TV_MEAN if tv else C2_MEAN, std=TV_STD if tv else [1, 1, 1],
                     stride_in_1x1=not tv, norm="bn")
    check_both_ways(path, tmp_path, "affine", want)


def test_timm_gn_safetensors(tmp_path):
    """timm resnet50_gn: torchvision names, GN weight/bias, RGB with ImageNet mean/std."""
    from safetensors.torch import save_file

    layers = random_layers(seed=5)
    state = {k: torch.from_numpy(v) for k, v in named_state(layers, tv_names, stats=False).items()}
    state["fc.weight"] = torch.zeros(10, 64)
    path = tmp_path / "resnet50_gn.safetensors"
    save_file(state, str(path))
    want = reference(layers, IMAGE, bgr=False, mean=TV_MEAN, std=TV_STD, stride_in_1x1=False, norm="gn")
    check_both_ways(path, tmp_path, "gn", want)


def test_torchvision_pth_with_statistics_into_bn(tmp_path):
    layers = random_layers(seed=6)
    state = {k: torch.from_numpy(v) for k, v in named_state(layers, tv_names, stats=True).items()}
    path = tmp_path / "resnet50.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    want = reference(layers, IMAGE, bgr=False, mean=TV_MEAN, std=TV_STD, stride_in_1x1=False, norm="bn")
    got, model = ours(path, "bn", IMAGE)
    assert_close(got, want)
    assert model.normalizer.format == "RGB"


# ----------------------------------------------------------------------------- refusals
def _fits_error(path: Path, norm: str, **backbone: Any) -> str:
    with pytest.raises(ValueError) as e:
        ours(path, norm, IMAGE, **backbone)
    return str(e.value)


def test_norm_mismatches_are_refused_in_one_line(tmp_path):
    layers = random_layers(seed=7)
    msra = write_pickle(caffe2_blobs(layers, "bn"), tmp_path / "msra.pkl", 2)
    gn = write_pickle(caffe2_blobs(layers, "gn"), tmp_path / "gn.pkl", 2)
    tv = tmp_path / "tv.pth"
    torch.save({k: torch.from_numpy(v) for k, v in named_state(layers, tv_names, stats=True).items()}, tv)
    cases = [(msra, "bn", r"detectron file holding fused BN scale/shift.*norm=bn.*norm=affine"),
             (msra, "gn", r"norm=affine"), (gn, "affine", r"GN weight/bias.*norm=gn"),
             (tv, "gn", r"torchvision file holding BN with statistics.*norm=affine or norm=bn")]
    for path, norm, pattern in cases:
        msg = _fits_error(path, norm)
        assert "\n" not in msg and re.search(pattern, msg) and "weights_strict=false" in msg, msg
    # weights_strict=false takes the convolutions only
    _, model = ours(msra, "gn", IMAGE, weights_strict=False)
    torch.testing.assert_close(model.backbone.conv1.weight, torch.from_numpy(layers[(2, 0, "stem")]["w"]))
    assert torch.equal(model.backbone.bn1.weight, torch.ones(WIDTHS[0]))


def test_convert_needs_norm_where_the_content_cannot_tell(tmp_path, capsys):
    layers = random_layers(seed=8)
    path = tmp_path / "nostats.pth"
    torch.save({k: torch.from_numpy(v) for k, v in named_state(layers, tv_names, stats=False).items()}, path)
    assert convert_tool.main([str(path), str(tmp_path / "o.pth")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--norm" in err, err
    assert not (tmp_path / "o.pth").exists()
    assert convert_tool.main([str(path), str(tmp_path / "o.pth"), "--norm", "gn"]) == 0
    conv = torch.load(tmp_path / "o.pth", weights_only=True)["conventions"]
    assert conv["norm"] == "gn" and conv["num_groups"] == 32 and conv["depth"] == 50 and conv["input_format"] == "RGB"


def test_convert_refuses_damaged_statistics_and_overwriting_its_input(tmp_path, capsys):
    """A tester's finds: a negative running_var folded into NaN weights with exit 0, NaN values
    were written as they were, and an output path equal to the input overwrote it."""
    layers = random_layers(seed=9)
    state = {k: torch.from_numpy(v) for k, v in named_state(layers, tv_names, stats=True).items()}
    key = next(k for k in state if k.endswith("running_var"))
    bad = tmp_path / "negvar.pth"
    torch.save({**state, key: -state[key]}, bad)
    nan = tmp_path / "nan.pth"
    torch.save({**state, "conv1.weight": torch.full_like(state["conv1.weight"], float("nan"))}, nan)
    good = tmp_path / "good.pth"
    torch.save(state, good)
    size = good.stat().st_size
    for args, needle in (([bad, tmp_path / "o.pth", "--norm", "affine"], f"{key} holds negative variances"),
                         ([nan, tmp_path / "o.pth", "--norm", "bn"], "1 tensor(s) hold NaN or inf (e.g. conv1.weight)"),
                         ([good, good, "--norm", "bn"], "is the input file: converting would overwrite it")):
        assert convert_tool.main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o.pth").exists() and good.stat().st_size == size


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_code_in_a_pickle_never_runs(tmp_path, capsys):
    """Refused at every entry point (build_model, the start of a run, tools/convert_weights.py as a
    process and in-process), in one line naming the file; the pickle's call never happens."""
    from gn_detect.config.errors import ConfigError
    from gn_detect.engine.trainer import train
    from tests.engine._train_utils import tiny_cfg

    marker = tmp_path / "pwned"
    evil_pkl = write_pickle({"blobs": {"conv1_w": _Evil(marker)}}, tmp_path / "evil.pkl", 2)
    evil_pth = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Evil(marker)}, evil_pth)
    assert not marker.exists()
    for path in (evil_pkl, evil_pth):
        msg = _fits_error(path, "affine")
        assert "\n" not in msg and str(path) in msg, msg
        assert convert_tool.main([str(path), str(tmp_path / "o.pth")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(path) in err, err
        cfg = tiny_cfg(tmp_path / "no_data", **{"model.backbone.weights": str(path)})
        with pytest.raises(ConfigError, match=re.escape(str(path))):
            train(cfg, tmp_path / "run", base_dir=tmp_path)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "convert_weights.py"), str(evil_pkl),
                        str(tmp_path / "o.pth")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "refused" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "o.pth").exists()


def test_a_misfit_stops_the_start_before_any_data_is_read(tmp_path):
    """train(): the weights check runs before the data is opened (data.root does not exist here)
    and before the run folder gets any file."""
    from gn_detect.config.errors import ConfigError
    from gn_detect.engine.trainer import train
    from tests.engine._train_utils import tiny_cfg

    msra = write_pickle(caffe2_blobs(random_layers(seed=9), "bn"), tmp_path / "msra.pkl", 2)
    cfg = tiny_cfg(tmp_path / "no_data", **{"model.backbone.depth": "50", "model.backbone.widths": list(WIDTHS),
                                             "model.backbone.norm": "bn", "model.backbone.weights": str(msra)})
    with pytest.raises(ConfigError, match=r"^model.backbone.weights: .*fused BN.*norm=affine") as e:
        train(cfg, tmp_path / "run", base_dir=tmp_path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("norm", ["affine", "bn"])
def test_torchvision_resnext50_against_torchvision_itself(tmp_path, norm):
    """torchvision's own resnext50_32x4d (random BN statistics) as the reference: its features for
    ImageNet-normalized RGB input equal ours for the 0-255 image."""
    from torchvision.models import resnext50_32x4d
    from torchvision.models._utils import IntermediateLayerGetter

    torch.manual_seed(0)
    ref = resnext50_32x4d()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    path = tmp_path / "resnext50_32x4d.pth"
    torch.save(ref.state_dict(), path)
    x = (IMAGE.double() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    tv = IntermediateLayerGetter(ref.double().eval(), {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
    with torch.no_grad():
        want = list(tv(x).values())
    got, _ = ours(path, norm, IMAGE, groups=32, width_per_group=4, widths=None)
    assert_close(got, want)
