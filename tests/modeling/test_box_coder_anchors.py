import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from gn_detect.modeling.anchors import AnchorGenerator
from gn_detect.modeling.box_coder import BoxCoder


def _boxes(n: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 100 + 2
    return torch.cat([xy, xy + wh], 1)


def test_encode_decode_match_torchvision():
    g = torch.Generator().manual_seed(0)
    anchors, boxes = _boxes(50, g), _boxes(50, g)
    ours, ref = BoxCoder(), TVBoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    d = ours.encode(anchors, boxes)
    torch.testing.assert_close(d, ref.encode_single(boxes, anchors), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.decode(d, anchors), boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours.decode(d, anchors), ref.decode_single(d, anchors), rtol=1e-5, atol=1e-4)


def test_anchor_layout_and_shapes():
    gen = AnchorGenerator(sizes=(32, 64), strides=(8, 16), scales=(1.0, 2.0), ratios=(0.5, 1.0, 2.0))
    a3, a4 = gen([(4, 5), (2, 3)])
    assert a3.shape == (4 * 5 * 6, 4) and a4.shape == (2 * 3 * 6, 4)
    # location-major, anchors inner: the first 6 anchors share the centre of cell (0, 0)
    centres = (a3[:, :2] + a3[:, 2:]) / 2
    torch.testing.assert_close(centres[:6], torch.full((6, 2), 4.0))
    torch.testing.assert_close(centres[6], torch.tensor([12.0, 4.0]))  # next x
    w, h = a3[:, 2] - a3[:, 0], a3[:, 3] - a3[:, 1]
    torch.testing.assert_close(h[:6] / w[:6], torch.tensor([0.5, 0.5, 1, 1, 2, 2]))
    torch.testing.assert_close((w * h)[:2], torch.tensor([32.0**2, 64.0**2]))
