"""The whole RetinaNet: every norm in every component trains a step and runs inference."""
import pytest
import torch

from gn_detect.layers import NORM_TYPES
from gn_detect.modeling import build_model

NORMS = ["affine", "bn", "syncbn", "gn", "gn_ws", "ln", "in", "none"]


def tiny_cfg(backbone="gn", fpn="gn", head="gn", act="relu", **extra):
    cfg = {
        "name": "test",
        "norm_opts": {"num_groups": 8},
        "backbone": {"depth": "tiny", "norm": backbone, "widths": [16, 16, 32, 32]},
        "fpn": {"out_channels": 16, "norm": fpn},
        "head": {"num_convs": 2, "norm": head, "act": act},
        "anchors": {"sizes": [16, 32, 64, 128, 256]},
    }
    cfg.update(extra)
    return cfg


def _batch(g):
    images = torch.randn(2, 3, 128, 128, generator=g)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 50.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[30.0, 30.0, 90.0, 100.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets, [(128, 128), (120, 110)]


def _step(cfg):
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3)
    model.train()
    images, targets, sizes = _batch(torch.Generator().manual_seed(0))
    losses = model(images, sizes, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable), "a trainable parameter got no gradient"
    model.eval()
    out = model(images, sizes)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    return model


@pytest.mark.parametrize("component", ["backbone", "fpn", "head"])
@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_in_every_component(component, norm):
    if component == "backbone" and norm == "none":
        with pytest.raises(ValueError, match="backbone.norm=none"):
            build_model(tiny_cfg(backbone="none"), 3)
        return
    _step(tiny_cfg(**{component: norm}))


def test_proxy_norm_activation_in_head():
    model = _step(tiny_cfg(head="ln", act="pn_relu"))
    assert any(type(m).__name__ == "ProxyNormAct" for m in model.head.modules())


def _param_keys(cfg):
    return {k for k in build_model(cfg, 3).state_dict()
            if k.rsplit(".", 1)[-1] not in ("running_mean", "running_var", "num_batches_tracked")}


def test_state_dict_keys_do_not_depend_on_norm_outside_batch_statistics_heads():
    keys = {n: _param_keys(tiny_cfg(n, n, "gn")) for n in ["bn", "gn", "gn_ws", "affine", "ln", "in"]}
    assert all(k == keys["gn"] for k in keys.values())
    # the head's norms: shared across levels for GN-type norms, per level for BN (as detectron2)
    head_gn = {k for k in _param_keys(tiny_cfg(head="gn")) if k.startswith("head.")}
    head_bn = {k for k in _param_keys(tiny_cfg(head="bn")) if k.startswith("head.")}
    assert "head.cls_subnet.0.norm.weight" in head_gn
    assert {f"head.cls_subnet.0.norm.{lvl}.weight" for lvl in range(5)} <= head_bn


@pytest.mark.parametrize("norm, per_level, expected", [
    ("gn", None, False), ("ln", None, False), ("none", None, False), ("affine", None, False),
    ("bn", None, True), ("syncbn", None, True), ("gn", True, True), ("bn", False, False),
])
def test_head_norm_sharing_follows_the_references(norm, per_level, expected):
    cfg = tiny_cfg(head=norm)
    cfg["head"]["per_level_norm"] = per_level
    model = build_model(cfg, 3)
    norm_module = model.head.cls_subnet[0].norm
    assert isinstance(norm_module, torch.nn.ModuleList) == expected
    _step(cfg)


def test_head_layers_share_the_conv_norm_act_checks():
    # pn_relu needs a normalized input: the head used to accept it after norm=none
    with pytest.raises(ValueError, match="pn_relu"):
        build_model(tiny_cfg(head="none", act="pn_relu"), 3)
    with pytest.warns(UserWarning, match="weight standardization"):
        build_model(tiny_cfg(head="none") | {"head": {"num_convs": 1, "norm": "none", "ws": True}}, 3)


def test_head_bn_is_per_level():
    model = build_model(tiny_cfg(head="bn"), 3)
    norms = model.head.cls_subnet[0].norm
    assert len(norms) == 5 and len({id(n) for n in norms}) == 5
    images, targets, sizes = _batch(torch.Generator().manual_seed(0))
    model.train()
    model(images, sizes, targets)
    means = torch.stack([n.running_mean for n in norms])
    assert not torch.allclose(means[0], means[4]), "levels must keep separate statistics"


def test_freeze_at_freezes_params_and_norm_statistics():
    cfg = tiny_cfg(backbone="bn")
    cfg["backbone"]["freeze_at"] = 2
    model = build_model(cfg, 3)
    bb = model.backbone
    assert not any(p.requires_grad for p in bb.conv1.parameters())
    assert not any(p.requires_grad for p in bb.layer1.parameters())
    assert all(p.requires_grad for p in bb.layer2.parameters())
    before = bb.bn1.running_mean.clone(), bb.layer1[0].bn1.running_mean.clone()
    model.train()
    assert not bb.bn1.training and not bb.layer1[0].bn1.training and bb.layer2[0].bn1.training
    images, targets, sizes = _batch(torch.Generator().manual_seed(0))
    model(images, sizes, targets)
    assert torch.equal(before[0], bb.bn1.running_mean) and torch.equal(before[1], bb.layer1[0].bn1.running_mean)


def test_norm_parameters_are_found_by_norm_types():
    model = build_model(tiny_cfg("gn", "gn", "gn"), 3)
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    gn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()}
    assert gn_params and gn_params <= norm_params


@pytest.mark.parametrize(
    "cfg, match",
    [
        (tiny_cfg(fpn="groupnorm"), "fpn.*groupnorm|groupnorm.*fpn"),
        (tiny_cfg(head="gn") | {"norm_opts": {"num_groups": 7}}, "7"),
        (tiny_cfg() | {"fpn": {"out_channels": 16, "nrom": "gn"}}, "nrom"),
        (tiny_cfg() | {"backbone": {"depth": 200, "norm": "gn"}}, "200"),
    ],
)
def test_bad_config_fails_at_build_with_a_clear_message(cfg, match):
    with pytest.raises((ValueError, RuntimeError), match=f"(?is){match}"):
        build_model(cfg, 3)
