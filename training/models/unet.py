"""2D U-Net segmenter for per-artery coronary calcium (paper §3.4, Table 5: 64 initial filters).

Classes follow ``engine/domain.py``: 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA. The network is the
standard U-Net (two 3×3 conv + norm + ReLU per level, 2×2 max-pool down, 2×2 transposed conv up, skip
concatenation) with same-padding so the output has the input's size; the input side must be a multiple
of 2**depth.
"""

from __future__ import annotations

import torch
from cacstream.engine.domain import NUM_SEG_CLASSES
from torch import Tensor, nn


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be batch, instance or none, got {kind!r}")


class DoubleConv(nn.Module):
    """(3×3 conv → norm → ReLU) × 2."""

    def __init__(self, cin: int, cout: int, norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "none"
        self.block = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Up(nn.Module):
    """2×2 transposed conv (halves channels) → concat skip → DoubleConv."""

    def __init__(self, cin: int, cout: int, norm: str = "batch") -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(cin // 2 + cout, cout, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net: slices (B, in_chans, S, S) → class logits (B, num_classes, S, S).

    Args:
        in_chans: 1 (one preprocessed CT slice).
        num_classes: 5 (background + LM, LAD, LCX, RCA).
        base_filters: filters of the first level, doubled at each level (64 in the paper).
        depth: number of 2× down-samplings (4 in the original U-Net).
        norm: "batch" (default), "instance" or "none".
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = NUM_SEG_CLASSES,
        base_filters: int = 64,
        depth: int = 4,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.in_chans, self.num_classes, self.depth = in_chans, num_classes, depth
        widths = [base_filters * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_chans, widths[0], norm)
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1], norm) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], norm) for i in reversed(range(depth)))
        self.outc = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def size_multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.outc(y)
