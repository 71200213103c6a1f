"""Tiny synthetic CT cases for the training tests: a soft-tissue disc in air, a bone blob that is never
labelled, and on some slices small bright calcium blobs whose artery label depends on where they sit
(LM top-left, LAD top-right, LCX bottom-left, RCA bottom-right of the 'heart'), so a segmenter can learn
the artery from position and a classifier can learn 'calcified slice'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cacstream.training.datasets.cases import Case, save_npz_case


def make_case(
    seed: int, size: int = 64, slices: int = 10, calcified_fraction: float = 0.5, labelled: bool = True
) -> Case:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    hu = np.full((slices, size, size), -1000.0, np.float32)
    for z in range(slices):  # every slice differs: body shape, lungs or not, organs, bone position
        ry, rx = rng.uniform(0.3, 0.47, 2) * size
        body = ((yy - c) / ry) ** 2 + ((xx - c) / rx) ** 2 <= 1
        hu[z, body] = rng.uniform(-150, 250)  # a wide spread of soft-tissue levels between slices
        if rng.random() < 0.6:  # a chest level: two dark lungs of random size beside the mediastinum
            lr_ = rng.uniform(0.12, 0.22) * size
            for side in (-1, 1):
                lx = c + side * rx * rng.uniform(0.45, 0.6)
                lung = (((yy - c) / (1.3 * lr_)) ** 2 + ((xx - lx) / lr_) ** 2 <= 1) & body
                hu[z, lung] = rng.uniform(-900, -700)
        for _ in range(int(rng.integers(0, 3))):  # soft-tissue / fat regions
            oy, ox = c + rng.uniform(-0.25, 0.25, 2) * size
            r = rng.uniform(0.05, 0.15) * size
            organ = ((yy - oy) ** 2 + (xx - ox) ** 2 <= r * r) & body
            hu[z, organ] = rng.choice([-100.0, 30.0, 80.0]) + rng.normal(0, 10)
        by = c + ry * rng.uniform(0.55, 0.8)
        bone = ((yy - by) ** 2 + (xx - c) ** 2) <= (rng.uniform(0.05, 0.09) * size) ** 2  # never labelled
        hu[z, bone] = rng.uniform(500, 900)
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    quadrants = {1: (0.35, 0.35), 2: (0.35, 0.62), 3: (0.62, 0.35), 4: (0.62, 0.62)}
    for z in range(slices):
        if rng.random() >= calcified_fraction:
            continue
        for _ in range(int(rng.integers(1, 3))):
            artery = int(rng.integers(1, 5))
            fy, fx = quadrants[artery]
            cy = fy * size + rng.uniform(-0.05, 0.05) * size
            cx = fx * size + rng.uniform(-0.05, 0.05) * size
            r = rng.uniform(1.2, 2.2)
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
            hu[z, blob] = rng.uniform(350, 900)
            labels[z, blob] = artery
    return Case(
        f"syn-{seed}", f"patient-{seed}", hu, labels if labelled else None, (0.7, 0.7), f"synthetic:{seed}"
    )


def write_cases(folder: Path, seeds: range, **kw: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        save_npz_case(make_case(s, **kw), folder / f"syn-{s}.npz")  # type: ignore[arg-type]
    return folder
