"""scripts/inspect_gn_kernels.py compiles, without a GPU, the kernels one GN + ReLU forward and
backward launches for sm_90 and reads their PTX: for the FPN/head case (channels-last bf16,
N8 C256 100x152, G32: C/G = 8, 16 bytes per group) the row-tile kernels move 16-byte vectors,
nothing narrower than 4 bytes, no spills, no atomics. Also: which plan make_plan picks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
ROW_TILE_KERNELS = {"rt_stats_kernel", "rt_norm_kernel", "rt_bwd_reduce_kernel", "rt_bwd_finalize_kernel",
                    "rt_bwd_dx_kernel"}


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter enabled here")
def test_channels_last_bf16_fpn_kernels_use_16_byte_accesses(tmp_path):
    pytest.importorskip("triton")
    cmd = [sys.executable, str(REPO / "scripts" / "inspect_gn_kernels.py"), "--shape", "8", "256", "100", "152",
           "--groups", "32", "--dtype", "bf16", "--layout", "channels_last", "--arch", "90", "--sms", "132",
           "--out", str(tmp_path)]
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "summary.json").read_text())
    kernels = report["kernels"]
    assert set(kernels) == ROW_TILE_KERNELS and report["plan"]["row_tiles"]
    assert report["plan"]["block_c"] == 256  # whole rows: all 256 channels of a position
    for name, k in kernels.items():
        ptx = (tmp_path / f"{name}.ptx").read_text()
        assert ".target sm_90" in ptx and name in proc.stdout
        widths = set(k["global_loads"]) | set(k["global_stores"])
        assert widths and min(int(w) for w in widths) >= 4, (name, k)
        assert k["spills"] == 0 and 0 < k["registers"] <= 255 and k["global_atomics"] == 0, (name, k)
    for name in ("rt_stats_kernel", "rt_norm_kernel", "rt_bwd_reduce_kernel", "rt_bwd_dx_kernel"):
        assert "16" in kernels[name]["global_loads"], name  # x (and dy) rows as 16-byte vectors
    for name in ("rt_norm_kernel", "rt_bwd_dx_kernel"):
        assert kernels[name]["global_stores"].get("16", 0) >= 1 and "2" not in kernels[name]["global_stores"]
    n_tiles = report["plan"]["split"] * 8  # N * channel tiles (1) * split
    assert kernels["rt_norm_kernel"]["grid"] == [n_tiles]


def _inspect(tmp_path, *args):
    cmd = [sys.executable, str(REPO / "scripts" / "inspect_gn_kernels.py"), *map(str, args), "--out", str(tmp_path)]
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter enabled here")
def test_one_pass_kernels_for_the_small_fpn_levels_use_16_byte_accesses(tmp_path):
    """P5 of an 800 x 1216 image (25 x 38): a group's 950 positions fit one program, so one
    forward and one backward kernel read x (and dy) once, as 16-byte vectors, without spills."""
    pytest.importorskip("triton")
    proc = _inspect(tmp_path, "--shape", 8, 256, 25, 38, "--groups", 32, "--dtype", "bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "summary.json").read_text())
    assert report["plan"]["kernels"] == "one-pass" and report["plan"]["block_hw"] == 1024
    kernels = report["kernels"]
    assert set(kernels) == {"op_fwd_kernel", "op_bwd_kernel"}
    assert kernels["op_fwd_kernel"]["grid"] == [8 * report["plan"]["n_ct"]]
    for name, k in kernels.items():
        widths = set(k["global_loads"]) | set(k["global_stores"])
        assert min(int(w) for w in widths) >= 4 and "16" in k["global_loads"], (name, k)
        assert k["global_stores"].get("16", 0) >= 1, (name, k)  # y, dx rows
        assert k["spills"] == 0 and k["global_atomics"] == 0, (name, k)
    # one pass asked for a shape whose group does not fit: one line, exit 2
    proc = _inspect(tmp_path, "--shape", 8, 256, 100, 152, "--passes", 1)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "one pass needs" in proc.stderr.strip().splitlines()[-1]


def test_make_plan_picks_row_tiles_for_channels_last_with_power_of_two_groups():
    pytest.importorskip("triton")
    from gn_detect.layers.gn_triton import _view3, make_plan

    def plan(shape, groups, cl=True, **kw):
        x = torch.empty(shape).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        return make_plan(_view3(x)[1], groups, sms=132, **kw)

    p = plan((8, 256, 100, 152), 32)
    assert p.kernels == "row-tile" and not p.one_pass and p.block_c == 256 and p.n_ct == 1 and p.block_hw * p.block_c == 2048
    assert 8 * p.split >= 8 * 132 * 0.9  # about 8 programs per SM
    p = plan((2, 2048, 25, 38), 32)
    assert p.row_tiles and p.block_c == 512 and p.n_ct == 4
    p = plan((2, 2048, 25, 38), 1)  # LayerNorm: one group of 2048 channels in one tile
    assert p.row_tiles and p.block_c == 2048 and p.block_hw == 1
    assert plan((2, 12, 5, 5), 4).kernels == "(n, g)-tile"  # C/G = 3
    assert plan((2, 256, 50, 76), 32, cl=False).kernels == "(n, g)-tile"  # NCHW keeps the (n, g) kernels
    assert plan((2, 32, 5, 5), 4, block_c=2, passes=2).block_c == 8  # a tile holds at least one group
    # one pass where one group's HW (padded to a power of two) x C/G fits ONE_PASS_TILE (16384)
    p = plan((8, 256, 25, 38), 32)  # P5: 1024 x 8
    assert p.one_pass and (p.block_hw, p.block_c, p.n_ct, p.split) == (1024, 8, 32, 1)
    p = plan((8, 256, 13, 19), 32)  # P6: 256 x 16 (two groups per program, aiming at 4096)
    assert p.one_pass and (p.block_hw, p.block_c, p.n_ct, p.num_warps) == (256, 16, 16, 4)
    p = plan((8, 256, 25, 76), 32)  # 2048 x 8 = 16384, the largest one-pass tile: 16 warps
    assert p.one_pass and (p.block_hw, p.block_c, p.num_warps) == (2048, 8, 16)
    assert plan((2, 256, 25, 38), 32, cl=False).one_pass  # both layouts
    assert not plan((8, 256, 50, 76), 32).one_pass  # P4: 4096 x 8 > 16384
    assert not plan((2, 12, 5, 5), 4).one_pass and not plan((8, 256, 13, 19), 32, split=2).one_pass
    assert plan((8, 256, 13, 19), 32, passes=2).kernels == "row-tile"
    with pytest.raises(ValueError, match="one pass needs C/G a power of two"):
        plan((2, 12, 5, 5), 4, passes=1)
