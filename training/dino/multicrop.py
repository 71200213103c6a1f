"""DINO-LG multi-crop: 2 global crops + RLC random local crops for every slice, plus GLC guided local
crops for labelled slices (paper §3.2.2, Table 4), and the collation that batches a variable number of
local crops per slice.

A guided crop picks a random calcium pixel of the slice's label mask, draws a crop size from the local
scale range (the same draw as a random local crop), and places the crop so that the pixel lies at the
centre shifted by up to ``guided_jitter`` of the half-size, so the lesion is not always dead centre.
Near the border the crop is shifted inwards, never shrunk, and always still contains the pixel.

Collation groups crops by resolution, like DINO's MultiCropWrapper: all global crops of a batch form one
tensor (crop-major, as DINOLoss expects), all local crops (random and guided, any count per slice)
another, with an owner index telling which slice each local crop belongs to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from cacstream.training.config import AugmentConfig, MultiCropConfig
from cacstream.training.dino.augment import (
    Box,
    _randint,
    _uniform,
    augment_view,
    crop_resize,
    random_resized_crop_box,
    sample_crop_size,
    single_threaded,
)
from torch import Tensor

RATIO = (3 / 4, 4 / 3)


def guided_crop_box(
    h: int,
    w: int,
    point: tuple[int, int],
    scale: tuple[float, float],
    jitter: float,
    gen: torch.Generator,
    ratio: tuple[float, float] = RATIO,
) -> Box:
    """A local crop box of area fraction in ``scale`` that contains ``point`` = (row, col), with the point
    at most ``jitter`` × half-size away from the centre (before any shift back inside the image)."""
    size = None
    for _ in range(10):
        size = sample_crop_size(h, w, scale, ratio, gen)
        if size is not None:
            break
    if size is None:  # an odd aspect image: fall back to a square of the mean scale
        side = int(round(math.sqrt(h * w * (scale[0] + scale[1]) / 2)))
        size = (min(side, h), min(side, w))
    ch, cw = size
    y, x = point
    cy = y + _uniform(gen, -jitter, jitter) * ch / 2
    cx = x + _uniform(gen, -jitter, jitter) * cw / 2
    top = int(math.floor(cy - ch / 2))
    left = int(math.floor(cx - cw / 2))
    top = min(max(top, y - ch + 1), y)  # keep the point inside ...
    left = min(max(left, x - cw + 1), x)
    top = min(max(top, 0), h - ch)  # ... and the box inside the image (still contains the point)
    left = min(max(left, 0), w - cw)
    return top, left, ch, cw


@dataclass
class MultiCropSample:
    """The crops of one slice: globals (2, C, G, G); locals (n, C, L, L), the last ``n_guided`` guided."""

    globals: Tensor
    locals: Tensor
    n_guided: int
    guided_points: list[tuple[int, int]]
    guided_boxes: list[Box]


@dataclass
class MultiCropBatch:
    """A batch of B slices: globals (2B, C, G, G) crop-major; locals (L, C, l, l); owner (L,) in [0, B)."""

    globals: Tensor
    locals: Tensor
    local_owner: Tensor
    n_guided: int

    @property
    def batch_size(self) -> int:
        return self.globals.shape[0] // 2

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MultiCropBatch:
        return MultiCropBatch(
            self.globals.to(device, non_blocking=non_blocking),
            self.locals.to(device, non_blocking=non_blocking),
            self.local_owner.to(device, non_blocking=non_blocking),
            self.n_guided,
        )


class MultiCropAugmentation:
    """Turns one preprocessed slice (1, H, W) in [-1, 1] and its calcium mask into DINO-LG crops."""

    def __init__(self, crop: MultiCropConfig, augment: AugmentConfig, global_size: int) -> None:
        self.crop, self.augment, self.global_size = crop, augment, global_size
        self.gscale = (float(crop.global_crops_scale[0]), float(crop.global_crops_scale[1]))
        self.lscale = (float(crop.local_crops_scale[0]), float(crop.local_crops_scale[1]))

    def n_local(self, labelled: bool) -> int:
        return self.crop.rlc + (self.crop.glc if labelled else 0)

    def __call__(self, img: Tensor, calcium: Tensor | None, gen: torch.Generator) -> MultiCropSample:
        with single_threaded():
            return self._crops(img, calcium, gen)

    def _crops(self, img: Tensor, calcium: Tensor | None, gen: torch.Generator) -> MultiCropSample:
        _, h, w = img.shape
        mode = self.crop.interpolation
        aug = self.augment
        globals_ = []
        for blur_p in (aug.blur_p_global1, aug.blur_p_global2):
            box = random_resized_crop_box(h, w, self.gscale, gen, RATIO)
            globals_.append(augment_view(crop_resize(img, box, self.global_size, mode), aug, blur_p, gen))
        ls = self.crop.local_crop_size
        locals_ = []
        for _ in range(self.crop.rlc):
            box = random_resized_crop_box(h, w, self.lscale, gen, RATIO)
            locals_.append(augment_view(crop_resize(img, box, ls, mode), aug, aug.blur_p_local, gen))
        points: list[tuple[int, int]] = []
        boxes: list[Box] = []
        if calcium is not None and self.crop.glc > 0:
            coords = calcium.nonzero()
            if coords.shape[0]:
                for _ in range(self.crop.glc):
                    y, x = (int(v) for v in coords[_randint(gen, 0, coords.shape[0] - 1)])
                    box = guided_crop_box(h, w, (y, x), self.lscale, self.crop.guided_jitter, gen)
                    points.append((y, x))
                    boxes.append(box)
                    locals_.append(augment_view(crop_resize(img, box, ls, mode), aug, aug.blur_p_local, gen))
        c = img.shape[0]
        loc = torch.stack(locals_) if locals_ else img.new_zeros((0, c, ls, ls))
        return MultiCropSample(torch.stack(globals_), loc, len(points), points, boxes)


def collate_multicrop(samples: list[MultiCropSample]) -> MultiCropBatch:
    """Stack globals crop-major and concatenate every sample's local crops with owner indices."""
    g = torch.cat(
        [torch.stack([s.globals[0] for s in samples]), torch.stack([s.globals[1] for s in samples])]
    )
    counts = torch.tensor([s.locals.shape[0] for s in samples], dtype=torch.long)
    loc = torch.cat([s.locals for s in samples])
    owner = torch.repeat_interleave(torch.arange(len(samples)), counts)
    return MultiCropBatch(g, loc, owner, sum(s.n_guided for s in samples))
