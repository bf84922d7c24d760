"""detectron2 and Detectron RetinaNet files map onto gn-detect's RetinaNet (issue 27).

Each source's file is built here from its documented names and the shapes of a gn-detect R-50
RetinaNet with 80 classes (P6 from C5, as both sources build it), renamed by tables written in
this file from the sources' naming rules (detectron2's FPN/RetinaNetHead modules, Detectron's
FPN.py/retinanet_heads.py blob names), not from gn_detect's maps; values are random. Anchors are
checked against each source's own formula, re-implemented here in NumPy: detectron2's
DefaultAnchorGenerator.generate_cell_anchors and Detectron's generate_anchors.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gn_detect.checkpoint import WeightsError
from gn_detect.checkpoint.detectron_maps import map_detectron, map_detectron2
from gn_detect.checkpoint.detectors import coco_rows
from gn_detect.config.schema import CHOICES, ModelConfig
from gn_detect.modeling import build_model
from gn_detect.modeling.anchors import AnchorGenerator
from gn_detect.modeling.box_coder import BoxCoder
from tests.conftest import REPO

K, A = 80, 9
SIZES, STRIDES = (32, 64, 128, 256, 512), (8, 16, 32, 64, 128)


# ----------------------------------------------------------------------------- the sources' names

def _d2_name(name: str) -> list[str]:
    """detectron2's name(s) of a gn-detect R-50 RetinaNet parameter (BN weight/bias -> FrozenBN's
    four tensors)."""
    m = re.fullmatch(r"backbone\.(conv1|bn1)\.(\w+)", name)
    if m:
        if m.group(1) == "conv1":
            return [f"backbone.bottom_up.stem.conv1.{m.group(2)}"]
        return [f"backbone.bottom_up.stem.conv1.norm.{p}" for p in ("weight", "bias", "running_mean", "running_var")] \
            if m.group(2) == "weight" else []
    m = re.fullmatch(r"backbone\.layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)", name)
    if m:
        layer, block, part, param = m.groups()
        base = f"backbone.bottom_up.res{int(layer) + 1}.{block}."
        if part.startswith("conv"):
            return [base + f"{part}.{param}"]
        conv = "shortcut" if part.startswith("downsample") else f"conv{part[-1]}"
        if part == "downsample.0":
            return [base + f"shortcut.{param}"]
        return [base + f"{conv}.norm.{p}" for p in ("weight", "bias", "running_mean", "running_var")] \
            if param == "weight" else []
    if m := re.fullmatch(r"fpn\.(lateral|output)\.(\d)\.conv\.(\w+)", name):
        return [f"backbone.fpn_{m.group(1)}{int(m.group(2)) + 3}.{m.group(3)}"]
    if m := re.fullmatch(r"fpn\.(p[67])\.(\w+)", name):
        return [f"backbone.top_block.{m.group(1)}.{m.group(2)}"]
    if m := re.fullmatch(r"head\.(cls|bbox)_subnet\.(\d)\.conv\.(\w+)", name):
        return [f"head.{m.group(1)}_subnet.{2 * int(m.group(2))}.{m.group(3)}"]  # Sequential(conv, ReLU, ...)
    if m := re.fullmatch(r"head\.(cls_score|bbox_pred)\.(\w+)", name):
        return [name]
    raise AssertionError(f"no detectron2 name for {name}")


_C2_LAST = {3: 3, 4: 5, 5: 2}  # the last block of res3, res4, res5 (res3_3_sum, ...)


def _c2_name(name: str) -> list[str]:
    """Detectron's blob name(s) of a gn-detect R-50 RetinaNet parameter."""
    p = lambda param: {"weight": "w", "bias": "b"}[param]  # noqa: E731
    if name == "backbone.conv1.weight":
        return ["conv1_w"]
    if m := re.fullmatch(r"backbone\.bn1\.(\w+)", name):
        return [f"res_conv1_bn_{'s' if m.group(1) == 'weight' else 'b'}"]
    m = re.fullmatch(r"backbone\.layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)", name)
    if m:
        layer, block, part, param = m.groups()
        branch = "branch1" if part.startswith("downsample") else "branch2" + "abc"[int(part[-1]) - 1]
        base = f"res{int(layer) + 1}_{block}_{branch}"
        norm = part.startswith("bn") or part == "downsample.1"
        return [f"{base}_bn_{'s' if param == 'weight' else 'b'}" if norm else f"{base}_w"]
    if m := re.fullmatch(r"fpn\.lateral\.(\d)\.conv\.(\w+)", name):
        s = int(m.group(1)) + 3
        return [f"fpn_inner_res{s}_{_C2_LAST[s]}_sum{'' if s == 5 else '_lateral'}_{p(m.group(2))}"]
    if m := re.fullmatch(r"fpn\.output\.(\d)\.conv\.(\w+)", name):
        s = int(m.group(1)) + 3
        return [f"fpn_res{s}_{_C2_LAST[s]}_sum_{p(m.group(2))}"]
    if m := re.fullmatch(r"fpn\.p([67])\.(\w+)", name):
        return [f"fpn_{m.group(1)}_{p(m.group(2))}"]
    if m := re.fullmatch(r"head\.(cls|bbox)_subnet\.(\d)\.conv\.(\w+)", name):
        return [f"retnet_{m.group(1)}_conv_n{m.group(2)}_fpn3_{p(m.group(3))}"]
    if m := re.fullmatch(r"head\.(cls_score|bbox_pred)\.(\w+)", name):
        return [f"retnet_{'cls' if m.group(1) == 'cls_score' else 'bbox'}_pred_fpn3_{p(m.group(2))}"]
    raise AssertionError(f"no Detectron name for {name}")


@pytest.fixture(scope="module")
def shapes() -> dict[str, tuple[int, ...]]:
    """gn-detect's R-50 RetinaNet parameter shapes (80 classes, P6 from C5), BN-keyed backbone."""
    model = build_model({"backbone": {"depth": "50", "norm": "bn"}, "fpn": {"top_block_in": "c5"}}, K)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("criterion.") and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _file(shapes, rename, *, numpy: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        for src in rename(name):
            t = torch.rand(shape, generator=g) + 0.5 if src.endswith("running_var") else torch.randn(shape, generator=g)
            out[src] = t.numpy() if numpy else t
    return out


@pytest.fixture(scope="module")
def d2_file(shapes):
    model = _file(shapes, _d2_name, numpy=True)
    model["pixel_mean"] = np.array([103.53, 116.28, 123.675], dtype=np.float32).reshape(3, 1, 1)
    model["pixel_std"] = np.ones((3, 1, 1), dtype=np.float32)
    model["backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked"] = np.array(0)
    return model


@pytest.fixture(scope="module")
def c2_file(shapes):
    blobs = _file(shapes, _c2_name, numpy=True)
    blobs["fpn_6_w_momentum"] = np.zeros_like(blobs["fpn_6_w"])  # Detectron saves SGD momenta next to the weights
    blobs["conv1_w_momentum"] = np.zeros_like(blobs["conv1_w"])
    return blobs


def _built(conventions: dict, extra: dict | None = None):
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.from_dotlist(
        [f"{k}={v}" for k, v in conventions.items()]), extra or {})
    return build_model(cfg, K)


# ----------------------------------------------------------------------------- every key, every shape

@pytest.mark.parametrize("source", ["detectron2", "detectron"])
def test_every_key_of_the_file_is_mapped_and_fills_the_model(source, d2_file, c2_file):
    file, mapper = (d2_file, map_detectron2) if source == "detectron2" else (c2_file, map_detectron)
    md = mapper(file)
    assert md.source == source
    ignored = {"pixel_mean", "pixel_std", "backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked"} \
        if source == "detectron2" else {"fpn_6_w_momentum", "conv1_w_momentum"}
    assert set(md.ignored) == ignored
    assert {f for f, _ in md.mapped} == set(file) - ignored  # every other name of the file mapped, once
    assert len(md.mapped) == len(set(file) - ignored)
    model = _built(md.conventions)
    own = model.state_dict()
    result = model.load_state_dict(md.state_dict, strict=False)
    assert result.missing_keys == ["criterion.num_pos_ema"] and result.unexpected_keys == []  # a buffer, not a weight
    for name in ("fpn.p6.weight", "fpn.lateral.2.conv.weight", "head.cls_subnet.3.conv.bias"):
        assert own[name].shape == md.state_dict[name].shape
    src = {"detectron2": {"fpn.p6.weight": "backbone.top_block.p6.weight",
                          "head.bbox_subnet.2.conv.weight": "head.bbox_subnet.4.weight"},
           "detectron": {"fpn.p6.weight": "fpn_6_w", "head.bbox_subnet.2.conv.weight": "retnet_bbox_conv_n2_fpn3_w"}}
    state = model.state_dict()
    for ours, theirs in src[source].items():
        assert torch.equal(state[ours], torch.from_numpy(file[theirs]))
    if source == "detectron2":  # FrozenBN statistics folded with FrozenBatchNorm2d's eps 1e-5
        p = "backbone.bottom_up.res3.1.conv2.norm."
        w, b, m, v = (torch.from_numpy(file[p + k]).double() for k in ("weight", "bias", "running_mean", "running_var"))
        scale = w / torch.sqrt(v + 1e-5)
        assert torch.allclose(state["backbone.layer2.1.bn2.weight"].double(), scale, atol=1e-6)
        assert torch.allclose(state["backbone.layer2.1.bn2.bias"].double(), b - m * scale, atol=1e-5)
    else:  # fused BN: loaded as it is
        assert torch.equal(state["backbone.layer2.1.bn2.weight"], torch.from_numpy(file["res3_1_branch2b_bn_s"]))
    assert md.class_names == coco_rows("contiguous") and len(md.class_names) == K


@pytest.mark.parametrize("source", ["detectron2", "detectron"])
def test_conventions_are_schema_keys_with_allowed_values(source, d2_file, c2_file):
    md = map_detectron2(d2_file) if source == "detectron2" else map_detectron(c2_file)
    cfg = OmegaConf.structured(ModelConfig)
    for key, value in md.conventions.items():
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key
        if f"model.{key}" in CHOICES:
            assert value in CHOICES[f"model.{key}"], key
    expected = {"detectron2": {"input.format": "BGR", "backbone.stride_in_1x1": True, "fpn.top_block_in": "c5",
                               "anchors.style": "exact", "size_divisibility": 32, "test.clip": "after_nms",
                               "backbone.norm_opts.eps": 1e-5, "input.pixel_std": [1.0, 1.0, 1.0]},
                "detectron": {"input.format": "BGR", "backbone.stride_in_1x1": True, "fpn.top_block_in": "c5",
                              "anchors.style": "detectron", "size_divisibility": 128, "test.clip": "before_nms",
                              "test.score_thresh_per_level": [0.05, 0.05, 0.05, 0.05, 0.0],
                              "input.pixel_mean": [102.9801, 115.9465, 122.7717]}}[source]
    assert {k: md.conventions[k] for k in expected} == expected


def test_a_detectron2_pth_of_tensors_maps_as_its_pkl_of_arrays(shapes, d2_file):
    tensors = map_detectron2(_file(shapes, _d2_name, numpy=False)).state_dict
    arrays = map_detectron2(d2_file).state_dict
    assert tensors.keys() == arrays.keys()
    assert all(torch.equal(tensors[k], arrays[k]) for k in arrays)  # same seed, same values, same permutation


def test_a_detectron2_file_states_its_pixel_mean(d2_file):
    file = dict(d2_file, pixel_mean=np.array([[[1.0]], [[2.0]], [[3.0]]], dtype=np.float32))
    assert map_detectron2(file).conventions["input.pixel_mean"] == [1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------- anchors: each source's formula

def _d2_cell(size: float) -> np.ndarray:
    # detectron2 DefaultAnchorGenerator.generate_cell_anchors, sizes (x, x 2^(1/3), x 2^(2/3)), ratios (0.5, 1, 2)
    out = []
    for s in (size, size * 2 ** (1.0 / 3), size * 2 ** (2.0 / 3)):
        for ratio in (0.5, 1.0, 2.0):
            w = math.sqrt(s ** 2 / ratio)
            h = ratio * w
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return np.array(out)


def _c2_anchor(stride: float, size: float, ratio: float) -> np.ndarray:
    # Detectron generate_anchors(stride, (size,), (ratio,)): _ratio_enum then _scale_enum, inclusive corners
    w = h = stride
    cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
    ws = np.round(np.sqrt(w * h / ratio))
    hs = np.round(ws * ratio)
    ws, hs = ws * (size / stride), hs * (size / stride)
    return np.array([cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)])


def _c2_cell(stride: float) -> np.ndarray:
    # Detectron test_retinanet._create_cell_anchors: for octave: for aspect in ASPECT_RATIOS (1.0, 2.0, 0.5)
    return np.array([_c2_anchor(stride, stride * 2 ** (o / 3.0) * 4, r) for o in range(3) for r in (1.0, 2.0, 0.5)])


def _continuous(inclusive: np.ndarray) -> np.ndarray:
    return inclusive + np.array([0, 0, 1, 1])  # Detectron's width x2 - x1 + 1 as gn-detect's x2 - x1


def test_detectron_anchor_style_is_detectrons_generate_anchors():
    ours = AnchorGenerator(style="detectron")
    for cell, stride in zip(ours.cell_anchors(), STRIDES):
        ref = _c2_cell(stride)
        gn_order = [[1.0, 2.0, 0.5].index(r) + 3 * s for r in (0.5, 1.0, 2.0) for s in range(3)]
        np.testing.assert_allclose(cell.numpy(), _continuous(ref[gn_order]), atol=1e-4, rtol=0)
    shapes = [(5, 7), (3, 4), (2, 2), (1, 1), (1, 1)]
    levels = ours(shapes)
    for (h, w), stride, got, cell in zip(shapes, STRIDES, levels, ours.cell_anchors()):
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shifts = np.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4) * stride  # test_retinanet: (x, y, x, y) * stride
        np.testing.assert_allclose(got.numpy(), (shifts + cell.numpy()[None]).reshape(-1, 4), atol=1e-4, rtol=0)
    # ratio 1, scale 1 at P3: base [0, 0, 7, 7] (centre 3.5), 8 px wide, x4 -> inclusive [-12, 19], continuous [-12, 20]
    assert torch.equal(ours.cell_anchors()[0][3], torch.tensor([-12.0, -12.0, 20.0, 20.0]))
    exact = AnchorGenerator().cell_anchors()[0]
    assert (exact - ours.cell_anchors()[0]).abs().max() > 3  # rounded sizes, 0.5-ish centre: another choice


def _c2_decode(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    # Detectron utils/boxes.py bbox_transform, weights (1, 1, 1, 1): widths x2 - x1 + 1, x2 ... - 1
    widths, heights = boxes[:, 2] - boxes[:, 0] + 1.0, boxes[:, 3] - boxes[:, 1] + 1.0
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    pcx, pcy = deltas[:, 0] * widths + cx, deltas[:, 1] * heights + cy
    pw, ph = np.exp(deltas[:, 2]) * widths, np.exp(deltas[:, 3]) * heights
    return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw - 1, pcy + 0.5 * ph - 1], 1)


def test_detectron_style_anchors_decode_as_detectrons_box_coder():
    inclusive = np.concatenate([_c2_cell(s) + 37 for s in STRIDES])  # some cell's anchors on every level
    deltas = np.random.default_rng(0).normal(0, 0.5, (len(inclusive), 4))
    ours = BoxCoder().decode(torch.tensor(deltas), torch.tensor(_continuous(inclusive)))
    # Detectron's boxes in continuous corners (x2 + 1), the box its COCO json writes (w = x2 - x1 + 1)
    np.testing.assert_allclose(ours.numpy(), _continuous(_c2_decode(inclusive, deltas)), atol=1e-3, rtol=0)


def _row_sources(md, rows_per_anchor: int, key: str) -> list[int]:
    """Which source anchor each gn-detect anchor's rows came from (the file's bias encodes it)."""
    b = md.state_dict[key].reshape(A, rows_per_anchor)
    src = (b // 1000).long()
    assert (src == src[:, :1]).all()  # all rows of an anchor moved together
    assert torch.equal(b[0] % 1000, torch.arange(rows_per_anchor, dtype=b.dtype))  # class/coord order kept
    return src[:, 0].tolist()


@pytest.mark.parametrize("source", ["detectron2", "detectron"])
def test_class_and_box_rows_move_with_their_anchors(source, d2_file, c2_file):
    names = {"detectron2": ("head.cls_score.bias", "head.bbox_pred.bias", "head.cls_score.weight"),
             "detectron": ("retnet_cls_pred_fpn3_b", "retnet_bbox_pred_fpn3_b", "retnet_cls_pred_fpn3_w")}[source]
    file = dict(d2_file if source == "detectron2" else c2_file)
    file[names[0]] = np.array([a * 1000 + k for a in range(A) for k in range(K)], dtype=np.float32)
    file[names[1]] = np.array([a * 1000 + c for a in range(A) for c in range(4)], dtype=np.float32)
    md = (map_detectron2 if source == "detectron2" else map_detectron)(file)
    cls_src = _row_sources(md, K, "head.cls_score.bias")
    assert _row_sources(md, 4, "head.bbox_pred.bias") == cls_src
    w = md.state_dict["head.cls_score.weight"].reshape(A, K, -1)
    theirs = torch.from_numpy(file[names[2]]).reshape(A, K, -1)
    assert torch.equal(w, theirs[cls_src])  # the weights move with the biases
    for level, (size, stride) in enumerate(zip(SIZES, STRIDES)):
        if source == "detectron2":
            ours, ref = AnchorGenerator(style="exact").cell_anchors()[level], _d2_cell(size)
        else:
            ours, ref = AnchorGenerator(style="detectron").cell_anchors()[level], _continuous(_c2_cell(stride))
        # row a of gn-detect's cell anchors is the source's anchor its logits came from
        np.testing.assert_allclose(ours.numpy(), ref[cls_src], atol=1e-3, rtol=0)
    assert cls_src == ([0, 3, 6, 1, 4, 7, 2, 5, 8] if source == "detectron2" else [2, 5, 8, 0, 3, 6, 1, 4, 7])


# ----------------------------------------------------------------------------- refused in one line

def test_unknown_detector_parts_are_refused(d2_file, c2_file):
    with pytest.raises(WeightsError, match="fpn_inner_res5_2_sum_gn_s.*does not know"):
        map_detectron(dict(c2_file, fpn_inner_res5_2_sum_gn_s=np.ones(256, np.float32)))
    with pytest.raises(WeightsError, match=r"head.cls_subnet.1.weight.*does not know"):
        map_detectron2(dict(d2_file, **{"head.cls_subnet.1.weight": np.ones(256, np.float32)}))  # a head norm
    with pytest.raises(WeightsError, match="not 4 per anchor"):
        map_detectron(dict(c2_file, retnet_bbox_pred_fpn3_b=np.zeros(A * 4 * K, np.float32),
                           retnet_bbox_pred_fpn3_w=np.zeros((A * 4 * K, 256, 3, 3), np.float32)))
    head_only = {k: v for k, v in d2_file.items() if not k.startswith("backbone.bottom_up.")}
    with pytest.raises(WeightsError, match="no ResNet backbone"):
        map_detectron2(head_only)
    backbone_only = {k: v for k, v in d2_file.items() if k.startswith("backbone.bottom_up.")}
    with pytest.raises(WeightsError, match="without head.cls_score"):
        map_detectron2(backbone_only)


# ----------------------------------------------------------------------------- presets

def _preset(name: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=["model=retinanet_r50_fpn", f"+pretrained={name}"]).model


def _param_shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.startswith("criterion.")
            and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.parametrize("preset, source", [("retinanet_detectron2_r50_1x", "detectron2"),
                                            ("retinanet_detectron2_r50_3x", "detectron2"),
                                            ("retinanet_detectron_r50_1x", "detectron")])
def test_detectron_presets_build_the_files_architecture(preset, source, d2_file, c2_file):
    md = map_detectron2(d2_file) if source == "detectron2" else map_detectron(c2_file)
    cfg = _preset(preset)
    for part in ("backbone", "fpn", "head"):  # the preset's norms are the ones the file brings
        assert cfg[part].norm == md.conventions[f"{part}.norm"]
    # as model.weights=FILE will: the file's conventions on top of the preset
    model = build_model(OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in md.conventions.items()])), K)
    assert _param_shapes(model.state_dict()) == _param_shapes(md.state_dict)


def _tv_name(name: str) -> str:
    """torchvision's RetinaNet name -> gn-detect's (written from torchvision's module layout)."""
    rules = [(r"backbone\.body\.", "backbone."), (r"backbone\.fpn\.inner_blocks\.(\d)\.0\.", r"fpn.lateral.\1.conv."),
             (r"backbone\.fpn\.layer_blocks\.(\d)\.0\.", r"fpn.output.\1.conv."), (r"backbone\.fpn\.extra_blocks\.", "fpn."),
             (r"head\.classification_head\.conv\.(\d)\.0\.", r"head.cls_subnet.\1.conv."),
             (r"head\.classification_head\.conv\.(\d)\.1\.", r"head.cls_subnet.\1.norm."),
             (r"head\.regression_head\.conv\.(\d)\.0\.", r"head.bbox_subnet.\1.conv."),
             (r"head\.regression_head\.conv\.(\d)\.1\.", r"head.bbox_subnet.\1.norm."),
             (r"head\.classification_head\.cls_logits\.", "head.cls_score."),
             (r"head\.regression_head\.bbox_reg\.", "head.bbox_pred.")]
    for pattern, repl in rules:
        name = re.sub(f"^{pattern}", repl, name)
    return name


@pytest.mark.parametrize("preset, top_block_in", [("retinanet_torchvision_v1", "p5"), ("retinanet_torchvision_v2", "c5")])
def test_torchvision_presets_build_torchvisions_architecture(preset, top_block_in):
    from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

    tv = (retinanet_resnet50_fpn if preset.endswith("v1") else retinanet_resnet50_fpn_v2)(
        weights=None, weights_backbone=None)  # 91 class rows
    theirs = _param_shapes({_tv_name(k): v for k, v in tv.state_dict().items()})
    # the P6 source is a convention torchvision's file brings (its map, issue 27); given here by hand
    model = build_model(OmegaConf.merge(_preset(preset), {"fpn": {"top_block_in": top_block_in}}), 91)
    assert _param_shapes(model.state_dict()) == theirs


# ----------------------------------------------------------------------------- as model.weights

@pytest.mark.slow
@pytest.mark.parametrize("source", ["detectron2", "detectron"])
def test_a_detectron_file_starts_a_model_and_round_trips_convert_weights(source, d2_file, c2_file, tmp_path,
                                                                          capsys):
    """Saved as its source saves it (.pkl of numpy arrays), the file is told from its content by
    model.weights' reader, brings its conventions, fills FPN, head (its 80 COCO rows kept for COCO's
    names) and backbone convolutions with its values; tools/convert_weights.py's output starts the
    same model."""
    import pickle

    from gn_detect.checkpoint.detector_files import read_detector

    raw = {"model": d2_file, "__author__": "Detectron2 Model Zoo"} if source == "detectron2" else {"blobs": c2_file}
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(raw))
    md = read_detector(path)
    assert md.source == source and md.class_names == coco_rows("contiguous")
    mapped = (map_detectron2(d2_file) if source == "detectron2" else map_detectron(c2_file)).state_dict
    torch.manual_seed(0)
    model = build_model({"weights": str(path)}, K, coco_rows("contiguous"))
    got = model.state_dict()
    assert model.fpn.top_block_in == "c5" and model.anchor_generator.style == md.conventions["anchors.style"]
    for k, v in mapped.items():
        if k.startswith(("fpn.", "head.")) or (k.startswith("backbone.") and v.dim() == 4):
            assert torch.equal(got[k], torch.as_tensor(v)), k
    assert not model.weights_report["class_rows"]["reinitialized"]
    from tests.modeling.test_weight_sources import convert_tool  # tools/convert_weights.py, imported once

    out = tmp_path / "converted.pth"
    assert convert_tool.main([str(path), str(out)]) == 0
    assert f"detector   {source}: loadable as model.weights={out}" in capsys.readouterr().out
    torch.manual_seed(0)
    again = build_model({"weights": str(out)}, K, coco_rows("contiguous")).state_dict()
    assert again.keys() == got.keys() and all(torch.equal(again[k], got[k]) for k in got)
