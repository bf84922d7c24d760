"""A torchvision ResNet checkpoint loads into our backbone and gives torchvision's outputs."""
import pytest
import torch
from torchvision.models import resnet18, resnet50
from torchvision.models._utils import IntermediateLayerGetter

from tests.modeling._backbones import backbone
from gn_detect.modeling.weights import load_backbone_weights


def _randomized(ctor, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = ctor()
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def r50_file(tmp_path_factory):
    ref = _randomized(resnet50, 0)
    path = tmp_path_factory.mktemp("w") / "r50.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


@pytest.mark.parametrize("norm", ["affine", "bn"])
def test_resnet50_outputs_equal_torchvision(r50_file, norm):
    ref, path = r50_file
    # float64 end to end (checkpoint included): folding BN into scale/bias rounds differently
    # from BN's (x - mean) / std in float32, and the difference grows over 50 layers.
    ours = backbone(50, norm=norm).double()
    double_path = path.with_name("r50_f64.pth")
    torch.save(ref.double().state_dict(), double_path)
    ref.float()
    load_backbone_weights(ours, double_path)
    ours.eval()
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tv = IntermediateLayerGetter(ref, {"layer2": "c3", "layer3": "c4", "layer4": "c5"}).double()
    with torch.no_grad():
        want, got = tv(x), ours(x)
    for k in ("c3", "c4", "c5"):
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-9)


def test_mismatched_checkpoints_fail_clearly(r50_file, tmp_path):
    _, path = r50_file
    with pytest.raises(RuntimeError, match="depth"):
        load_backbone_weights(backbone(18, norm="affine"), path)
    with pytest.raises(RuntimeError, match="unexpected keys.*weights_strict=false"):
        load_backbone_weights(backbone(50, norm="gn"), path)
    report = load_backbone_weights(backbone(50, norm="gn"), path, strict=False)
    assert any(k.endswith("running_mean") for k in report["unexpected"])
    partial = {k: v for k, v in _randomized(resnet18, 1).state_dict().items() if not k.startswith("layer4")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(RuntimeError, match="missing keys.*layer4"):
        load_backbone_weights(backbone(18, norm="bn"), tmp_path / "partial.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone_weights(backbone(18, norm="bn"), tmp_path / "nope.pth")
