"""Group slice headers into series and order them along the slice normal; derive the geometry.

Why along the normal: file names and InstanceNumber are assigned by whatever exported the files and are
not reliable (reversed numbering, renamed files, several reconstructions); ImagePositionPatient
projected on the normal of ImageOrientationPatient is the slice's true place in the stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from cacstream.engine.series.types import Geometry, SliceHeader


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal ``row × column`` of an ImageOrientationPatient (6 direction cosines).

    Raises ValueError when the row and column directions are (nearly) parallel or zero."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    n = np.cross(row, col)
    norm = float(np.linalg.norm(n))
    if norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient {tuple(orientation)} has no valid normal")
    return n / norm


def group_by_series(headers: Iterable[SliceHeader]) -> dict[str, list[SliceHeader]]:
    """SeriesInstanceUID → its slices, in first-seen order (a folder may hold several series)."""
    groups: dict[str, list[SliceHeader]] = {}
    for h in headers:
        groups.setdefault(h.series_instance_uid, []).append(h)
    return groups


def project_on_normal(headers: Sequence[SliceHeader], normal: np.ndarray) -> np.ndarray:
    """Each slice's ImagePositionPatient · normal (mm). All positions must be present."""
    pos = np.array([h.position_mm for h in headers], dtype=np.float64).reshape(len(headers), 3)
    return pos @ normal


def order_along_normal(headers: Sequence[SliceHeader]) -> tuple[list[SliceHeader], np.ndarray, np.ndarray]:
    """Slices sorted by increasing position along the normal of the first slice's orientation.

    Returns ``(ordered, normal, z)`` with ``z[i]`` the projection of ``ordered[i]``. Ties (duplicate
    positions) keep a deterministic order (by SOP instance and frame) so results never depend on the
    order in which files were found. Requires every slice to have a position and orientation."""
    if not headers:
        raise ValueError("no slices to order")
    normal = slice_normal(headers[0].orientation or ())
    z = project_on_normal(headers, normal)
    keys = [(float(z[i]), headers[i].sop_instance_uid, -1 if headers[i].frame is None else headers[i].frame)
            for i in range(len(headers))]
    order = sorted(range(len(headers)), key=lambda i: keys[i])
    return [headers[i] for i in order], normal, z[order]


def median_increment(z: np.ndarray) -> float | None:
    """Median spacing between consecutive slice centres (None for fewer than two slices)."""
    if len(z) < 2:
        return None
    return float(np.median(np.diff(np.asarray(z, dtype=np.float64))))


def derive_geometry(ordered: Sequence[SliceHeader], normal: np.ndarray, z: np.ndarray) -> Geometry:
    """Geometry of an ordered series (rows, columns and pixel spacing from the first slice).

    Slice thickness is the median SliceThickness; when no slice states it, the slice increment stands in.
    The increment is the median spacing of the projected positions; for a single slice it is the
    thickness (or 0 when neither is known)."""
    first = ordered[0]
    if first.pixel_spacing_mm is None:
        raise ValueError("the first slice has no PixelSpacing")
    thicknesses = [h.slice_thickness_mm for h in ordered if h.slice_thickness_mm is not None and h.slice_thickness_mm > 0]
    increment = median_increment(z)
    thickness = float(np.median(thicknesses)) if thicknesses else None
    if increment is None:
        increment = thickness if thickness is not None else 0.0
    if thickness is None:
        thickness = increment
    return Geometry(
        rows=first.rows,
        columns=first.columns,
        pixel_spacing_mm=(float(first.pixel_spacing_mm[0]), float(first.pixel_spacing_mm[1])),
        slice_thickness_mm=float(thickness),
        slice_increment_mm=float(increment),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        z_mm=tuple(float(v) for v in z),
    )
