"""Typed configuration of the phantom generator (recorded in every truth file)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from cacstream.engine.domain import RISK_CATEGORIES

PhantomKind = Literal["chest", "cardiac_gated", "calibration", "mixed"]
KINDS: tuple[str, ...] = ("chest", "cardiac_gated", "calibration", "mixed")


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate. ``None`` fields are drawn per seed from realistic distributions.

    Attributes:
        kind: "cardiac_gated" (ECG-gated calcium-scoring scan of the heart, small FOV),
            "chest" (non-gated whole-chest scan: cardiac motion, large FOV, table),
            "calibration" (QRM-like water cylinder with calcium inserts) or
            "mixed" (gated or chest, drawn per seed with equal odds).
        matrix: rows = columns of each slice (512 on real scanners; smaller for fast tests).
        pixel_spacing_range_mm: allowed pixel spacing; the field of view is drawn for the kind and
            the spacing is FOV / matrix clipped to this range (so a small matrix crops the FOV).
        thickness_mm: force the slice thickness (None: drawn per kind from 1.5–5 mm).
        increment_mm: force the slice increment (None: = thickness, or overlapping reconstruction
            with probability ``overlap_probability``).
        overlap_probability: chance of an overlapping reconstruction (increment < thickness).
        z_coverage_mm: force the scan length, centred on the heart (None: heart for gated scans,
            lung apices to upper abdomen for chest scans). Small values make fast tests.
        calcium_category: force the coronary burden's target risk category ("0", "1-10", ...;
            None: drawn; 17 % of targets are zero and about a quarter of realised scores are, since a
            faint or moving plaque can stay below 130 HU / 1 mm²). The realised category is computed
            from the image.
        aortic_calcium_probability: chance that the aorta carries wall calcium.
        aortic_part_weights: relative odds that one aortic wall plaque lies on the root / ascending
            aorta, the arch, or the descending aorta. The default (0.2, 0.35, 0.45) follows where
            aortic calcium is common; a hard-negative training set can favour the root, whose wall
            calcium lies at the coronary ostia' levels and is what the v1.3 U-Net labels LM.
        valve_calcium_probability: chance of mitral-annulus / aortic-valve calcium (hard negatives
            close to the coronaries).
        noise: add quantum noise (spatially correlated like the scanner kernel's NPS).
        noise_scale: multiply the drawn noise σ (1.0 realistic; 0 is the same as noise=False).
        blur: apply the in-plane PSF of the kernel.
        motion: cardiac motion of the heart and coronaries (None: on for chest, rare and mild for gated).
        ideal: no noise, no blur, no motion and point sampling (each voxel takes the value at its
            centre): areas become lattice counts that can be checked analytically.
        label_support_hu: a voxel belongs to a plaque's neighbourhood where the plaque's blurred,
            noise-free contribution is at least this many HU.
        label_min_contrast_hu: a ≥ 130 HU blob is plaque calcium only if the plaque contributes at
            least this many HU somewhere in it (otherwise it is noise that happens to touch a
            plaque's faint fringe).
        calibration_insert_length_mm: length along z of each calibration insert cylinder.
        manufacturer: force one scanner vendor of the catalogue (None: drawn).
        cartilage_foci_probability: chance of patchy calcified foci in the costal cartilage, each its
            own small calcium component, not joined to rib or sternum (real costal cartilage calcifies
            that way, and the skeletal check cannot see it: the COCA gated patient 0's anterior chest
            wall, which the v1.2 and v1.3 U-Nets label LM). 0 (default) draws nothing and leaves every
            phantom as before; training sets that should show the U-Net this hard negative set it.
        lean_coronary_fat_probability: chance, per artery, that it is *lean*: instead of the 3.5 mm
            sleeve of -92 HU fat, a sleeve 1-3.5 mm beyond the wall (varying along it) of one density
            drawn from -60..30 HU, so its plaques sit in soft-tissue-like surroundings as real plaques
            often do (around the COCA ROI plaques the tissue 1-3 mm out is 40 % fat; around default
            phantom plaques 89 %). 0 (default) leaves every phantom as before.
    """

    kind: PhantomKind = "cardiac_gated"
    matrix: int = 512
    pixel_spacing_range_mm: tuple[float, float] = (0.3, 0.8)
    thickness_mm: float | None = None
    increment_mm: float | None = None
    overlap_probability: float = 0.15
    z_coverage_mm: float | None = None
    calcium_category: str | None = None
    aortic_calcium_probability: float = 0.45
    aortic_part_weights: tuple[float, float, float] = (0.2, 0.35, 0.45)
    valve_calcium_probability: float = 0.15
    noise: bool = True
    noise_scale: float = 1.0
    blur: bool = True
    motion: bool | None = None
    ideal: bool = False
    label_support_hu: float = 10.0
    label_min_contrast_hu: float = 30.0
    calibration_insert_length_mm: float = 10.0
    manufacturer: str | None = None
    cartilage_foci_probability: float = 0.0
    lean_coronary_fat_probability: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 32 <= self.matrix <= 2048:
            raise ValueError(f"matrix must be within 32..2048, got {self.matrix}")
        lo, hi = self.pixel_spacing_range_mm
        if not 0 < lo <= hi:
            raise ValueError(f"pixel_spacing_range_mm must be 0 < low <= high, got {self.pixel_spacing_range_mm}")
        if self.thickness_mm is not None and not 0.5 <= self.thickness_mm <= 10:
            raise ValueError(f"thickness_mm must be within 0.5..10, got {self.thickness_mm}")
        if self.increment_mm is not None and self.increment_mm <= 0:
            raise ValueError(f"increment_mm must be > 0, got {self.increment_mm}")
        if self.calcium_category is not None and self.calcium_category not in RISK_CATEGORIES:
            raise ValueError(f"calcium_category must be one of {RISK_CATEGORIES}, got {self.calcium_category!r}")
        if self.z_coverage_mm is not None and self.z_coverage_mm <= 0:
            raise ValueError("z_coverage_mm must be > 0")
        for name in ("aortic_calcium_probability", "valve_calcium_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")
        if self.noise_scale < 0:
            raise ValueError("noise_scale must be >= 0")
        object.__setattr__(self, "aortic_part_weights", tuple(float(w) for w in self.aortic_part_weights))
        if len(self.aortic_part_weights) != 3 or min(self.aortic_part_weights) < 0 or sum(self.aortic_part_weights) <= 0:
            raise ValueError("aortic_part_weights must be three non-negative odds (root/ascending, arch, "
                             f"descending) with a positive sum, got {self.aortic_part_weights}")
        if not 0.0 <= self.cartilage_foci_probability <= 1.0:
            raise ValueError(f"cartilage_foci_probability must be within 0..1, got {self.cartilage_foci_probability}")
        if not 0.0 <= self.lean_coronary_fat_probability <= 1.0:
            raise ValueError(
                f"lean_coronary_fat_probability must be within 0..1, got {self.lean_coronary_fat_probability}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the truth file."""
        d = dataclasses.asdict(self)
        d["pixel_spacing_range_mm"] = list(self.pixel_spacing_range_mm)
        d["aortic_part_weights"] = list(self.aortic_part_weights)
        return d
