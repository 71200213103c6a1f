"""The heart's levels: coronary calcium lies between the lung apices and the lung bases.

Why: a chest CT runs from the neck to the upper abdomen, and the phantom-trained U-Net puts calcium of
both in an artery. On the real COCA non-gated scans almost every counted lesion lay outside the heart:
splenic-artery, abdominal-wall and bowel-wall calcium below the lungs' bases, thoracic-inlet and neck
calcium above their apices (docs/models.md, "The heart's levels"). The heart lies inside the thorax,
well below the lung apices and above the lowest part of the lungs, which reach further down behind it
(the costophrenic recesses). Those two landmarks are large air volumes a CT shows unmistakably, so no
model is needed to find them.

The rule, in model mode: from the lungs' cross-section per slice, the *cardiac levels* run from
:data:`BASE_MARGIN_MM` below the lowest slice whose lung area is at least :data:`BASE_FRACTION` of the
largest, up to :data:`APEX_OFFSET_MM` below the highest slice whose lung area is at least
:data:`APEX_FRACTION` of it. A lesion outside them is excluded and listed with the reason
``outside_cardiac_levels``. Each bound applies only when the lungs are seen to end inside the scan on
that side (a scan that starts mid-chest keeps its top), and the rule applies only when the lungs are in
the field of view whole (at least :data:`MIN_LUNG_CM3`; a cardiac field of view cuts them and never
shows the neck or abdomen anyway).

How: each slice is sampled every 4th pixel in both directions (a 512² slice → 128², the centre pixel of
each 4 × 4 block: lungs are tens of centimetres across and their parenchyma is hundreds of HU below
the threshold, so no averaging is needed), air is HU below :data:`AIR_HU`, and air connected to the
image border is outside the body; what is left is the slice's *internal air*,
kept per slice (2 KB packed) so the stream can decide at completion. The lungs are the large 3D
components of the internal air (trachea and bronchi join them); bowel and stomach gas are separate,
smaller components and do not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.ndimage as ndi

#: Why a lesion was excluded, in the report.
WINDOW_REASON = "outside_cardiac_levels"
#: In-plane sampling step: lungs are tens of centimetres across, 4 pixels (about 3 mm) lose nothing.
POOL = 4
#: Air: lung parenchyma is about -850 HU, fat -100; a pixel below -400 HU is air.
AIR_HU = -400.0
#: Both lungs of an adult at inspiration hold 4-6 litres; a field of view that shows less cuts them.
MIN_LUNG_CM3 = 1500.0
#: Another internal-air component counts as lung when it is at least this share of the largest (the
#: two lungs separate when the trachea is out of view); bowel gas is far smaller.
LUNG_SHARE_OF_LARGEST = 0.2
#: The lowest cardiac level: this far below the lowest slice with at least BASE_FRACTION of the
#: largest lung area. The heart rests on the diaphragm where the lungs still fill much of the chest.
BASE_FRACTION = 0.25
BASE_MARGIN_MM = 15.0
#: The highest cardiac level: this far below the highest slice with at least APEX_FRACTION of the
#: largest lung area. The aortic root lies about 10 cm below the apices (phantoms 104-128 mm, COCA
#: non-gated about 100 mm), so 50 mm only removes the neck and the thoracic inlet.
APEX_FRACTION = 0.10
APEX_OFFSET_MM = 50.0


def internal_air(hu2d: np.ndarray) -> np.ndarray:
    """Packed (np.packbits, row-major, shape first) sampled mask of the air inside the body in one
    plane: what the levels need of a slice, kept by the stream as each slice lands."""
    return pack(internal_air_mask(hu2d))


def internal_air_mask(hu2d: np.ndarray) -> np.ndarray:
    """Sampled (rows // POOL, columns // POOL) bool mask of the air not connected to the image border."""
    h, w = hu2d.shape
    c = POOL // 2
    air = np.asarray(hu2d)[c: (h // POOL) * POOL: POOL, c: (w // POOL) * POOL: POOL] < AIR_HU
    lab, n = ndi.label(air)  # 4-connected: a thin wall separates
    if n == 0:
        return air
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    outside = np.zeros(n + 1, dtype=bool)
    outside[border] = True
    outside[0] = True
    return ~outside[lab]


def pack(mask: np.ndarray) -> np.ndarray:
    """A bool plane as bytes (8 pixels each), with its shape in the first two uint16 values."""
    head = np.array(mask.shape, dtype=np.uint16).view(np.uint8)
    return np.concatenate([head, np.packbits(mask, axis=None)])


def unpack(packed: np.ndarray) -> np.ndarray:
    h, w = (int(v) for v in packed[:4].view(np.uint16))
    return np.unpackbits(packed[4:], count=h * w).astype(bool).reshape(h, w)


@dataclass(frozen=True)
class CardiacLevels:
    """The levels (mm, on the series' own slice axis ``z_mm``) coronary calcium can occupy, and why.

    ``inferior_mm`` / ``superior_mm``: the bounds towards the feet and towards the head, None where
    that side is open (the lungs do not end inside the scan there, or the rule does not apply).
    ``head``: +1 when ``z_mm`` grows towards the head (the slice normal points superior, the usual
    axial orientation), -1 when it grows towards the feet. ``note`` says in words what was found."""

    inferior_mm: float | None
    superior_mm: float | None
    lung_cm3: float
    note: str
    head: int = 1

    @property
    def applies(self) -> bool:
        return self.inferior_mm is not None or self.superior_mm is not None

    def outside(self, z_mm: float) -> bool:
        """Whether a slice at ``z_mm`` lies below the inferior or above the superior bound."""
        s = self.head * z_mm
        return ((self.inferior_mm is not None and s < self.head * self.inferior_mm)
                or (self.superior_mm is not None and s > self.head * self.superior_mm))

    def to_dict(self) -> dict[str, object]:
        return {"inferior_mm": self.inferior_mm, "superior_mm": self.superior_mm,
                "lung_cm3": round(self.lung_cm3, 1), "note": self.note}


def lung_areas_cm2(air: Sequence[np.ndarray], pixel_spacing_mm: tuple[float, float],
                   increment_mm: float) -> tuple[np.ndarray, float]:
    """(lung cross-section per slice in cm², lung volume in cm³) from each slice's sampled internal air
    (bool planes in slice order): the large 3D components of it, 6-connected."""
    stack = np.stack([np.asarray(a, dtype=bool) for a in air])
    lab, n = ndi.label(stack)
    if n == 0:
        return np.zeros(len(stack)), 0.0
    px_cm2 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) * POOL * POOL / 100.0
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = sizes >= LUNG_SHARE_OF_LARGEST * sizes.max()
    lung = keep[lab]
    areas = lung.reshape(len(stack), -1).sum(axis=1) * px_cm2
    return areas, float(areas.sum() * float(increment_mm) / 10.0)


def cardiac_levels(air: Sequence[np.ndarray], z_mm: Sequence[float], pixel_spacing_mm: tuple[float, float],
                   increment_mm: float, normal: Sequence[float] = (0.0, 0.0, 1.0)) -> CardiacLevels:
    """The cardiac levels of a series from its slices' sampled internal air (bool planes or packed), in
    slice order. ``normal``: the slice normal (``Geometry.normal``); its patient-z component says which
    way ``z_mm`` runs (DICOM patient +z is the head)."""
    head = -1 if float(normal[2]) < 0 else 1
    planes = [unpack(a) if a.dtype == np.uint8 else a for a in air]
    if not planes:
        return CardiacLevels(None, None, 0.0, "no slices", head)
    px_cm3 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) * POOL * POOL * float(increment_mm) / 1000.0
    all_air = float(sum(int(p.sum()) for p in planes)) * px_cm3
    if all_air < MIN_LUNG_CM3:  # not even all the internal air together: skip the 3D labelling
        return CardiacLevels(None, None, all_air, f"not applied: {all_air:.0f} cm³ of air inside the body "
                                                  f"(< {MIN_LUNG_CM3:.0f}: the field of view cuts the lungs)", head)
    areas, volume = lung_areas_cm2(planes, pixel_spacing_mm, increment_mm)
    if volume < MIN_LUNG_CM3:
        return CardiacLevels(None, None, volume, f"not applied: {volume:.0f} cm³ of lung in view "
                                                 f"(< {MIN_LUNG_CM3:.0f}: the field of view cuts the lungs)", head)
    up = head * np.asarray(z_mm, dtype=np.float64)  # position towards the head
    order = np.argsort(up)
    ua, aa = up[order], areas[order]
    top_area = aa.max()
    base = np.flatnonzero(aa >= BASE_FRACTION * top_area)
    apex = np.flatnonzero(aa >= APEX_FRACTION * top_area)
    low = high = None  # towards the head
    parts = []
    if base[0] > 0:  # a slice below with less lung: the bases end inside the scan
        low = float(ua[base[0]] - BASE_MARGIN_MM)
        parts.append(f"lung bases end at {head * ua[base[0]]:.1f} mm")
    else:
        parts.append("lung bases not in the scan")
    if apex[-1] < len(ua) - 1:
        high = float(ua[apex[-1]] - APEX_OFFSET_MM)
        parts.append(f"lung apices at {head * ua[apex[-1]]:.1f} mm")
    else:
        parts.append("lung apices not in the scan")
    if low is not None and high is not None and high <= low:  # implausible anatomy: keep everything
        return CardiacLevels(None, None, volume, "not applied: lung apices and bases too close ("
                             + ", ".join(parts) + ")", head)
    return CardiacLevels(None if low is None else head * low, None if high is None else head * high,
                         volume, ", ".join(parts), head)


def cardiac_levels_of_volume(hu: np.ndarray, geometry: object) -> CardiacLevels:
    """The cardiac levels of a whole volume (slices in order) with its :class:`Geometry`."""
    g: Any = geometry
    return cardiac_levels([internal_air_mask(np.asarray(hu[i])) for i in range(len(hu))], g.z_mm,
                          g.pixel_spacing_mm, g.slice_increment_mm, g.normal)


def outside_slices(levels: CardiacLevels, z_mm: Sequence[float]) -> list[int]:
    """Indices of the slices outside the cardiac levels."""
    return [i for i, z in enumerate(z_mm) if levels.outside(float(z))]


def describe(levels: CardiacLevels) -> str:
    """The levels in a few words (tables, logs)."""
    if not levels.applies:
        return levels.note
    lo = "open" if levels.inferior_mm is None else f"{levels.inferior_mm:.1f}"
    hi = "open" if levels.superior_mm is None else f"{levels.superior_mm:.1f}"
    return f"from {lo} (feet) to {hi} mm (head)"


__all__ = ["WINDOW_REASON", "CardiacLevels", "cardiac_levels", "cardiac_levels_of_volume", "internal_air", "internal_air_mask",
           "lung_areas_cm2", "outside_slices", "pack", "unpack", "describe"]
