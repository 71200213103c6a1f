"""3D curves: smooth interpolation, resampling, local frames and capsule segments."""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline


def arc_length(poly: np.ndarray) -> np.ndarray:
    """Cumulative length (mm) along a polyline (n, 3), starting at 0."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(poly, axis=0), axis=1))])


def smooth_curve(control: np.ndarray, step_mm: float = 1.0) -> np.ndarray:
    """Cubic spline through control points (chord-length parametrised), sampled every ``step_mm``."""
    control = np.asarray(control, dtype=np.float64)
    s = arc_length(control)
    keep = np.concatenate([[True], np.diff(s) > 1e-6])
    control, s = control[keep], s[keep]
    if len(control) < 2:
        return control.copy()
    if len(control) == 2:
        n = max(2, int(np.ceil(s[-1] / step_mm)) + 1)
        t = np.linspace(0, 1, n)[:, None]
        return control[0] * (1 - t) + control[1] * t
    spline = CubicSpline(s, control, bc_type="natural")
    n = max(2, int(np.ceil(s[-1] / step_mm)) + 1)
    return spline(np.linspace(0, s[-1], n))


def resample(poly: np.ndarray, step_mm: float) -> np.ndarray:
    """Polyline resampled at (about) equal arc-length steps, end points kept."""
    s = arc_length(poly)
    n = max(2, int(np.ceil(s[-1] / step_mm)) + 1)
    t = np.linspace(0, s[-1], n)
    return np.stack([np.interp(t, s, poly[:, k]) for k in range(3)], axis=1)


def moving_average(poly: np.ndarray, half_window: int) -> np.ndarray:
    """Smooth a polyline, keeping its end points."""
    if half_window <= 0 or len(poly) < 3:
        return poly.copy()
    k = 2 * half_window + 1
    pad = np.concatenate([np.repeat(poly[:1], half_window, 0), poly, np.repeat(poly[-1:], half_window, 0)])
    kernel = np.ones(k) / k
    out = np.stack([np.convolve(pad[:, i], kernel, mode="valid") for i in range(3)], axis=1)
    out[0], out[-1] = poly[0], poly[-1]
    return out


def tangents(poly: np.ndarray) -> np.ndarray:
    """Unit tangents (n, 3) by central differences."""
    t = np.gradient(poly, axis=0)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)


def perpendicular_basis(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to unit vector t (and to each other)."""
    helper = np.array([0.0, 0.0, 1.0]) if abs(t[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    n1 = np.cross(t, helper)
    n1 /= np.linalg.norm(n1)
    n2 = np.cross(t, n1)
    return n1, n2


def capsules(poly: np.ndarray, radius: np.ndarray | float) -> np.ndarray:
    """Segments (n − 1, 8) [a, b, r_a, r_b] of a tube along a polyline."""
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(poly),))
    return np.concatenate([poly[:-1], poly[1:], r[:-1, None], r[1:, None]], axis=1)


def rotation_rows(axes: np.ndarray) -> np.ndarray:
    """World→local matrix whose rows are the given (3, 3) local axes, orthonormalised (Gram–Schmidt)."""
    a0 = axes[0] / np.linalg.norm(axes[0])
    a1 = axes[1] - a0 * (a0 @ axes[1])
    a1 /= np.linalg.norm(a1)
    a2 = np.cross(a0, a1)
    return np.stack([a0, a1, a2])


def ellipsoid_row(center: np.ndarray, rot_rows: np.ndarray, radii: tuple[float, float, float]) -> np.ndarray:
    """One row of a Blob's ellipsoid table: centre, world→local rotation rows, semi-axes."""
    return np.concatenate([np.asarray(center, float), np.asarray(rot_rows, float).ravel(), np.asarray(radii, float)])


def axis_aligned_row(center, radii) -> np.ndarray:
    return ellipsoid_row(np.asarray(center, float), np.eye(3), radii)
