"""Small CT series on disk for the streaming / score / report tests (seconds to write, milliseconds to score).

Each series is a body disc with noise, a bone blob (scored in threshold mode, as it must be) and calcium
blobs of several densities on some slices, written as real CT DICOM by the project's writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from cacstream.training.dicom_writer import write_ct_series


def make_hu(seed: int, n_slices: int = 12, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    hu = np.full((n_slices, size, size), -1000.0, np.float32)
    body = ((yy - c) / (0.45 * size)) ** 2 + ((xx - c) / (0.42 * size)) ** 2 <= 1
    for z in range(n_slices):
        hu[z, body] = 20.0
        bone = (yy - c - 0.3 * size) ** 2 + (xx - c) ** 2 <= (0.07 * size) ** 2
        hu[z, bone] = 650.0 + 10 * z
        if rng.random() < 0.6:
            for _ in range(int(rng.integers(1, 4))):
                cy, cx = rng.uniform(0.3, 0.6, 2) * size
                r = rng.uniform(1.0, 2.6)
                blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                hu[z, blob] = rng.choice([150.0, 250.0, 350.0, 600.0])
    hu += np.round(rng.normal(0, 12, hu.shape)).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3000).astype(np.float32)


def write_series(
    out_dir: Path,
    seed: int,
    *,
    n_slices: int = 12,
    size: int = 64,
    thickness_mm: float = 3.0,
    spacing_mm: float = 0.7,
    expected_count: bool = False,
    prefix: str = "IM",
    modality: str = "CT",
) -> tuple[list[Path], str, np.ndarray]:
    """Write one series; returns (paths in slice order, SeriesInstanceUID, HU volume)."""
    hu = make_hu(seed, n_slices, size)
    uid = generate_uid()

    def extra(ds, k):  # noqa: ANN001
        if expected_count:
            ds.ImagesInAcquisition = n_slices
        if modality != "CT":
            ds.Modality = modality
        ds.PatientName = f"Doe^Jane{seed}"
        ds.PatientID = f"PID-{seed:04d}"

    paths = write_ct_series(hu, out_dir, pixel_spacing_mm=(spacing_mm, spacing_mm), slice_thickness_mm=thickness_mm,
                            series_uid=uid, file_name=f"{prefix}{seed:03d}-{{index:04d}}.dcm", extra=extra,
                            series_description=f"test series {seed}")
    return paths, uid, hu
