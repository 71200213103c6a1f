"""Typed configuration for scoring. Every knob here is recorded in the report.

The defaults are the convention in DESIGN.md (Agatston 1990 as used by COCA and DINO-LG).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class AgatstonConfig:
    """Knobs of the Agatston / volume / mass computation.

    Attributes:
        threshold_hu: voxels at or above this HU are calcium candidates (130 in the standard).
        connectivity: 2D connectivity of lesions within a slice: 8 (default) or 4.
        min_area_mm2: lesions smaller than this are dropped as noise (1 mm² standard).
        weight_thresholds_hu: lower HU bounds of density weights 1, 2, 3, 4 (peak HU of the lesion).
        reference_thickness_mm: the total is scaled by effective thickness / this (3 mm standard).
        normalise_thickness: apply that scaling at all (off reproduces the raw sum of lesion scores).
        mass_calibration_mg_per_hu_cm3: mass = mean HU × volume × factor; None means mass is not
            reported (a factor is only valid for a scanner calibrated with a phantom).
        skeletal_component_mm3: with artery labels (model mode), a lesion whose calcium lies in a 3D
            component (26-connected, HU ≥ threshold) larger than this is bone the segmenter mistook
            for an artery (rib, sternum, vertebra): it is excluded and listed with the reason. None
            keeps every lesion. 2,000 mm³ by default: true coronary components measured ≤ 500 mm³,
            the largest bone components of a scan 146,000-491,000 mm³ (engine/scoring/skeleton.py).
        min_claimed_share: with artery labels (model mode), a 2D calcium component the segmenter labels
            only in part, below this share of its pixels, is calcium it split between an artery and
            something else (aortic wall, valve, bone): its lesion is excluded and listed with the
            reason. None keeps every lesion. 0.75 by default: true coronary lesions measured ≥ 81 %
            claimed, a quarter of the false ones < 80 % (engine/scoring/claims.py).
        min_bone_distance_mm: with artery labels (model mode) and the skeletal check on, a lesion with
            a pixel closer than this (3D, mm) to calcium of a bone-sized component is chest-wall or
            spinal calcium, not coronary: it is excluded and listed with the reason. None keeps it. 8 mm
            by default: true coronary lesions measured >= 20 mm from the skeleton on the COCA scans and
            >= 10 mm on the phantoms (engine/scoring/juxta_skeletal.py).
        cardiac_levels: with artery labels (model mode), a lesion above or below the levels the heart
            can occupy (found from the lungs: 50 mm below the lung apices down to 15 mm below where
            the lung bases thin out) is neck or abdominal calcium: it is excluded and listed with the
            reason. Applies only to series that show the lungs whole (chest CT); True by default
            (engine/scoring/cardiac_window.py).
    """

    threshold_hu: float = 130.0
    connectivity: Literal[4, 8] = 8
    min_area_mm2: float = 1.0
    weight_thresholds_hu: tuple[float, float, float, float] = (130.0, 200.0, 300.0, 400.0)
    reference_thickness_mm: float = 3.0
    normalise_thickness: bool = True
    mass_calibration_mg_per_hu_cm3: float | None = None
    skeletal_component_mm3: float | None = 2000.0
    min_claimed_share: float | None = 0.75
    min_bone_distance_mm: float | None = 8.0
    cardiac_levels: bool = True

    def __post_init__(self) -> None:
        if self.min_bone_distance_mm is not None and not self.min_bone_distance_mm > 0:
            raise ValueError(f"min_bone_distance_mm must be > 0 or None, got {self.min_bone_distance_mm}")
        if self.min_claimed_share is not None and not 0.0 < self.min_claimed_share <= 1.0:
            raise ValueError(f"min_claimed_share must be in (0, 1] or None, got {self.min_claimed_share}")
        if self.skeletal_component_mm3 is not None and not self.skeletal_component_mm3 > 0:
            raise ValueError(f"skeletal_component_mm3 must be > 0 or None, got {self.skeletal_component_mm3}")
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.min_area_mm2 < 0:
            raise ValueError(f"min_area_mm2 must be >= 0, got {self.min_area_mm2}")
        w = self.weight_thresholds_hu
        if len(w) != 4 or any(b <= a for a, b in zip(w, w[1:])):
            raise ValueError(f"weight_thresholds_hu must be 4 increasing HU values, got {w}")
        if self.reference_thickness_mm <= 0:
            raise ValueError("reference_thickness_mm must be > 0")

    def for_reference_labels(self) -> AgatstonConfig:
        """This convention with the model-mode lesion rules off (skeletal check, claim rule, bone distance,
        cardiac levels): reference labels (COCA ROIs, phantom truth) are scored as they are drawn."""
        return dataclasses.replace(self, skeletal_component_mm3=None, min_claimed_share=None,
                                   min_bone_distance_mm=None, cardiac_levels=False)

    @property
    def juxta_skeletal_rule(self) -> bool:
        """Whether lesions beside bone are excluded (needs the skeletal check's notion of bone)."""
        return self.min_bone_distance_mm is not None and self.skeletal_component_mm3 is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the report."""
        d = dataclasses.asdict(self)
        d["weight_thresholds_hu"] = list(self.weight_thresholds_hu)
        return d


@dataclass(frozen=True)
class EligibilityConfig:
    """Which series the engine scores. A series outside these bounds is rejected with a reason.

    Attributes:
        max_gantry_tilt_deg: axial means the slice normal is within this angle of the patient z axis.
        min_slices: series shorter than this cannot cover the heart.
        max_slice_thickness_mm: Agatston is defined for thin (≤ 5 mm typical) reconstructions.
        min_slice_thickness_mm: below this, the series is a thin reconstruction and not a scoring series
            (still scored by default: 0 disables the check).
        increment_tolerance: relative tolerance of slice-increment regularity before a gap counts as a
            missing slice.
    """

    max_gantry_tilt_deg: float = 1.0
    min_slices: int = 8
    max_slice_thickness_mm: float = 6.0
    min_slice_thickness_mm: float = 0.0
    increment_tolerance: float = 0.2


@dataclass(frozen=True)
class ScoreConfig:
    """Everything `cacstream score` needs, gathered in one typed object."""

    mode: Literal["model", "threshold"] = "model"
    agatston: AgatstonConfig = field(default_factory=AgatstonConfig)
    eligibility: EligibilityConfig = field(default_factory=EligibilityConfig)
    weights_dir: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    batch_size: int = 16
    decode_threads: int = 0  # 0 = one per core
    #: What the segmenter sees of a flagged slice: "patches" (the cores around the slice filter's
    #: flagged patches, engine/inference/regions.py), "components" (those and the cores their calcium
    #: components reach) or "slice" (the whole slice, as in the paper).
    segment_regions: Literal["patches", "components", "slice"] = "patches"
    #: The skeletal gate: with the candidate gate and the skeletal check on, calcium in a bone-sized 3D
    #: component (``agatston.skeletal_component_mm3``) cannot make the slice filter flag a patch or a
    #: slice; the scorer would exclude whatever the U-Net labelled there anyway. Decided once the series
    #: is complete (``pipeline/skeletal_gate.py``). Off: the filter is gated per slice only.
    skeletal_gate: bool = True
