"""Decide whether one series can be scored, and if not, say why in words a radiographer can act on.

Agatston scoring assumes a stack of parallel axial CT slices of one size, evenly spaced, without gaps
and of a known thickness. Each rule below protects one of those assumptions; the first rule that
fails names the rejection (codes in :mod:`cacstream.engine.series.errors`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cacstream.engine.config import EligibilityConfig
from cacstream.engine.series import errors as E
from cacstream.engine.series.grouping import derive_geometry, order_along_normal, slice_normal
from cacstream.engine.series.types import RejectedSeries, Series, SliceHeader

#: ImageType values that mark a projection scout rather than a slice.
LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM"})
#: Direction-cosine and relative pixel-spacing tolerance for "the same" geometry across slices
#: (DS strings carry at most 16 characters, so exact equality is too strict).
ORIENTATION_TOLERANCE = 1e-3
SPACING_RELATIVE_TOLERANCE = 1e-3
#: Beyond this angle from the patient z axis a plane is coronal/sagittal, not a tilted axial slice.
NOT_AXIAL_DEG = 45.0


def _files(headers: Sequence[SliceHeader]) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(h.path for h in headers))


def describe(uid: str, headers: Sequence[SliceHeader]) -> str:
    """'series "desc" (uid; N images in folder)' — how every message names a series."""
    files = _files(headers)
    folders = sorted({str(p.parent) for p in files})
    where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
    desc = headers[0].series_description if headers else ""
    name = f'"{desc}" ' if desc else ""
    derived = "; no SeriesInstanceUID in the files, UID derived from folder and SeriesNumber" if (
        headers and headers[0].series_uid_derived) else ""
    return f"series {name}({uid}; {len(headers)} images in {where}{derived})"


def _reject(uid: str, headers: Sequence[SliceHeader], reason: str, message: str) -> RejectedSeries:
    return RejectedSeries(uid=uid, reason=reason, message=f"{describe(uid, headers)}: {message}", files=_files(headers))


def _fmt_mm(values: Sequence[float], limit: int = 8) -> str:
    shown = ", ".join(f"{v:.2f}" for v in values[:limit])
    return shown + (f", … ({len(values) - limit} more)" if len(values) > limit else "")


def tilt_from_axial_deg(normal: np.ndarray) -> float:
    """Angle between the slice normal and the patient z axis (0° for an axial slice)."""
    return math.degrees(math.acos(min(1.0, abs(float(normal[2])))))


def check_series(uid: str, headers: Sequence[SliceHeader], config: EligibilityConfig = EligibilityConfig()) -> Series | RejectedSeries:
    """A :class:`Series` ordered along its normal with its geometry, or the :class:`RejectedSeries` saying why not."""
    if not headers:
        return RejectedSeries(uid=uid, reason=E.TOO_FEW_SLICES, message=f"series {uid}: no images")
    modalities = sorted({h.modality or "unknown" for h in headers})
    if modalities != ["CT"]:
        return _reject(uid, headers, E.NOT_CT, f"modality is {'/'.join(modalities)}, not CT; only CT series are scored")
    scouts = [h for h in headers if LOCALIZER_TYPES & {t.strip().upper() for t in h.image_type}]
    if scouts:
        image_type = "\\".join(scouts[0].image_type)
        return _reject(uid, headers, E.LOCALIZER,
                       f"is a localizer/scout (ImageType {image_type}), not a stack of axial slices")

    missing = [h for h in headers if h.position_mm is None or h.orientation is None or h.pixel_spacing_mm is None]
    if missing:
        h = missing[0]
        what = [k for k, v in (("ImagePositionPatient", h.position_mm), ("ImageOrientationPatient", h.orientation),
                               ("PixelSpacing", h.pixel_spacing_mm)) if v is None]
        return _reject(uid, headers, E.MISSING_GEOMETRY,
                       f"{len(missing)} image(s) lack {', '.join(what)} (first: {h.path}"
                       f"{'' if h.frame is None else f' frame {h.frame}'}); slices cannot be placed in space")

    sizes = sorted({(h.rows, h.columns) for h in headers})
    if len(sizes) > 1:
        return _reject(uid, headers, E.MIXED_SIZES,
                       f"images have different sizes ({', '.join(f'{r}×{c}' for r, c in sizes)}); "
                       f"the series mixes reconstructions")

    ref = headers[0]
    o_ref = np.asarray(ref.orientation, dtype=np.float64)
    s_ref = np.asarray(ref.pixel_spacing_mm, dtype=np.float64)
    for h in headers[1:]:
        if np.max(np.abs(np.asarray(h.orientation) - o_ref)) > ORIENTATION_TOLERANCE:
            return _reject(uid, headers, E.INCONSISTENT_GEOMETRY,
                           f"image orientation differs between {ref.path.name} {tuple(ref.orientation)} and "
                           f"{h.path.name} {tuple(h.orientation)}")
        if np.max(np.abs(np.asarray(h.pixel_spacing_mm) - s_ref) / s_ref) > SPACING_RELATIVE_TOLERANCE:
            return _reject(uid, headers, E.INCONSISTENT_GEOMETRY,
                           f"pixel spacing differs between {ref.path.name} {tuple(ref.pixel_spacing_mm)} mm and "
                           f"{h.path.name} {tuple(h.pixel_spacing_mm)} mm")
    try:
        normal = slice_normal(ref.orientation)  # type: ignore[arg-type]
    except ValueError:
        return _reject(uid, headers, E.MISSING_GEOMETRY,
                       f"ImageOrientationPatient {tuple(ref.orientation or ())} is not a valid pair of directions")

    tilt = tilt_from_axial_deg(normal)
    if tilt > NOT_AXIAL_DEG:
        return _reject(uid, headers, E.NOT_AXIAL,
                       f"slices are not axial (normal {tilt:.0f}° from the patient's head-feet axis: a coronal or "
                       f"sagittal reconstruction or a scout); score the axial series")
    if tilt > config.max_gantry_tilt_deg:
        return _reject(uid, headers, E.GANTRY_TILT,
                       f"slices are tilted {tilt:.1f}° from axial (gantry tilt; at most {config.max_gantry_tilt_deg}° "
                       f"allowed); reconstruct without tilt")
    tilted = [h for h in headers if h.gantry_tilt_deg is not None and abs(h.gantry_tilt_deg) > config.max_gantry_tilt_deg]
    if tilted:
        return _reject(uid, headers, E.GANTRY_TILT,
                       f"GantryDetectorTilt is {tilted[0].gantry_tilt_deg}° (at most {config.max_gantry_tilt_deg}° "
                       f"allowed); reconstruct without tilt")

    if len(headers) < config.min_slices:
        return _reject(uid, headers, E.TOO_FEW_SLICES,
                       f"only {len(headers)} slice(s); at least {config.min_slices} are needed to cover the heart "
                       f"(incomplete transfer, or not a scoring series)")

    ordered, normal, z = order_along_normal(headers)
    geometry = derive_geometry(ordered, normal, z)
    dz = np.diff(z)
    inc = geometry.slice_increment_mm
    same = np.flatnonzero(np.abs(dz) <= max(1e-3, 0.01 * abs(inc)))
    if same.size:
        pairs = [f"{ordered[i].path.name} and {ordered[i + 1].path.name} at {z[i]:.2f} mm" for i in same[:3]]
        return _reject(uid, headers, E.DUPLICATE_POSITIONS,
                       f"{same.size} pair(s) of different images share a slice position ({'; '.join(pairs)}); the "
                       f"series holds several phases or reconstructions — export one")
    if inc <= 0:
        return _reject(uid, headers, E.INCONSISTENT_GEOMETRY, "slice positions do not advance along the normal")

    # Slices must stack along their normal: the in-plane part of every position must agree.
    pos = np.array([h.position_mm for h in ordered], dtype=np.float64)
    in_plane = pos - np.outer(pos @ normal, normal)
    drift = float(np.max(np.linalg.norm(in_plane - in_plane[0], axis=1)))
    if drift > max(geometry.pixel_spacing_mm):
        return _reject(uid, headers, E.INCONSISTENT_GEOMETRY,
                       f"slice positions drift {drift:.2f} mm sideways across the stack (more than one pixel); the "
                       f"slices are not stacked along their normal (sheared or tilted acquisition)")

    t = geometry.slice_thickness_mm
    if t > config.max_slice_thickness_mm or (config.min_slice_thickness_mm > 0 and t < config.min_slice_thickness_mm):
        return _reject(uid, headers, E.SLICE_THICKNESS,
                       f"slice thickness {t:g} mm is outside the scoring range "
                       f"[{config.min_slice_thickness_mm:g}, {config.max_slice_thickness_mm:g}] mm")

    rejection = _check_gaps(uid, ordered, z, inc, config)
    if rejection is not None:
        return rejection
    return Series(uid=uid, slices=tuple(ordered), geometry=geometry)


def _check_gaps(uid: str, ordered: Sequence[SliceHeader], z: np.ndarray, inc: float,
                config: EligibilityConfig) -> RejectedSeries | None:
    """Every step must be one increment (± tolerance). A step of k increments (k ≥ 2) means k−1 missing
    slices, named by their expected positions; any other step is irregular spacing."""
    tol = config.increment_tolerance
    missing: list[float] = []
    irregular: list[tuple[int, float]] = []
    for i, d in enumerate(np.diff(z)):
        r = float(d) / inc
        if abs(r - 1.0) <= tol:
            continue
        k = round(r)
        if k >= 2 and abs(r - k) <= tol:
            missing.extend(float(z[i] + j * inc) for j in range(1, k))
        else:
            irregular.append((i, float(d)))
    if missing:
        return _reject(uid, ordered, E.MISSING_SLICES,
                       f"{len(missing)} slice(s) missing in the middle of the stack at z = {_fmt_mm(missing)} mm "
                       f"(increment {inc:g} mm); re-send the complete series")
    if irregular:
        i, d = irregular[0]
        return _reject(uid, ordered, E.IRREGULAR_SPACING,
                       f"slice spacing is irregular ({len(irregular)} step(s) off the {inc:g} mm increment by more than "
                       f"{tol:.0%}; first: {d:.2f} mm between {ordered[i].path.name} and {ordered[i + 1].path.name})")
    return None
