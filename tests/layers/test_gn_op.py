"""torch.ops.gn_detect.group_norm (gn_op.py) on the CPU: compiled with fullgraph, its guards, the
autocast policy and the impl='auto' self-check. The kernel itself runs in the interpreter child
of test_gn_triton.py (guards that need the kernel are checked there)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gn_detect.layers import GroupNorm, get_norm_act
from gn_detect.layers import gn_op

EPS = 1e-5


class Block(nn.Module):
    """conv -> GN + ReLU (one fused GroupNormAct, impl='auto') -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.norm, self.act = get_norm_act("gn", 16, "relu", num_groups=4)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.act(self.norm(self.conv1(x))))


def _targets(gm: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


def test_fullgraph_compile_has_the_op_as_one_node_forward_and_backward():
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._dynamo.utils import counters

    graphs: dict[str, list] = {"fw": [], "bw": []}

    def keep(kind):
        def compiler(gm, _inputs):
            graphs[kind].append(gm)
            return make_boxed_func(gm.forward)
        return compiler

    torch.manual_seed(0)
    block = Block()
    with torch.no_grad():
        block.norm.weight.normal_()
    x = torch.randn(2, 3, 9, 7)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(block, fullgraph=True, dynamic=False,
                             backend=aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw")))
    xc = x.clone().requires_grad_()
    out = compiled(xc)
    out.square().sum().backward()
    assert sum(counters["graph_break"].values()) == 0
    assert len(graphs["fw"]) == 1 and len(graphs["bw"]) == 1
    fw, bw = _targets(graphs["fw"][0]), _targets(graphs["bw"][0])
    assert "gn_detect.group_norm.default" in fw and "gn_detect.group_norm_backward.default" in bw
    assert not any("native_group_norm" in t for t in fw | bw), (fw, bw)
    # same numbers as the eager block with torch's own GN + ReLU
    xe = x.clone().requires_grad_()
    ref = block.conv2(F.relu(F.group_norm(block.conv1(xe), 4, block.norm.weight, block.norm.bias, EPS)))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    compiled_grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    ref.square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)
    for got, p in zip(compiled_grads, block.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)


def test_max_offset_matches_brute_force_on_strided_views():
    storage = torch.arange(4000, dtype=torch.float32)
    x = torch.randn(2, 16, 6, 5).contiguous(memory_format=torch.channels_last)
    views = [
        storage.as_strided((2, 4, 3, 5), (600, 1, 100, 7)),       # channels innermost, gaps
        storage.as_strided((3, 8, 4, 4), (1000, 3, 200, 40)),
        storage.as_strided((2, 3, 5, 2), (1, 500, 20, 3)),         # batch stride below the rest
        x[:, 4:12],                                                # channel slice, channels-last
        x[:, :, ::2],
    ]
    for v in views:
        idx = [torch.arange(s) * st for s, st in zip(v.shape[1:], v.stride()[1:])]
        brute = int(sum(torch.meshgrid(*idx, indexing="ij")).max())
        assert gn_op.max_offset(v) == brute


def _big_channel_slice() -> torch.Tensor:
    """8 channels of a channels-last (1, 2048, 1024, 1025) tensor: 8.4M elements per sample, but
    offsets up to ~2^31 inside it (meta: nothing is allocated)."""
    full = torch.empty(1, 2048, 1024, 1025, device="meta").contiguous(memory_format=torch.channels_last)
    return full[:, :8]


def test_index_guard_uses_the_largest_in_sample_offset(monkeypatch):
    x = _big_channel_slice()
    assert x.numel() < 2**31 <= gn_op.max_offset(x)
    monkeypatch.setattr(gn_op, "KERNEL_DEVICES", ("meta",))
    monkeypatch.setattr(gn_op, "kernel_usable", lambda *a: pytest.fail("self-check must not run"))
    assert not gn_op._use_kernel(x, "auto", 4, ())  # auto: torch's GN for this input
    assert not gn_op._use_kernel(x[:, :, :512].contiguous(memory_format=torch.channels_last)[:, :0], "auto", 4, ())
    pytest.importorskip("triton")
    from gn_detect.layers.gn_triton import check_input

    with pytest.raises(ValueError, match=r"offset inside one sample reaches \d+ .*fix: pass a contiguous"):
        check_input(x, 4, None)
    check_input(x.contiguous(memory_format=torch.channels_last), 4, None)  # dense: fine


def test_weight_on_another_device_is_refused_in_one_line():
    m = GroupNorm(2, 8).to("meta")
    with pytest.raises(ValueError, match=r"^GroupNorm: weight is on meta but the input is on cpu; fix: "):
        m(torch.randn(1, 8, 2, 2))


def test_launch_guard_selects_the_tensors_device():
    pytest.importorskip("triton")
    from gn_detect.layers.gn_triton import launch_guard

    guard = launch_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(launch_guard(torch.device("cpu")), torch.cuda.device)


@pytest.mark.parametrize("upcast_on_cpu", [False, True])
def test_autocast_output_dtype_follows_torch(upcast_on_cpu, monkeypatch):
    """CPU autocast keeps GN in the input dtype (as torch does); on a device in
    AUTOCAST_FP32_DEVICES (CUDA; here the CPU patched in) y is float32 and equals torch's GN of x
    cast up, and dx keeps x's dtype."""
    if upcast_on_cpu:
        monkeypatch.setattr(gn_op, "AUTOCAST_FP32_DEVICES", ("cpu", "cuda"))
    gen = torch.Generator().manual_seed(3)
    m = GroupNorm(4, 16)
    with torch.no_grad():
        m.weight.normal_(generator=gen)
    x = torch.randn(2, 16, 5, 4, generator=gen).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        ref = F.group_norm(x.float() if upcast_on_cpu else x, 4, m.weight, m.bias, EPS)
    assert y.dtype == ref.dtype == (torch.float32 if upcast_on_cpu else torch.bfloat16)
    assert torch.equal(y, ref)
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16


def _fake_kernel(broken: str):
    """Kernel stand-ins for the self-check tests: off by 1% or failing like a compile error."""
    def forward(x, w, b, groups, eps, relu, out_dtype, plan):
        if broken == "compile":
            raise RuntimeError("PTXAS error: Internal Triton PTX codegen error\nmore lines")
        y, mean, rstd = gn_op._torch_forward(x, w, b, groups, eps, relu, out_dtype)
        return y * 1.01, mean, rstd

    def backward(dy, x, w, b, mean, rstd, groups, relu, plan):
        return gn_op._torch_backward(dy, x, w, b, mean, rstd, groups, EPS, relu)

    return forward, backward


@pytest.mark.parametrize("broken,why", [("mismatch", "differs from torch's GroupNorm by 1.0"),
                                        ("compile", "failed \\(RuntimeError: PTXAS error")])
def test_auto_self_check_falls_back_to_torch_with_one_warning(broken, why, monkeypatch):
    forward, backward = _fake_kernel(broken)
    monkeypatch.setattr(gn_op, "KERNEL_DEVICES", ("cpu",))
    monkeypatch.setattr(gn_op, "triton_installed", lambda: True)
    monkeypatch.setattr(gn_op, "_kernel_forward", forward)
    monkeypatch.setattr(gn_op, "_kernel_backward", backward)
    monkeypatch.setattr(gn_op, "_CHECKED", {})
    m = GroupNorm(4, 16)
    x = torch.randn(2, 16, 5, 4, requires_grad=True)
    with pytest.warns(RuntimeWarning, match=f"impl='auto': the Triton kernel was not used for cpu "
                                            f"torch.float32 inputs of its one-pass NCHW kernels because "
                                            f"it {why}") as rec:
        y = m(x)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert torch.equal(y, F.group_norm(x, 4, m.weight, m.bias, EPS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # checked once per (device, dtype, tiling): no second warning
        y = m(x)
        y.sum().backward()
    xr = x.detach().clone().requires_grad_()
    F.group_norm(xr, 4, m.weight, m.bias, EPS).sum().backward()
    assert torch.equal(x.grad, xr.grad)
    assert gn_op._CHECKED == {("cpu", torch.float32, "one-pass NCHW"): False}
    # impl='triton' never falls back: the broken kernel's result (or its error) comes through
    t = GroupNorm(4, 16, impl="triton")
    if broken == "compile":
        with pytest.raises(RuntimeError, match="PTXAS error"):
            t(x)
    else:
        assert not torch.allclose(t(x), y)


def test_auto_self_check_passes_a_correct_kernel_silently(monkeypatch):
    monkeypatch.setattr(gn_op, "_kernel_forward", lambda *a: gn_op._torch_forward(*a[:-1]))
    monkeypatch.setattr(gn_op, "_kernel_backward",
                        lambda dy, x, w, b, m, r, g, relu, plan: gn_op._torch_backward(dy, x, w, b, m, r, g, EPS, relu))
    monkeypatch.setattr(gn_op, "_CHECKED", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gn_op.kernel_usable(torch.device("cpu"), torch.bfloat16, "row-tile")


@pytest.mark.parametrize("make", [lambda x: x, lambda x: x.contiguous(memory_format=torch.channels_last),
                                  lambda x: x.contiguous(memory_format=torch.channels_last)[:, 4:12],
                                  lambda x: x[:, :, ::2]])
def test_torch_path_outputs_have_the_fake_implementations_layout(make):
    """compile trusts the fake's strides: y and dx of the aten path must have them too."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = make(torch.randn(2, 16, 6, 5)).requires_grad_()
    w, b = torch.randn(x.shape[1]), torch.randn(x.shape[1])
    y = torch.ops.gn_detect.group_norm(x, w, b, 4, EPS, True, "auto", None, [])[0]
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    mode = FakeTensorMode()
    fx, fw, fb = (mode.from_tensor(t) for t in (x.detach(), w, b))
    with mode:
        fy = torch.ops.gn_detect.group_norm(fx, fw, fb, 4, EPS, True, "auto", None, [])[0]
    assert y.stride() == fy.stride() and dx.stride() == torch.empty_like(x).stride()


def test_auto_self_checks_the_kernels_the_plan_overrides_pick(monkeypatch):
    """The self-check key names the kernels that would run, plan overrides included: a shape whose
    groups fit one program is checked as one-pass by default, as (n, g)/row tiles with passes=2."""
    pytest.importorskip("triton")
    keys = []
    monkeypatch.setattr(gn_op, "KERNEL_DEVICES", ("cpu",))
    monkeypatch.setattr(gn_op, "triton_installed", lambda: True)
    monkeypatch.setattr(gn_op, "kernel_usable", lambda device, dtype, tiling: keys.append(tiling) and False)
    x = torch.randn(2, 16, 5, 4)
    for plan in ((), (0, 0, 0, 2)):
        for fmt in (torch.contiguous_format, torch.channels_last):
            gn_op.group_norm_op(x.contiguous(memory_format=fmt), 4, impl="auto", plan=plan)
    assert keys == ["one-pass NCHW", "one-pass channels-last", "(n, g)-tile", "row-tile"]
