import math

import pytest
import torch
from torch import nn

from gn_detect.engine.solver import (
    build_lr_scheduler,
    build_optimizer,
    clip_gradients,
    lr_factor_at,
    scale_lr,
)


def _groups(opt):
    return {g["name"]: g for g in opt.param_groups}


def _ids(params):
    return {id(p) for p in params}


def test_norm_params_get_norm_decay_and_frozen_are_excluded():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    model[3].bias.requires_grad_(False)
    opt = build_optimizer(model, lr=0.1, weight_decay=1e-4, weight_decay_norm=0.0,
                          norm_types=(nn.BatchNorm2d, nn.GroupNorm))
    g = _groups(opt)
    assert set(g) == {"default", "norm"}  # no "bias" group unless weight_decay_bias is given
    assert g["norm"]["weight_decay"] == 0.0 and g["default"]["weight_decay"] == 1e-4
    assert _ids(g["norm"]["params"]) == _ids([*model[1].parameters(), *model[2].parameters()])
    assert _ids(g["default"]["params"]) == _ids([model[0].weight, model[0].bias, model[3].weight])
    assert id(model[3].bias) not in _ids(p for grp in opt.param_groups for p in grp["params"])
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 0.1


def test_bias_group_and_no_duplicates_with_shared_modules():
    lin = nn.Linear(4, 4)
    other = nn.Linear(4, 4)
    other.weight = lin.weight  # tied parameter on two different modules
    model = nn.Sequential(lin, nn.GroupNorm(1, 4), lin, other)  # module used twice
    opt = build_optimizer(model, lr=0.1, weight_decay=1e-4, weight_decay_norm=0.0,
                          weight_decay_bias=0.0, norm_types=(nn.GroupNorm,))
    all_params = [p for grp in opt.param_groups for p in grp["params"]]
    assert len(all_params) == len(_ids(all_params)) == len(list(model.parameters()))
    g = _groups(opt)
    assert _ids(g["bias"]["params"]) == _ids([lin.bias, other.bias])
    assert g["bias"]["weight_decay"] == 0.0
    # the norm's bias stays in the norm group, not the bias group
    assert _ids(g["norm"]["params"]) == _ids(model[1].parameters())
    assert _ids(g["default"]["params"]) == {id(lin.weight)}


def test_default_norm_types_cover_torch_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))
    opt = build_optimizer(model, lr=0.1, weight_decay_norm=0.5)
    g = _groups(opt)
    assert len(g["norm"]["params"]) == 4 and g["norm"]["weight_decay"] == 0.5


def _lrs(sched_kwargs, n, base_lr=0.01):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = build_lr_scheduler(opt, **sched_kwargs)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_with_warmup_hand_computed():
    lrs = _lrs(dict(max_iter=100, warmup_iters=10, warmup_factor=0.001, schedule="step",
                    steps=[60, 80], gamma=0.1), 100)
    expected = {0: 1e-5, 5: 0.01 * (0.001 * 0.5 + 0.5), 9: 0.01 * (0.001 * 0.1 + 0.9),
                10: 0.01, 59: 0.01, 60: 0.001, 79: 0.001, 80: 1e-4, 99: 1e-4}
    for it, lr in expected.items():
        assert lrs[it] == pytest.approx(lr, rel=1e-9), it


def test_cosine_schedule_hand_computed():
    lrs = _lrs(dict(max_iter=100, warmup_iters=0, schedule="cosine"), 100, base_lr=1.0)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[25] == pytest.approx(0.5 * (1 + math.sqrt(0.5)))
    assert lrs[50] == pytest.approx(0.5)
    assert lrs[75] == pytest.approx(0.5 * (1 - math.sqrt(0.5)))
    kw = dict(max_iter=100, warmup_iters=10, warmup_factor=0.001, schedule="cosine", min_lr_factor=0.1)
    assert lr_factor_at(50, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor_at(100, **kw) == pytest.approx(0.1)
    assert lr_factor_at(500, **kw) == pytest.approx(0.1)  # clamped past max_iter
    # warm-up multiplies the main schedule (continuous at the end of warm-up)
    assert lr_factor_at(5, **kw) == pytest.approx((0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.05))) * 0.5005)


def test_scheduler_state_dict_resume_matches_uninterrupted():
    kw = dict(max_iter=50, warmup_iters=5, schedule="step", steps=[20, 40])
    full = _lrs(kw, 50)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    sched = build_lr_scheduler(opt, **kw)
    for _ in range(25):
        opt.step()
        sched.step()
    state_o, state_s = opt.state_dict(), sched.state_dict()

    p2 = nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.SGD([p2], lr=0.01)
    sched2 = build_lr_scheduler(opt2, **kw)
    opt2.load_state_dict(state_o)
    sched2.load_state_dict(state_s)
    resumed = []
    for _ in range(25):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == pytest.approx(full[25:], rel=1e-12)


def test_bad_schedule_arguments():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="schedule"):
        build_lr_scheduler(opt, max_iter=10, warmup_iters=0, schedule="poly")
    with pytest.raises(ValueError, match="increasing"):
        build_lr_scheduler(opt, max_iter=10, warmup_iters=0, steps=[5, 3])


def test_scale_lr():
    assert scale_lr(0.01, 16, 16) == pytest.approx(0.01)
    assert scale_lr(0.01, 8, 16) == pytest.approx(0.005)
    with pytest.raises(ValueError):
        scale_lr(0.01, 0, 16)


def test_clip_gradients():
    model = nn.Linear(2, 1, bias=False)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    assert clip_gradients(model, None) is None
    assert model.weight.grad.norm().item() == pytest.approx(5.0)
    assert clip_gradients(model, 1.0) == pytest.approx(5.0)  # norm before clipping
    assert model.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-4)
    assert clip_gradients([nn.Parameter(torch.zeros(1))], 1.0) == 0.0  # no grads at all
