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
    torch.testing.assert_close(centres[:6], torch.zeros(6, 2))  # offset 0.0, as torchvision/detectron2
    torch.testing.assert_close(centres[6], torch.tensor([8.0, 0.0]))  # next x
    half = AnchorGenerator(sizes=(32, 64), strides=(8, 16), scales=(1.0, 2.0), offset=0.5)([(4, 5), (2, 3)])[0]
    torch.testing.assert_close(((half[:, :2] + half[:, 2:]) / 2)[:6], torch.full((6, 2), 4.0))
    w, h = a3[:, 2] - a3[:, 0], a3[:, 3] - a3[:, 1]
    torch.testing.assert_close(h[:6] / w[:6], torch.tensor([0.5, 0.5, 1, 1, 2, 2]))
    torch.testing.assert_close((w * h)[:2], torch.tensor([32.0**2, 64.0**2]))


def test_anchor_positions_match_torchvision_anchor_generator():
    """Same centres and sizes as torchvision's RetinaNet anchors (torchvision rounds its cell
    anchors to integers, so compare with a tolerance of half a pixel)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes, scales, ratios = (32, 64), (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0)
    ours = AnchorGenerator(sizes=sizes, strides=(8, 16), scales=scales, ratios=ratios)
    tv = TVAnchorGenerator(tuple(tuple(s * k for k in scales) for s in sizes), (ratios,) * 2)
    images = ImageList(torch.zeros(1, 3, 32, 48), [(32, 48)])  # torchvision: stride = image // feature
    feats = [torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 2, 3)]
    ref = tv(images, feats)[0]
    mine = torch.cat(ours([(4, 6), (2, 3)]))
    key = lambda a: torch.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2,  # noqa: E731
                                 a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]], 1)
    # both enumerate (level, y, x) locations; the order of anchors within a cell may differ
    km, kr = key(mine).view(-1, 9, 4), key(ref).view(-1, 9, 4)
    order = lambda k: (k[..., 2].round() * 1e4 + k[..., 3].round()).argsort(dim=1)  # noqa: E731  by (w, h)
    km = km.gather(1, order(km).unsqueeze(-1).expand(-1, -1, 4))
    kr = kr.gather(1, order(kr).unsqueeze(-1).expand(-1, -1, 4))
    torch.testing.assert_close(km[..., :2], kr[..., :2], atol=0.5, rtol=0)
    torch.testing.assert_close(km[..., 2:], kr[..., 2:], atol=1.0, rtol=0.02)
