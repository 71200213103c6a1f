"""The data a series carries from header scan to scoring.

These types are the contract between series reading, the kernels, the models, Agatston and the
reports: keep them small, frozen and free of pydicom objects (so they pickle, hash and cross
process boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class AcquisitionInfo:
    """Scanner and protocol facts used for stratifying calibration sets and for reports."""

    manufacturer: str = ""
    model: str = ""
    kvp: float | None = None
    convolution_kernel: str = ""
    ecg_gated: bool | None = None


@dataclass(frozen=True)
class SliceHeader:
    """One image plane of a series, read with ``stop_before_pixels`` (no pixel data in memory).

    An enhanced multi-frame file yields one SliceHeader per frame (``frame`` is its 0-based index);
    a classic single-frame file has ``frame = None``.
    """

    path: Path
    frame: int | None
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float] | None  # (between rows, between columns)
    position_mm: tuple[float, float, float] | None  # ImagePositionPatient
    orientation: tuple[float, float, float, float, float, float] | None  # ImageOrientationPatient
    slice_thickness_mm: float | None
    rescale_slope: float
    rescale_intercept: float
    bits_allocated: int
    bits_stored: int
    pixel_representation: int  # 0 unsigned, 1 signed
    instance_number: int | None = None
    transfer_syntax_uid: str = ""
    acquisition: AcquisitionInfo = field(default_factory=AcquisitionInfo)
    series_description: str = ""
    gantry_tilt_deg: float | None = None  # GantryDetectorTilt, when the file states it
    # True when the file has no SeriesInstanceUID (some de-identified exports) and series_instance_uid
    # was derived from folder + SeriesNumber + StudyInstanceUID (a deterministic 2.25.* UID).
    series_uid_derived: bool = False

    @property
    def key(self) -> tuple[str, int]:
        """Unique identity of the plane within its series (SOP instance, frame)."""
        return (self.sop_instance_uid, -1 if self.frame is None else self.frame)


@dataclass(frozen=True)
class Geometry:
    """Geometry of an ordered series, derived from ImagePositionPatient / ImageOrientationPatient.

    ``z_mm`` is each slice's position projected on the slice normal, increasing with slice index.
    ``slice_increment_mm`` is the median spacing between consecutive slice centres.
    """

    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    slice_increment_mm: float
    normal: tuple[float, float, float]
    z_mm: tuple[float, ...]

    @property
    def n_slices(self) -> int:
        return len(self.z_mm)

    @property
    def pixel_area_mm2(self) -> float:
        return float(self.pixel_spacing_mm[0] * self.pixel_spacing_mm[1])

    @property
    def effective_thickness_mm(self) -> float:
        """Thickness used for Agatston normalisation: the slice spacing when reconstructions overlap."""
        return float(min(self.slice_thickness_mm, self.slice_increment_mm))

    @property
    def voxel_volume_mm3(self) -> float:
        """Pixel area × slice increment: the z extent each slice stands for (no double counting on overlap)."""
        return self.pixel_area_mm2 * float(self.slice_increment_mm)


@dataclass(frozen=True)
class Series:
    """An eligible-looking group of slices of one SeriesInstanceUID, ordered along the slice normal."""

    uid: str
    slices: tuple[SliceHeader, ...]
    geometry: Geometry

    @property
    def first(self) -> SliceHeader:
        return self.slices[0]


@dataclass(frozen=True)
class SkippedFile:
    """A file that is not part of any series, and why (shown to the user and counted)."""

    path: Path
    reason: str  # short machine code, e.g. "not_dicom", "truncated", "no_pixel_data"
    message: str  # a sentence the user can act on


@dataclass(frozen=True)
class RejectedSeries:
    """A series that will not be scored, and why."""

    uid: str
    reason: str  # machine code, e.g. "not_ct", "gantry_tilt", "missing_slices", "mixed_sizes"
    message: str
    files: tuple[Path, ...] = ()


@dataclass
class Volume:
    """A decoded series: HU (slices, rows, columns) plus its series and geometry.

    ``hu`` is float32 by default; ``read_volume(..., hu_dtype="auto")`` gives int16 when that is exact
    (the same values in half the memory). Consumers that do arithmetic on HU should cast first.
    """

    series: Series
    hu: np.ndarray

    @property
    def geometry(self) -> Geometry:
        return self.series.geometry


@dataclass
class ScanResult:
    """Everything found under a path: series to score, series rejected, files skipped."""

    series: list[Series] = field(default_factory=list)
    rejected: list[RejectedSeries] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
