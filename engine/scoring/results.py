"""Results of scoring: lesions and per-series totals. Shared by Agatston, reports and the stream."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Lesion:
    """One 2D connected component of calcium in one axial slice.

    ``score`` is area × weight *before* the thickness normalisation, which applies to the series
    total (DESIGN.md); ``artery`` is the segmenter's majority class, or None in threshold mode.
    """

    slice_index: int
    z_mm: float
    n_pixels: int
    area_mm2: float
    peak_hu: float
    mean_hu: float
    weight: int
    score: float
    artery: str | None
    centroid_rc: tuple[float, float]
    volume_mm3: float


@dataclass
class AgatstonResult:
    """Per-series totals. ``agatston_total`` includes the thickness normalisation."""

    lesions: list[Lesion]
    agatston_total: float
    agatston_per_artery: dict[str, float]
    volume_mm3_total: float
    volume_mm3_per_artery: dict[str, float]
    mass_mg_total: float | None
    mass_mg_per_artery: dict[str, float] | None
    risk_category: str
    thickness_factor: float
    config: dict = field(default_factory=dict)
    #: lesions found but not counted, with the reason (``skeletal``: part of a bone-sized 3D component)
    excluded_lesions: list[tuple[Lesion, str]] = field(default_factory=list)
