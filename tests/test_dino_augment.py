"""Medical augmentations against independent numpy/scipy statements of torchvision's semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cacstream.training.config import AugmentConfig
from cacstream.training.dino.augment import (
    adjust_brightness,
    adjust_contrast,
    adjust_sharpness,
    augment_view,
    crop_resize,
    gaussian_blur3x3,
    random_resized_crop_box,
)
from scipy import ndimage


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_resized_crop_boxes_respect_scale_ratio_and_bounds() -> None:
    g = gen(0)
    h, w = 120, 100
    for _ in range(300):
        top, left, ch, cw = random_resized_crop_box(h, w, (0.05, 0.4), g)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        area = ch * cw / (h * w)
        assert 0.05 * 0.85 <= area <= 0.4 * 1.15  # rounding of the sides
        assert 3 / 4 * 0.85 <= cw / ch <= 4 / 3 * 1.15


def test_crop_resize_of_constant_region_and_shape() -> None:
    img = torch.full((1, 50, 60), 0.25)
    out = crop_resize(img, (5, 7, 30, 20), 16)
    assert out.shape == (1, 16, 16)
    torch.testing.assert_close(out, torch.full((1, 16, 16), 0.25))


def test_gaussian_blur_matches_scipy_mirror_convolution() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((1, 13, 17)).astype(np.float32)
    sigma = 0.8
    k1 = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * sigma**2))
    k1 /= k1.sum()
    expected = ndimage.convolve(img[0], np.outer(k1, k1), mode="mirror")
    got = gaussian_blur3x3(torch.from_numpy(img), sigma)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_sharpness_matches_torchvision_definition() -> None:
    rng = np.random.default_rng(1)
    img = rng.random((1, 9, 11)).astype(np.float32)
    kernel = np.ones((3, 3), np.float32)
    kernel[1, 1] = 5
    kernel /= 13
    smooth = ndimage.correlate(img[0], kernel, mode="constant")[1:-1, 1:-1]
    degenerate = img[0].copy()
    degenerate[1:-1, 1:-1] = smooth
    expected = np.clip(1.5 * img[0] + (1 - 1.5) * degenerate, 0, 1)
    got = adjust_sharpness(torch.from_numpy(img), 1.5)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_brightness_and_contrast_follow_torchvision_blends() -> None:
    x = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])
    torch.testing.assert_close(adjust_brightness(x, 1.4), torch.tensor([[[0.28, 0.56], [0.84, 1.0]]]))
    torch.testing.assert_close(adjust_contrast(x, 0.5), torch.tensor([[[0.35, 0.45], [0.55, 0.65]]]))


def test_augment_view_is_deterministic_in_range_and_identity_when_off() -> None:
    img = torch.rand(1, 24, 24) * 2 - 1
    cfg = AugmentConfig()
    a = augment_view(img, cfg, 0.5, gen(3))
    b = augment_view(img, cfg, 0.5, gen(3))
    torch.testing.assert_close(a, b)
    assert a.shape == img.shape and float(a.min()) >= -1 and float(a.max()) <= 1
    off = AugmentConfig(hflip_p=0, vflip_p=0, jitter_p=0, sharpness_p=0, noise_p=0)
    torch.testing.assert_close(augment_view(img, off, 0.0, gen(4)), img, atol=1e-6, rtol=0)


def test_flip_probabilities_are_honoured() -> None:
    img = torch.linspace(-1, 1, 16).view(1, 1, 16).expand(1, 16, 16).contiguous()
    cfg = AugmentConfig(hflip_p=0.5, vflip_p=0, jitter_p=0, sharpness_p=0, noise_p=0)
    g = gen(5)
    flips = sum(bool(augment_view(img, cfg, 0.0, g)[0, 0, 0] > 0) for _ in range(400))
    assert abs(flips / 400 - 0.5) < 0.08


@pytest.mark.parametrize("sigma", [0.1, 2.0])
def test_blur_kernel_normalised(sigma: float) -> None:
    x = torch.full((1, 5, 5), 0.3)
    torch.testing.assert_close(gaussian_blur3x3(x, sigma), x)
    assert math.isfinite(float(gaussian_blur3x3(torch.rand(1, 5, 5), sigma).sum()))
