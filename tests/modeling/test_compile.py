"""compile_model (torch.compile of backbone/FPN/head in place) and the input-shape buckets."""
from __future__ import annotations

import logging
import os

import pytest
import torch
import torch._dynamo

from gn_detect.modeling import build_model
from gn_detect.data.collate import make_buckets, pad_shape
from gn_detect.modeling.compile import compile_model


def _cfg():
    return {
        "norm_opts": {"num_groups": 4},
        "backbone": {"depth": "tiny", "norm": "gn", "ws": True, "widths": [16, 16, 32, 32]},
        "fpn": {"out_channels": 16, "norm": "gn_ws"},
        "head": {"num_convs": 1, "norm": "gn_ws"},
        "anchors": {"sizes": [16, 32, 64, 128, 256]},
    }


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 128, 128, generator=g)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[30.0, 30.0, 90.0, 100.0]]), "labels": torch.tensor([1])}]
    return images, targets, [(128, 128), (120, 110)]


def _train_step(model):
    images, targets, sizes = _batch()
    model.zero_grad(set_to_none=True)
    loss = sum(model(images, sizes, targets).values())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(backend, caplog):
    torch.manual_seed(0)
    eager = build_model(_cfg(), 3)
    compiled = build_model(_cfg(), 3)
    compiled.load_state_dict(eager.state_dict())
    keys = list(eager.state_dict())
    with caplog.at_level(logging.INFO, logger="gn_detect.modeling.compile"):
        assert compile_model(compiled, backend=backend) is compiled
        assert list(compiled.state_dict()) == keys
        eager.train(), compiled.train()
        (loss_e, grads_e), (loss_c, grads_c) = _train_step(eager), _train_step(compiled)
    assert any("backbone (train" in r.message and "compiled and ran" in r.message for r in caplog.records)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-3, atol=1e-4, msg=name)
    eager.eval(), compiled.eval()
    images, _, sizes = _batch()
    with torch.no_grad():
        out_e, out_c = eager(images, sizes), compiled(images, sizes)
    for a, b in zip(out_e, out_c):
        torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=1e-4, atol=1e-3)
    # a checkpoint of the compiled model loads into an eager one and vice versa
    build_model(_cfg(), 3).load_state_dict(compiled.state_dict())
    compiled.load_state_dict(eager.state_dict())


def test_compile_keeps_keys_and_matches_eager_aot_eager(caplog):
    """Dynamo + AOTAutograd, no code generation: fast enough for every run."""
    _compare("aot_eager", caplog)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("GN_DETECT_TEST_INDUCTOR") != "1",
                    reason="inductor needs 2-3 min cold on 2 CPU cores for the tiny model (train + eval); "
                           "set GN_DETECT_TEST_INDUCTOR=1 to run it")
def test_compile_matches_eager_inductor(caplog):
    _compare("inductor", caplog)


def test_compile_model_errors():
    model = build_model(_cfg(), 3)
    with pytest.raises(ValueError, match="no submodule 'neck'"):
        compile_model(model, parts=("backbone", "neck"), backend="eager")
    compile_model(model, backend="eager")
    with pytest.raises(ValueError, match="already compiled"):
        compile_model(model, backend="eager")


def test_compile_model_raises_the_recompile_limit(monkeypatch):
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    compile_model(build_model(_cfg(), 3), num_buckets=6, backend="eager")
    assert torch._dynamo.config.recompile_limit == 14
    compile_model(build_model(_cfg(), 3), num_buckets=2, backend="eager")  # never lowered
    assert torch._dynamo.config.recompile_limit == 14


def test_pad_shape_picks_the_smallest_bucket_that_fits():
    buckets = [(1344, 1344), (896, 1344), (1344, 896), (896, 896)]
    assert pad_shape(800, 800, buckets) == (896, 896)
    assert pad_shape(800, 1216, buckets) == (896, 1344)
    assert pad_shape(1216, 800, buckets) == (1344, 896)
    assert pad_shape(896, 897, buckets) == (896, 1344)
    assert pad_shape(1000, 1000, buckets) == (1344, 1344)
    with pytest.raises(ValueError, match="1400x800 batch fits no bucket.*fix"):
        pad_shape(1400, 800, buckets)


def test_make_buckets():
    assert make_buckets(1333, 1333, per_side=2, divisor=128) == [(768, 768), (768, 1408), (1408, 768), (1408, 1408)]
    assert make_buckets(800, 1216, per_side=1, divisor=32) == [(800, 1216)]
    every = make_buckets(1344, 1344, per_side=3, divisor=128)
    assert len(every) == 9 and all(h % 128 == 0 and w % 128 == 0 for h, w in every)
    for h in range(1, 1345, 97):  # every size up to the maximum has a bucket
        assert pad_shape(h, 1344 - h + 1, every)
    with pytest.raises(ValueError, match="positive"):
        make_buckets(0, 100, divisor=128)
