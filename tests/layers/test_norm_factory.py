"""get_norm / split_norm_name / NORM_TYPES."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from gn_detect.norms import norm_names
from gn_detect.layers import (
    NORM_TYPES, AffineChannel, BatchNorm2d, SyncBatchNorm, check_syncbn_usable,
    get_activation, get_norm, split_norm_name,
)

EXPECTED = {
    "affine": AffineChannel, "bn": BatchNorm2d, "syncbn": SyncBatchNorm, "gn": nn.GroupNorm,
    "gn_ws": nn.GroupNorm, "ln": nn.GroupNorm, "in": nn.GroupNorm, "none": nn.Identity,
}


@pytest.mark.parametrize("name", norm_names())
def test_every_name_builds_and_runs(name):
    assert set(EXPECTED) == set(norm_names())
    m = get_norm(name.upper(), 64)
    assert isinstance(m, EXPECTED[name])
    assert get_norm(name, 64, impl="torch").__class__ is EXPECTED[name]  # impl=torch: torch's own module
    m.train()
    x = torch.randn(2, 64, 3, 3)
    assert m(x).shape == x.shape
    if name != "none":
        assert isinstance(m, NORM_TYPES)


def test_group_counts():
    assert get_norm("gn", 64).num_groups == 32
    assert get_norm("ln", 64).num_groups == 1
    assert get_norm("in", 64).num_groups == 64
    assert get_norm("gn", 64, num_groups=32, bn_group_size=4).num_groups == 32  # ignored option


def test_none_variants():
    for n in (None, "", "none", " None "):
        assert isinstance(get_norm(n, 8), nn.Identity)


def test_unknown_name_error():
    with pytest.raises(ValueError) as e:
        get_norm("batchnorm", 8, layer_name="backbone.res3.0.conv1")
    msg = str(e.value)
    assert "backbone.res3.0.conv1" in msg and "'batchnorm'" in msg
    for choice in norm_names():
        assert choice in msg


def test_split_norm_name():
    assert split_norm_name("gn_ws") == ("gn", True)
    assert split_norm_name("GN-WS") == ("gn", True)
    assert split_norm_name("BN") == ("bn", False)
    assert split_norm_name(None) == ("none", False)
    with pytest.raises(ValueError, match="valid choices"):
        split_norm_name("gnws")


def test_affine_false_builds_without_elementwise_affine():
    for name in ("bn", "syncbn", "gn", "ln", "in"):
        m = get_norm(name, 8, num_groups=4, affine=False)
        assert m.weight is None and m.bias is None
    with pytest.raises(ValueError, match="identity"):
        get_norm("affine", 8, affine=False)


def test_options_reach_the_module():
    bn = get_norm("bn", 8, eps=1e-3, momentum=0.01)
    assert bn.eps == 1e-3 and bn.momentum == 0.01
    assert get_norm("gn", 8, num_groups=2, eps=1e-6).eps == 1e-6
    assert get_norm("affine", 8, eps=1e-3).eps == 1e-3
    with pytest.raises(ValueError, match="bn_group_size"):
        get_norm("syncbn", 8, bn_group_size=2)


def test_norm_types_cover_param_holders():
    pn = get_activation("pn_relu", 8)
    assert isinstance(pn, NORM_TYPES)
    assert isinstance(get_norm("affine", 8, trainable=True), NORM_TYPES)
    assert not isinstance(nn.Conv2d(3, 3, 1), NORM_TYPES)


def test_syncbn_without_process_group_is_bn():
    assert check_syncbn_usable() is False
    gen = torch.Generator().manual_seed(0)
    m = get_norm("syncbn", 4).double()
    ref = nn.BatchNorm2d(4).double()
    x = torch.randn(3, 4, 2, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x))
    torch.testing.assert_close(m.running_var, ref.running_var)


def test_syncbn_unusable_backend_fails_at_build_time(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="gloo"):
        get_norm("syncbn", 8, layer_name="x")
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert check_syncbn_usable() is True
    assert isinstance(get_norm("syncbn", 8), SyncBatchNorm)
