"""U-Net segmenter: output shape/classes, level widths, size rule, and that it can fit a small target."""

from __future__ import annotations

import pytest
import torch
from cacstream.engine.domain import NUM_SEG_CLASSES
from cacstream.training.models.unet import UNet
from cacstream.training.unet_trainer import auto_class_weights, segmentation_loss


def test_shapes_and_widths() -> None:
    m = UNet(base_filters=8, depth=3).eval()
    y = m(torch.randn(2, 1, 32, 32))
    assert y.shape == (2, NUM_SEG_CLASSES, 32, 32)
    assert m.inc.block[0].out_channels == 8
    assert [d.block[0].out_channels for d in m.downs] == [16, 32, 64]
    assert m.size_multiple == 8
    with pytest.raises(ValueError):
        UNet(depth=0)
    with pytest.raises(ValueError):
        UNet(norm="group")


def test_paper_default_is_64_filters_depth_4() -> None:
    m = UNet()
    assert m.inc.block[0].out_channels == 64 and m.depth == 4
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(31.0e6, rel=0.02)  # the classic U-Net size


def test_loss_matches_hand_computation_and_ignores_absent_classes() -> None:
    logits = torch.zeros(1, 5, 2, 2)
    logits[0, 2, 0, 0] = 10.0  # confident LAD at one pixel
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    target[0, 0, 0] = 2
    loss, parts = segmentation_loss(logits, target, None, ce_weight=1.0, dice_weight=1.0, eps=0.0)
    p = torch.softmax(logits, 1)
    ce = -(torch.log(p[0, 2, 0, 0]) + 3 * torch.log(p[0, 0, 0, 1])) / 4
    inter = p[0, 2, 0, 0]
    dice = 2 * inter / (p[0, 2].sum() + 1)  # only LAD is present: LM/LCX/RCA have no Dice term
    assert parts["ce"] == pytest.approx(float(ce), rel=1e-5)
    assert parts["dice_loss"] == pytest.approx(float(1 - dice), rel=1e-5)
    assert float(loss) == pytest.approx(float(ce + 1 - dice), rel=1e-5)
    _, empty = segmentation_loss(logits, torch.zeros(1, 2, 2, dtype=torch.long), None)
    assert empty["dice_loss"] == 0.0


def test_auto_class_weights() -> None:
    w = auto_class_weights(torch.tensor([1e6, 100.0, 0.0, 1e4, 10.0]).numpy())
    assert w[0] == 1.0 and w[1] == pytest.approx(100.0) and w[2] == 1.0
    assert w[3] == pytest.approx(10.0) and w[4] == 100.0  # capped


def test_fits_a_tiny_segmentation() -> None:
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny tensors: a thread pool only adds wake-up latency
    x = torch.randn(4, 1, 16, 16)
    y = (x[:, 0] > 1.0).long() * 3  # "LCX" where the input is bright
    m = UNet(base_filters=4, depth=2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss, _ = segmentation_loss(m(x), y, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss)
    torch.set_num_threads(threads)
    assert float(loss) < 0.5 * first
