"""Medical image augmentations of DINO-LG (paper Table 1, §3.2.1) in torch, on single-channel tensors.

torchvision is not available beside the CPU torch build, so the operations are written here with
torchvision's semantics (random resized crop sampling, adjust_brightness / adjust_contrast /
adjust_sharpness, 3×3 Gaussian blur with reflect padding). Images are model inputs in [-1, 1]; the
photometric operations work on the [0, 1] intensity scale (as torchvision does on image tensors) and map
back. There is deliberately no solarisation and no colour jitter (hue/saturation/greyscale): CT has one
channel and its intensities mean something.

Every random draw takes an explicit ``torch.Generator`` so that a crop sequence is a pure function of
(seed, epoch, sample), which is what makes resumed runs replay exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from cacstream.training.config import AugmentConfig
from torch import Tensor

Box = tuple[int, int, int, int]  # top, left, height, width


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops on one thread: augmentations are many tiny ops, and waking a thread pool for each
    costs far more than the op (measured 18-35 ms per 32×32 conv with 2 threads on a busy 2-core VM,
    8 µs with one). DataLoader workers are single-threaded already; this covers the main process."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _coin(gen: torch.Generator, p: float) -> bool:
    return p > 0 and float(torch.rand((), generator=gen)) < p


def _randint(gen: torch.Generator, lo: int, hi_inclusive: int) -> int:
    return int(torch.randint(lo, hi_inclusive + 1, (), generator=gen))


def sample_crop_size(
    h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator
) -> tuple[int, int] | None:
    """One draw of torchvision's RandomResizedCrop size: area fraction in ``scale``, log-uniform aspect
    ratio in ``ratio``. None when the drawn box does not fit."""
    area = h * w
    target = area * _uniform(gen, scale[0], scale[1])
    aspect = math.exp(_uniform(gen, math.log(ratio[0]), math.log(ratio[1])))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
        return ch, cw
    return None


def random_resized_crop_box(
    h: int,
    w: int,
    scale: tuple[float, float],
    gen: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """torchvision ``RandomResizedCrop.get_params``: 10 tries, then a central crop fallback."""
    for _ in range(10):
        size = sample_crop_size(h, w, scale, ratio, gen)
        if size is not None:
            ch, cw = size
            return _randint(gen, 0, h - ch), _randint(gen, 0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw = w
        ch = int(round(cw / min(ratio)))
    elif in_ratio > max(ratio):
        ch = h
        cw = int(round(ch * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def crop_resize(img: Tensor, box: Box, size: int, mode: str = "bicubic") -> Tensor:
    """Crop ``box`` from a (C, H, W) image and resize to (C, size, size) (antialiased, like PIL)."""
    top, left, ch, cw = box
    region = img[None, :, top : top + ch, left : left + cw]
    out = F.interpolate(
        region, size=(size, size), mode=mode, align_corners=False, antialias=(ch > size or cw > size)
    )
    return out[0].clamp_(-1.0, 1.0)


def gaussian_blur3x3(img01: Tensor, sigma: float) -> Tensor:
    """Separable 3×3 Gaussian blur (reflect padding, as torchvision's gaussian_blur) of (C, H, W)."""
    k = torch.tensor(
        [math.exp(-1.0 / (2 * sigma * sigma)), 1.0, math.exp(-1.0 / (2 * sigma * sigma))],
        dtype=img01.dtype,
        device=img01.device,
    )
    k = k / k.sum()
    c = img01.shape[0]
    x = F.pad(img01[None], (1, 1, 1, 1), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 3).expand(c, 1, 1, 3), groups=c)
    x = F.conv2d(x, k.view(1, 1, 3, 1).expand(c, 1, 3, 1), groups=c)
    return x[0]


def adjust_brightness(img01: Tensor, factor: float) -> Tensor:
    """torchvision adjust_brightness: blend with black."""
    return (img01 * factor).clamp_(0.0, 1.0)


def adjust_contrast(img01: Tensor, factor: float) -> Tensor:
    """torchvision adjust_contrast: blend with the mean intensity of the image."""
    mean = img01.mean()
    return (factor * img01 + (1.0 - factor) * mean).clamp_(0.0, 1.0)


def adjust_sharpness(img01: Tensor, factor: float) -> Tensor:
    """torchvision adjust_sharpness: blend with a [[1,1,1],[1,5,1],[1,1,1]]/13 smoothed copy whose
    border pixels are the original ones; factor > 1 sharpens."""
    if img01.shape[-1] <= 2 or img01.shape[-2] <= 2:
        return img01
    c = img01.shape[0]
    kernel = torch.ones(3, 3, dtype=img01.dtype, device=img01.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = F.conv2d(img01[None], kernel, groups=c)[0]
    degenerate = img01.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return (factor * img01 + (1.0 - factor) * degenerate).clamp_(0.0, 1.0)


def add_gaussian_noise(img01: Tensor, std: float, gen: torch.Generator) -> Tensor:
    noise = torch.randn(img01.shape, generator=gen, dtype=img01.dtype) * std
    return (img01 + noise.to(img01.device)).clamp_(0.0, 1.0)


def augment_view(img: Tensor, cfg: AugmentConfig, blur_p: float, gen: torch.Generator) -> Tensor:
    """Photometric + flip augmentations of one crop (C, S, S) in [-1, 1], in DINO's order: flips, then
    brightness/contrast (random order, p = jitter_p), blur (p = blur_p), sharpness, noise."""
    x = img
    if _coin(gen, cfg.hflip_p):
        x = x.flip(-1)
    if _coin(gen, cfg.vflip_p):
        x = x.flip(-2)
    x01 = (x + 1.0) * 0.5
    if _coin(gen, cfg.jitter_p):
        ops = [
            ("b", _uniform(gen, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)),
            ("c", _uniform(gen, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)),
        ]
        if _coin(gen, 0.5):
            ops.reverse()
        for kind, factor in ops:
            x01 = adjust_brightness(x01, factor) if kind == "b" else adjust_contrast(x01, factor)
    if _coin(gen, blur_p):
        x01 = gaussian_blur3x3(x01, _uniform(gen, cfg.blur_sigma[0], cfg.blur_sigma[1]))
    if _coin(gen, cfg.sharpness_p):
        x01 = adjust_sharpness(x01, cfg.sharpness)
    if _coin(gen, cfg.noise_p) and cfg.noise_std > 0:
        x01 = add_gaussian_noise(x01, _uniform(gen, 0.0, cfg.noise_std), gen)
    return x01 * 2.0 - 1.0
