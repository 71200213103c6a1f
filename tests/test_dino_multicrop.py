"""Guided local crops (DINO-LG) and multi-crop collation with a variable number of crops per slice."""

from __future__ import annotations

import torch
from cacstream.training.config import AugmentConfig, MultiCropConfig
from cacstream.training.dino.multicrop import (
    MultiCropAugmentation,
    collate_multicrop,
    guided_crop_box,
)

NO_PHOTOMETRIC = AugmentConfig(
    hflip_p=0,
    vflip_p=0,
    jitter_p=0,
    blur_p_global1=0,
    blur_p_global2=0,
    blur_p_local=0,
    sharpness_p=0,
    noise_p=0,
)


def test_guided_box_contains_the_point_stays_inside_and_keeps_local_scale() -> None:
    g = torch.Generator().manual_seed(0)
    h, w = 128, 96
    for i in range(400):
        y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))
        if i % 4 == 0:
            y, x = 0, w - 1  # corners: the box must shift inwards, not shrink
        top, left, ch, cw = guided_crop_box(h, w, (y, x), (0.05, 0.4), 0.5, g)
        assert top <= y < top + ch and left <= x < left + cw
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        assert 0.05 * 0.85 <= ch * cw / (h * w) <= 0.4 * 1.15


def test_zero_jitter_centres_the_point_away_from_borders() -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        top, left, ch, cw = guided_crop_box(512, 512, (256, 250), (0.05, 0.1), 0.0, g)
        assert abs(top + ch / 2 - 256) <= 1 and abs(left + cw / 2 - 250) <= 1


def test_jitter_moves_the_point_off_centre_within_bounds() -> None:
    g = torch.Generator().manual_seed(2)
    offsets = []
    for _ in range(200):
        top, left, ch, cw = guided_crop_box(512, 512, (256, 256), (0.05, 0.1), 0.5, g)
        offsets.append(abs(top + ch / 2 - 256) / (ch / 2))
        assert abs(top + ch / 2 - 256) <= 0.5 * ch / 2 + 1
    assert max(offsets) > 0.3  # the lesion is not always dead centre


def _slice_with_calcium() -> tuple[torch.Tensor, torch.Tensor]:
    img = -torch.ones(1, 96, 96)
    mask = torch.zeros(96, 96, dtype=torch.bool)
    img[0, 70:73, 15:18] = 1.0
    mask[70:73, 15:18] = True
    return img, mask


def test_labelled_slices_get_guided_crops_that_show_the_calcium() -> None:
    img, mask = _slice_with_calcium()
    aug = MultiCropAugmentation(
        MultiCropConfig(local_crop_size=16, rlc=8, glc=4, guided_jitter=0.5), NO_PHOTOMETRIC, global_size=32
    )
    g = torch.Generator().manual_seed(3)
    sample = aug(img, mask, g)
    assert sample.globals.shape == (2, 1, 32, 32) and sample.locals.shape == (12, 1, 16, 16)
    assert sample.n_guided == 4
    for y, x in sample.guided_points:
        assert mask[y, x]
    # every guided crop shows the bright calcium; random crops of a 0.1 %-area lesion mostly do not
    assert all(float(c.max()) > -0.5 for c in sample.locals[8:])
    unlabelled = aug(img, None, g)
    assert unlabelled.locals.shape == (8, 1, 16, 16) and unlabelled.n_guided == 0
    no_glc = MultiCropAugmentation(MultiCropConfig(local_crop_size=16, rlc=8, glc=0), NO_PHOTOMETRIC, 32)
    assert no_glc(img, mask, g).n_guided == 0  # standard DINO (the paper's ablation)


def test_random_local_crops_rarely_hit_a_small_lesion() -> None:
    img, mask = _slice_with_calcium()
    aug = MultiCropAugmentation(MultiCropConfig(local_crop_size=16, rlc=8, glc=0), NO_PHOTOMETRIC, 32)
    g = torch.Generator().manual_seed(4)
    hits = sum(int(float(c.max()) > -0.5) for _ in range(20) for c in aug(img, None, g).locals)
    assert hits < 0.5 * 160


def test_collation_groups_by_resolution_with_owner_indices() -> None:
    img, mask = _slice_with_calcium()
    aug = MultiCropAugmentation(MultiCropConfig(local_crop_size=16, rlc=2, glc=3), NO_PHOTOMETRIC, 32)
    g = torch.Generator().manual_seed(5)
    samples = [aug(img, mask, g), aug(img, None, g), aug(img, mask, g)]
    batch = collate_multicrop(samples)
    assert batch.globals.shape == (6, 1, 32, 32)
    torch.testing.assert_close(batch.globals[1], samples[1].globals[0])  # crop-major: g1 of every slice first
    torch.testing.assert_close(batch.globals[3 + 2], samples[2].globals[1])
    assert batch.locals.shape == (5 + 2 + 5, 1, 16, 16)
    assert batch.local_owner.tolist() == [0] * 5 + [1] * 2 + [2] * 5
    assert batch.n_guided == 6 and batch.batch_size == 3
