"""freeze_module: no grads, norms stay in eval mode under parent.train(), survives copies."""

from __future__ import annotations

import copy
import io

import torch
from torch import nn

from gn_detect.layers import ConvNormAct, freeze_module, get_norm, is_frozen, unfreeze_module


def _model() -> nn.Sequential:
    stage = nn.Sequential(
        ConvNormAct(3, 8, 3, norm="bn"),
        ConvNormAct(8, 8, 3, norm="gn", norm_opts={"num_groups": 2}),
        get_norm("affine", 8, trainable=True),
        get_norm("bn", 8, bn_group_size=2),
    )
    return nn.Sequential(stage, ConvNormAct(8, 4, 1, norm="bn"))


def _check_frozen(model: nn.Sequential) -> None:
    frozen, head = model[0], model[1]
    model.train()
    assert head.training and head.norm.training
    assert not any(m.training for m in frozen.modules())
    assert all(not p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in head.parameters())
    stats = {k: v.clone() for k, v in frozen.state_dict().items()}
    x = torch.randn(4, 3, 6, 6)
    out = model(x)
    out.sum().backward()
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, stats[k]), f"{k} changed in a frozen stage"
    # eval-mode BN: output of the frozen stage does not depend on the rest of the batch
    torch.testing.assert_close(frozen(x)[:1], frozen(x[:1]))
    assert head.norm.running_mean.abs().sum() > 0  # the unfrozen BN did update


def test_frozen_stage_stays_eval_and_gradless():
    model = _model()
    out = freeze_module(model[0])
    assert out is model[0] and is_frozen(model[0]) and not is_frozen(model[1])
    assert set(model.state_dict()) == set(_model().state_dict())  # nothing added to the state
    _check_frozen(model)


def test_freeze_survives_deepcopy_and_pickle():
    model = _model()
    freeze_module(model[0])
    _check_frozen(copy.deepcopy(model))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    _check_frozen(torch.load(buf, weights_only=False))


def test_unfreeze():
    model = _model()
    freeze_module(model[0])
    unfreeze_module(model[0])
    model.train()
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters() if p is not None)
