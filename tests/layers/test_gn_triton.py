"""The Triton GroupNorm kernel (gn_triton.py) against F.group_norm in float64, fwd and bwd.

CPU (CI): the kernel runs in Triton's interpreter. ``TRITON_INTERPRET=1`` only works if it is
set before triton is first imported (``triton.language``'s own ``tl.sum`` & co. are decorated
then), so every interpreter case runs in ONE child process started with it
(``python -m tests.layers.test_gn_triton OUT``): it saves inputs and kernel results, and this
process computes the float64 references and compares. The test session itself never runs
triton in interpreter mode. Tests marked ``cuda`` run the same cases, plus detector-sized
ones, in-process on a GPU. ``test_kernels_compile_for_sm90`` compiles the kernels to cubin
without a GPU, which catches errors the lenient interpreter lets through.

Tolerances. Errors are ``max|ours - ref| / max|ref|`` per tensor, ref = float64 GN (+ReLU)
of the same (already rounded) inputs. fp32: <= 1e-5 (observed ~1e-7). bf16/fp16: the output
is rounded once to 8 (bf16) or 11 (fp16) significant bits, so even an exact kernel is off by
up to half an ulp (0.2% / 0.05% of the value); torch's own CPU kernel for the same dtype does
the same (fp32 statistics, one rounding), so we allow twice torch's error on the same inputs
(in the interpreter: or one ulp, the larger), plus a quarter ulp. Twice, and one ulp: Triton's
interpreter casts fp32 -> bf16 by truncation (``cast_impl`` in triton/runtime/interpreter.py),
up to one ulp of the value instead of half (observed: 5.2e-3 and 6.9e-3 vs torch's 2.7e-3); on a GPU the cast
rounds to nearest. A wrong formula is off by whole percents or more (checked by breaking each
formula in turn: the cases using it fail), and the fp32 cases hold every formula to 1e-5.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gn_detect.layers import GroupNorm, GroupNormAct, get_norm, get_norm_act

REPO = Path(__file__).resolve().parents[2]
EPS = 1e-5
ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# id: shape, groups, dtype, channels_last, relu, and options: plan overrides (exercise the
# split/chunk/channel-block loops), affine, dy layout, x offset, the module path.
CASES: dict[str, dict] = {
    "nchw_fp32": dict(shape=(2, 8, 5, 7), groups=4, dtype="fp32", cl=False, relu=False),
    "cl_fp32_relu_dy_nchw": dict(shape=(2, 8, 5, 7), groups=4, dtype="fp32", cl=True, relu=True,
                                 dy_contiguous=True),
    "n1_ln_split": dict(shape=(1, 6, 3, 5), groups=1, dtype="fp32", cl=False, relu=False,
                        plan=dict(block_hw=4, block_c=2, split=3)),
    "in_cl_relu_split": dict(shape=(2, 6, 3, 5), groups=6, dtype="fp32", cl=True, relu=True,
                             plan=dict(block_hw=2, block_c=1, split=4)),
    "odd_hw_loops_offset": dict(shape=(3, 12, 7, 9), groups=3, dtype="fp32", cl=False, relu=True,
                                offset=20.0, plan=dict(block_hw=8, block_c=2, split=2)),
    "no_affine_cl": dict(shape=(2, 8, 5, 7), groups=2, dtype="fp32", cl=True, relu=False,
                         affine=False),
    "bf16_cl_relu_split": dict(shape=(2, 16, 9, 11), groups=4, dtype="bf16", cl=True, relu=True,
                               plan=dict(block_hw=16, block_c=4, split=2)),
    "bf16_nchw": dict(shape=(2, 16, 9, 11), groups=8, dtype="bf16", cl=False, relu=False),
    "fp16_cl_relu": dict(shape=(2, 8, 5, 7), groups=2, dtype="fp16", cl=True, relu=True),
    "nc_2d_relu": dict(shape=(3, 8), groups=2, dtype="fp32", cl=False, relu=True),
    "ncdhw_5d": dict(shape=(2, 8, 3, 4, 5), groups=4, dtype="fp32", cl=False, relu=False),
    "strided_view_copied": dict(shape=(2, 8, 6, 5), groups=4, dtype="fp32", cl=False, relu=True,
                                slice_h=True),
    "module_gn_cl": dict(shape=(2, 8, 5, 7), groups=4, dtype="fp32", cl=True, relu=False,
                         module=True),
    "module_gn_act_bf16": dict(shape=(1, 8, 3, 3), groups=2, dtype="bf16", cl=False, relu=True,
                               module=True),
    "channel_slice_cl": dict(shape=(2, 16, 5, 3), groups=2, dtype="fp32", cl=True, relu=True,
                             channel_slice=(4, 12)),
    "noncontiguous_weight": dict(shape=(2, 8, 3, 5), groups=4, dtype="fp32", cl=False, relu=False,
                                 strided_weight=True),
    # channels-last row tiles (C/G a power of two): C/G 1..64, G = 1 and G = C, several channel
    # tiles, C not a multiple of the tile, N = 1, odd H/W; and C/G = 3 (the (n, g) kernels)
    "rt_in_g_eq_c_n1": dict(shape=(1, 8, 3, 5), groups=8, dtype="fp32", cl=True, relu=True),
    "rt_cpg2": dict(shape=(2, 8, 5, 3), groups=4, dtype="fp32", cl=True, relu=False),
    "rt_cpg8_bf16_tiles": dict(shape=(2, 32, 3, 7), groups=4, dtype="bf16", cl=True, relu=True,
                               plan=dict(block_hw=4, block_c=16, split=2)),
    "rt_cpg16_no_affine": dict(shape=(1, 32, 5, 3), groups=2, dtype="fp32", cl=True, relu=True,
                               affine=False),
    "rt_cpg64_ln": dict(shape=(2, 64, 3, 3), groups=1, dtype="fp32", cl=True, relu=False,
                        plan=dict(block_hw=2, split=3)),
    "rt_c_not_tile_multiple": dict(shape=(2, 24, 3, 5), groups=3, dtype="fp32", cl=True, relu=True,
                                   plan=dict(block_c=16)),
    "cl_cpg3_nt_kernels": dict(shape=(2, 12, 3, 5), groups=4, dtype="fp32", cl=True, relu=True),
    "nchw_cpg64_ln_relu": dict(shape=(1, 64, 3, 5), groups=1, dtype="fp32", cl=False, relu=True),
    # one pass (a program holds all HW of its groups) with several channel tiles, both layouts
    "op_cl_tiles_bf16": dict(shape=(2, 32, 5, 7), groups=8, dtype="bf16", cl=True, relu=True,
                             plan=dict(block_c=8, passes=1)),
    "op_nchw_tiles_no_affine": dict(shape=(3, 32, 7, 3), groups=4, dtype="fp32", cl=False, relu=False,
                                    affine=False, plan=dict(block_c=16, passes=1)),
}


def _pow2_groups(case: dict) -> bool:
    c = case["shape"][1] if not case.get("channel_slice") else case["channel_slice"][1] - case["channel_slice"][0]
    cpg = c // case["groups"]
    return cpg & (cpg - 1) == 0


# Cases whose default plan may take the one-pass kernels also run with two passes forced, so
# the two-pass kernels keep every layout, C/G, affine and ReLU case above.
TWO_PASS = {f"{name}/2pass": {**case, "plan": {**case.get("plan", {}), "passes": 2}}
            for name, case in CASES.items()
            if _pow2_groups(case) and not {"block_hw", "split", "passes"} & set(case.get("plan", {}))}
VARIANTS = {**CASES, **TWO_PASS}
CUDA_CASES: dict[str, dict] = {  # detector-sized, default launch plan (split chosen per GPU)
    "fpn_p3_bf16_cl": dict(shape=(2, 256, 100, 152), groups=32, dtype="bf16", cl=True, relu=True),
    "fpn_p3_fp32_nchw": dict(shape=(2, 256, 100, 152), groups=32, dtype="fp32", cl=False,
                             relu=False),
    "c5_2048_ln_bf16_cl": dict(shape=(2, 2048, 25, 38), groups=1, dtype="bf16", cl=True,
                               relu=False),
    "c5_2048_fp16_nchw": dict(shape=(1, 2048, 25, 38), groups=32, dtype="fp16", cl=False,
                              relu=True),
    "fpn_p5_bf16_cl_one_pass": dict(shape=(2, 256, 25, 38), groups=32, dtype="bf16", cl=True,
                                    relu=True),
}


def make_inputs(case: dict, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Deterministic inputs in the case's dtype and layout (weights fp32, as in AMP)."""
    gen = torch.Generator().manual_seed(sum(case["shape"]) * 7 + case["groups"])
    c = case["shape"][1]
    dtype = DTYPES[case["dtype"]]
    x = torch.randn(case["shape"], generator=gen, dtype=torch.float64) * 2 + case.get("offset", 0.5)
    dy = torch.randn(x[:, :, ::2].shape if case.get("slice_h") else x.shape, generator=gen, dtype=torch.float64)
    inputs = {"x": x.to(dtype), "dy": dy.to(dtype)}
    if case.get("affine", True):
        inputs["w"] = torch.randn(c, generator=gen).abs() + 0.5
        inputs["b"] = torch.randn(c, generator=gen)
    out = {k: v.to(device) for k, v in inputs.items()}
    if case.get("slice_h"):  # H and W no longer flatten into one stride: the kernel copies
        out["x"] = out["x"][:, :, ::2]
    if case["cl"]:
        out["x"] = out["x"].contiguous(memory_format=torch.channels_last)
        if not case.get("dy_contiguous"):
            out["dy"] = out["dy"].contiguous(memory_format=torch.channels_last)
    if case.get("channel_slice"):  # a strided view the kernel reads in place (no copy)
        lo, hi = case["channel_slice"]
        out["x"], out["dy"] = out["x"][:, lo:hi], out["dy"][:, lo:hi]
        out["w"], out["b"] = out["w"][lo:hi], out["b"][lo:hi]
    if case.get("strided_weight"):
        out["w"] = torch.stack([out["w"], -out["w"]], 1)[:, 0]
        assert not out["w"].is_contiguous()
    return out


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """t as a leaf that needs grad, keeping its strides (a non-contiguous weight stays one)."""
    return t.detach().requires_grad_() if not t.is_contiguous() else t.clone().requires_grad_()


def run_kernel(case: dict, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward and backward through the kernel (directly, or through the nn.Module path)."""
    from gn_detect.layers.gn_op import triton_group_norm

    x = inputs["x"].detach().clone(memory_format=torch.preserve_format).requires_grad_()
    if case.get("channel_slice"):
        x = inputs["x"].detach().requires_grad_()  # the strided view itself (a leaf)
    w = _leaf(inputs["w"]) if "w" in inputs else None
    b = _leaf(inputs["b"]) if "b" in inputs else None
    if case.get("module"):
        c = case["shape"][1]
        m = (GroupNormAct(case["groups"], c, act="relu", impl="triton") if case["relu"]
             else GroupNorm(case["groups"], c, impl="triton")).to(x.device)
        m.weight, m.bias = torch.nn.Parameter(w.detach()), torch.nn.Parameter(b.detach())
        y = m(x)
        w, b = m.weight, m.bias
    else:
        y = triton_group_norm(x, case["groups"], w, b, EPS, relu=case["relu"], **case.get("plan", {}))
    y.backward(inputs["dy"])
    out = {"y": y.detach(), "dx": x.grad,
           "y_channels_last": torch.tensor(y.is_contiguous(memory_format=torch.channels_last))}
    if w is not None:
        out["dw"], out["db"] = w.grad, b.grad
    return out


def reference(case: dict, inputs: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64):
    """F.group_norm (+ReLU) forward and backward on the given inputs, computed in ``dtype``
    (float64: the reference; the case's dtype: torch's own low-precision result)."""
    x = inputs["x"].detach().to("cpu", dtype).requires_grad_()
    w = inputs["w"].detach().cpu().double().requires_grad_() if "w" in inputs else None
    b = inputs["b"].detach().cpu().double().requires_grad_() if "b" in inputs else None
    if w is not None and dtype != torch.float64:
        w, b = (t.detach().float().requires_grad_() for t in (w, b))
    y = F.group_norm(x, case["groups"], w, b, EPS)
    if case["relu"]:
        y = F.relu(y)
    y.backward(inputs["dy"].detach().to("cpu", dtype))
    out = {"y": y.detach(), "dx": x.grad}
    if w is not None:
        out["dw"], out["db"] = w.grad, b.grad
    return out


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.detach().cpu().double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def check_case(name: str, case: dict, inputs: dict, got: dict) -> None:
    ref = reference(case, inputs)
    dtype = DTYPES[case["dtype"]]
    assert bool(got["y_channels_last"]) == case["cl"] or case["shape"][1] == 1, f"{name}: layout"
    assert got["y"].dtype == dtype and got["dx"].dtype == dtype, name
    assert set(got) - {"y_channels_last"} == set(ref), name
    if dtype == torch.float32:
        tol = {k: 1e-5 for k in ref}
    else:  # see the module docstring: twice torch's own error (or one ulp where the interpreter
        # truncated: results on the CPU), plus a quarter ulp
        lowp = reference(case, inputs, dtype)
        floor = ULP[dtype] if got["y"].device.type == "cpu" else 0.0
        tol = {k: max(2 * rel_err(lowp[k], ref[k]), floor) + ULP[dtype] / 4 for k in ref}
    errs = {k: rel_err(got[k], ref[k]) for k in ref}
    bad = {k: f"{errs[k]:.2e} > {tol[k]:.2e}" for k in ref if not errs[k] <= tol[k]}
    assert not bad, f"{name}: {bad}"


# --------------------------------------------------------------- interpreter (child process)


def _child_main(out_path: str) -> None:
    """Runs in the child started with TRITON_INTERPRET=1: every case, plus the auto check."""
    from gn_detect.layers.gn_op import triton_group_norm
    from gn_detect.layers.gn_triton import interpreted

    assert interpreted(), "TRITON_INTERPRET=1 did not reach triton"
    results = {}
    for name, case in VARIANTS.items():
        inputs = make_inputs(case)
        results[name] = {"inputs": inputs, "got": run_kernel(case, inputs), "kernels": _kernels(case, inputs)}
    # impl=auto on a CPU tensor stays torch's GN even under the interpreter
    x = make_inputs(CASES["nchw_fp32"])["x"]
    m = get_norm("gn", 8, num_groups=4)
    results["_auto_is_torch"] = bool(torch.equal(m(x), F.group_norm(x, 4, m.weight, m.bias, EPS)))
    empty = torch.randn(0, 8, 3, 3, requires_grad=True)
    y = triton_group_norm(empty, 4, m.weight, m.bias, EPS, relu=True)
    y.sum().backward()
    results["_empty_ok"] = y.shape == empty.shape and empty.grad.shape == empty.shape
    results.update(_child_op_checks())
    torch.save(results, out_path)


def _child_op_checks() -> dict:
    """Interpreter checks of the op's guards with the real kernel (see the tests below)."""
    from gn_detect.layers import gn_op

    case = CASES["bf16_cl_relu_split"]
    inputs = make_inputs(case)
    runs = [run_kernel(case, inputs) for _ in range(2)]
    out = {"_bitwise_repeatable": all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])}
    # autocast on a device in AUTOCAST_FP32_DEVICES: y float32 from bf16 x, dx bf16
    gn_op.AUTOCAST_FP32_DEVICES = ("cpu",)
    x = inputs["x"].detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = GroupNormAct(4, 16, impl="triton")(x)
    y.backward(inputs["dy"].float())
    out["_autocast"] = {"x": inputs["x"], "dy": inputs["dy"], "y": y.detach(), "dx": x.grad}
    gn_op.AUTOCAST_FP32_DEVICES = ("cuda",)
    # impl='auto' with the CPU counted as a kernel device: the real self-check passes silently
    gn_op.KERNEL_DEVICES = ("cpu",)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = get_norm("gn", 8, num_groups=4)
        x = make_inputs(CASES["nchw_fp32"])["x"]
        out["_auto_self_check"] = {"usable": gn_op.kernel_usable(x.device, x.dtype, "(n, g)-tile")
                                   and gn_op.kernel_usable(x.device, torch.bfloat16, "row-tile"),
                                   "y": m(x).detach(), "ref": F.group_norm(x, 4, m.weight, m.bias, EPS)}
    gn_op.KERNEL_DEVICES = ("cuda",)
    return out


@pytest.fixture(scope="module")
def interpreted_results(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("gn_triton") / "results.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.layers.test_gn_triton", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"interpreter child failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return torch.load(out, weights_only=False)


def _kernels(case: dict, inputs: dict) -> str:
    """The kernel family the case's plan takes (make_plan, as the op would call it)."""
    from gn_detect.layers.gn_triton import _view3, make_plan

    return make_plan(_view3(inputs["x"])[1], case["groups"], **case.get("plan", {})).kernels


@pytest.mark.parametrize("name", list(VARIANTS))
def test_interpreted_kernel_matches_float64_reference(name, interpreted_results):
    r = interpreted_results[name]
    check_case(name, VARIANTS[name], r["inputs"], r["got"])


def test_interpreted_cases_cover_each_kernel_family(interpreted_results):
    kernels = {name: interpreted_results[name]["kernels"] for name in VARIANTS}
    assert all(kernels[name] != "one-pass" for name in TWO_PASS)
    assert kernels["cl_cpg3_nt_kernels"] == "(n, g)-tile" and kernels["rt_cpg2/2pass"] == "row-tile"
    one_pass = {name for name, k in kernels.items() if k == "one-pass"}
    # C/G 1 (G = C, N = 1), 2, 4, 8, 16, 64 (G = 1), both layouts, C not a multiple of the tile
    assert {"rt_in_g_eq_c_n1", "rt_cpg2", "nchw_fp32", "op_cl_tiles_bf16", "rt_cpg16_no_affine",
            "nchw_cpg64_ln_relu", "rt_c_not_tile_multiple", "channel_slice_cl", "module_gn_cl"} <= one_pass


def test_auto_uses_torch_on_cpu_even_under_the_interpreter(interpreted_results):
    assert interpreted_results["_auto_is_torch"]


def test_interpreted_kernel_takes_an_empty_batch(interpreted_results):
    assert interpreted_results["_empty_ok"]


def test_interpreted_kernel_is_bitwise_repeatable(interpreted_results):
    assert interpreted_results["_bitwise_repeatable"]


def test_interpreted_kernel_under_upcasting_autocast_writes_float32(interpreted_results):
    r = interpreted_results["_autocast"]
    assert r["y"].dtype == torch.float32 and r["dx"].dtype == torch.bfloat16
    x = r["x"].double().requires_grad_()
    ref = F.relu(F.group_norm(x, 4, None, None, EPS))
    ref.backward(r["dy"].double())
    assert rel_err(r["y"], ref) < 1e-5  # fp32 output: no bf16 rounding of y
    assert rel_err(r["dx"], x.grad) < 2 * ULP[torch.bfloat16]


def test_interpreted_auto_self_check_passes_and_uses_the_kernel(interpreted_results):
    r = interpreted_results["_auto_self_check"]
    assert r["usable"]
    assert rel_err(r["y"], r["ref"]) < 1e-5


# ------------------------------------------------------------------------------ GPU


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(VARIANTS) + list(CUDA_CASES))
def test_cuda_kernel_matches_float64_reference(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    case = {**VARIANTS, **CUDA_CASES}[name]
    inputs = make_inputs(case, "cuda")
    check_case(name, case, inputs, run_kernel(case, inputs))


@pytest.mark.cuda
def test_cuda_auto_dispatches_to_the_kernel():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from gn_detect.layers import gn_op, gn_triton

    m = get_norm("gn", 64, num_groups=8).cuda()
    x = torch.randn(2, 64, 9, 7, device="cuda", requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the self-check passes
        y = m(x)
    assert "gn_detect_group_norm" in type(y.grad_fn).__name__
    assert gn_op.kernel_usable(x.device, x.dtype, "(n, g)-tile")
    torch.testing.assert_close(y, F.group_norm(x, 8, m.weight, m.bias), rtol=1e-5, atol=1e-5)
    assert gn_triton.interpreted() is False


@pytest.mark.cuda
def test_cuda_launches_on_the_tensors_device_and_follows_autocast():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    m = GroupNormAct(8, 64, impl="triton").to(dev)
    x = torch.randn(2, 64, 9, 7, device=dev).bfloat16()
    with torch.cuda.device(0):  # current device differs from x's when there are two GPUs
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, ref = m(x), F.relu(F.group_norm(x, 8, m.weight, m.bias))
    assert y.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------- CPU, no kernel involved


def test_impl_choices_and_module_types():
    assert type(get_norm("gn", 8, num_groups=2, impl="torch")) is torch.nn.GroupNorm
    for name, groups in (("gn", 2), ("gn_ws", 2), ("ln", 1), ("in", 8)):
        for impl in ("auto", "triton", "AUTO", None):
            m = get_norm(name, 8, num_groups=2, impl=impl)
            assert type(m) is GroupNorm and m.num_groups == groups
            assert m.impl == ("auto" if impl in (None, "AUTO") else impl)
            assert list(m.state_dict()) == ["weight", "bias"]
    assert type(get_norm("bn", 8, impl="triton")).__name__ == "BatchNorm2d"  # ignored by non-GN
    with pytest.raises(ValueError, match="unknown impl 'cuda'.*auto, torch, triton"):
        get_norm("gn", 8, num_groups=2, impl="cuda")
    with pytest.raises(ValueError, match="auto, torch, triton"):
        get_norm("bn", 8, impl="fast")  # a typo fails whatever the norm


def test_auto_and_torch_on_cpu_are_torch_group_norm():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 3, generator=gen).contiguous(memory_format=torch.channels_last)
    for impl in ("auto", "torch"):
        m = get_norm("gn", 8, num_groups=4, impl=impl)
        with torch.no_grad():
            m.weight.normal_(generator=gen)
        assert torch.equal(m(x), F.group_norm(x, 4, m.weight, m.bias, EPS))
        act = GroupNormAct.from_group_norm(m)
        assert act.weight is m.weight and act.impl == getattr(m, "impl", "torch")
        assert torch.equal(act(x), F.relu(F.group_norm(x, 4, m.weight, m.bias, EPS)))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter enabled here")
def test_triton_impl_on_cpu_without_interpreter_names_the_fix():
    pytest.importorskip("triton")
    m = get_norm("gn", 8, num_groups=4, impl="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        m(torch.randn(1, 8, 2, 2))


def test_get_norm_act_fuses_gn_relu_only():
    for name in ("gn", "gn_ws", "ln", "in"):
        norm, act = get_norm_act(name, 8, "relu", num_groups=2, momentum=0.3, impl="auto")
        assert type(norm) is GroupNormAct and norm.act == "relu" and isinstance(act, torch.nn.Identity)
        assert list(norm.state_dict()) == ["weight", "bias"]
    norm, act = get_norm_act("gn", 8, "none", num_groups=2)
    assert type(norm) is GroupNorm and isinstance(act, torch.nn.Identity)
    norm, act = get_norm_act("bn", 8, "relu")
    assert type(norm).__name__ == "BatchNorm2d" and isinstance(act, torch.nn.ReLU)
    norm, act = get_norm_act("gn", 8, "pn_relu", num_groups=2, affine=False)
    assert type(norm) is GroupNorm and type(act).__name__ == "ProxyNormAct"
    norm, _ = get_norm_act("gn", 8, "relu", num_groups=2, impl="torch")
    assert type(norm) is GroupNormAct and norm.impl == "torch"
    with pytest.raises(TypeError):
        get_norm_act("gn", 8, "relu", num_grups=2)  # a typo in the options is not swallowed


# --------------------------------------------------- compiled path (no GPU needed)

_INT_ARGS = {"HW", "CPG", "G", "CHUNK", "SPLIT", "C"}


def _signature(fn, dtype: str, channels_last: bool, consts: dict) -> tuple[dict, dict]:
    """Triton signature/constexprs as the JIT would specialize a call (stride 1 -> constexpr)."""
    unit = ("stride_xc", "stride_yc", "stride_dc", "stride_gc") if channels_last else \
        ("stride_xhw", "stride_yhw", "stride_dhw", "stride_ghw")
    sig, constexprs = {}, {}
    for arg in fn.arg_names:
        if arg in consts or arg in unit:
            sig[arg], constexprs[arg] = "constexpr", consts.get(arg, 1)
        elif arg in ("X", "Y", "DY", "DX"):
            sig[arg] = f"*{dtype}"
        elif arg.isupper() and arg not in _INT_ARGS:
            sig[arg] = "*fp32"
        else:
            sig[arg] = "fp32" if arg in ("eps", "inv_m") else "i32"
    return sig, constexprs


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter enabled here")
@pytest.mark.parametrize("dtype,channels_last,flags", [("bf16", True, True), ("fp32", False, False)])
def test_kernels_compile_for_sm90(dtype, channels_last, flags, tmp_path, monkeypatch):
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gn_detect.layers import gn_triton

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    consts = dict(BLOCK_HW=256, BLOCK_C=8, BLOCK_S=4, HAS_AFFINE=flags, RELU=flags)
    for name in ("_gn_fwd_stats_kernel", "_gn_fwd_norm_kernel", "_gn_bwd_reduce_kernel",
                 "_gn_bwd_finalize_kernel", "_gn_bwd_dx_kernel"):
        fn = getattr(gn_triton, name)
        sig, constexprs = _signature(fn, dtype, channels_last, consts)
        kernel = triton.compile(ASTSource(fn, sig, constexprs=constexprs),
                                target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
        assert kernel.asm.get("cubin"), name


if __name__ == "__main__":  # the interpreter child: python -m tests.layers.test_gn_triton OUT
    _child_main(sys.argv[1])
    print(json.dumps({"ok": True}))
