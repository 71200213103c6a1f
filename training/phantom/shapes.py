"""Analytic shapes in patient millimetres (DICOM LPS: x → patient left, y → posterior, z → head).

A scene is an ordered list of shapes, painted back to front; each shape carries nested layers
(e.g. skin → subcutaneous fat; cortical bone → marrow; pericardium → epicardial fat → myocardium)
that share one distance computation. ``paint_slice`` samples a scene onto one reconstructed slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cacstream.training.phantom import raster


@dataclass(frozen=True)
class Layer:
    """One material of a shape, inside distance ``-offset_mm`` of its surface.

    offset_mm: 0 is the surface itself; positive moves the boundary inwards (a marrow cavity inside
        a cortex), negative outwards (fat around an organ).
    hu: mean attenuation of the material (before kVp scaling of dense materials).
    tex_fine / tex_coarse: amplitude (HU, 1 σ) of the fine (~1 mm) and coarse (~5 mm) anatomical
        texture added to the material (trabecular bone, fat septa, lung parenchyma).
    wobble_mm: amplitude of a smooth random 3D modulation of the offset (uneven fat layers).
    dense: the material is bone / calcium (its HU scales with tube voltage).
    """

    offset_mm: float
    hu: float
    tex_fine: float = 0.0
    tex_coarse: float = 0.0
    wobble_mm: float = 0.0
    dense: bool = False


@dataclass
class Shape:
    """Base of the three shape kinds; ``name`` is for debugging and the truth file."""

    name: str
    layers: tuple[Layer, ...]
    mask_mode: int = 0  # 1 = paint only over lung-like pixels
    grad_y: float = 0.0  # HU per mm along y (posterior), for the dependent lung gradient
    grad_y_ref: float = 0.0  # y (mm) where that gradient adds nothing
    coarse_step: int = 1  # evaluate the distance every n pixels and interpolate (smooth, large shapes)

    @property
    def reach(self) -> float:
        """How far outside the zero surface the outermost layer extends (mm)."""
        return max(0.0, -min(layer.offset_mm - abs(layer.wobble_mm) for layer in self.layers))

    def z_range(self) -> tuple[float, float]:
        raise NotImplementedError

    def xy_box(self, zlo: float, zhi: float) -> tuple[float, float, float, float] | None:
        """(xmin, xmax, ymin, ymax) in mm covering the shape between zlo and zhi, or None."""
        raise NotImplementedError

    def distance(self, out: np.ndarray, grid: "SliceGrid", r0: int, c0: int, zs: np.ndarray) -> None:
        raise NotImplementedError

    def distance_field(
        self, grid: "SliceGrid", r0: int, r1: int, c0: int, c1: int, zs: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Distances on the box for each sub-plane, their weights, and the coverage ramp width (mm)."""
        return _sampled(self, grid, r0, r1, c0, c1, zs), weights, grid.ps


@dataclass
class Blob(Shape):
    """Smooth union of rotated ellipsoids (heart chambers, liver dome, stomach)."""

    ellipsoids: np.ndarray = field(default_factory=lambda: np.zeros((0, 15)))
    smooth_mm: float = 0.0
    coarse_step: int = 3

    def _extents(self) -> np.ndarray:
        cached = getattr(self, "_extents_cache", None)
        if cached is None:
            e = self.ellipsoids
            rot = e[:, 3:12].reshape(-1, 3, 3)  # rows: local axes in world coordinates
            radii = e[:, 12:15]
            # half-extent along world axis w: sqrt(sum_j (rot[j, w] * r_j)^2)
            cached = np.sqrt(np.einsum("njw,nj->nw", rot**2, radii**2))
            self._extents_cache = cached
        return cached

    def z_range(self) -> tuple[float, float]:
        ext = self._extents()
        r = self.reach + self.smooth_mm
        return float((self.ellipsoids[:, 2] - ext[:, 2]).min() - r), float(
            (self.ellipsoids[:, 2] + ext[:, 2]).max() + r
        )

    def xy_box(self, zlo, zhi):
        ext = self._extents()
        c = self.ellipsoids[:, :3]
        r = self.reach + self.smooth_mm
        keep = (c[:, 2] - ext[:, 2] - r <= zhi) & (c[:, 2] + ext[:, 2] + r >= zlo)
        if not keep.any():
            return None
        c, ext = c[keep], ext[keep]
        return (
            float((c[:, 0] - ext[:, 0]).min() - r),
            float((c[:, 0] + ext[:, 0]).max() + r),
            float((c[:, 1] - ext[:, 1]).min() - r),
            float((c[:, 1] + ext[:, 1]).max() + r),
        )

    def distance(self, out, grid, r0, c0, zs):
        raster.blob_distance(out, grid.x0, grid.y0, grid.ps, r0, c0, zs, self.ellipsoids, self.smooth_mm)


@dataclass
class Tubes(Shape):
    """Union of capsules (segments with radii): vessels, airways, ribs, vertebral processes."""

    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 8)))

    def _bounds(self) -> np.ndarray:
        """Per segment: zmin, zmax, xmin, xmax, ymin, ymax including radius and reach (cached)."""
        cached = getattr(self, "_bounds_cache", None)
        if cached is None:
            s = self.segments
            r = np.maximum(s[:, 6], s[:, 7]) + self.reach
            cached = np.stack([np.minimum(s[:, 2], s[:, 5]) - r, np.maximum(s[:, 2], s[:, 5]) + r,
                               np.minimum(s[:, 0], s[:, 3]) - r, np.maximum(s[:, 0], s[:, 3]) + r,
                               np.minimum(s[:, 1], s[:, 4]) - r, np.maximum(s[:, 1], s[:, 4]) + r], axis=1)
            self._bounds_cache = cached
        return cached

    def z_range(self):
        b = self._bounds()
        return float(b[:, 0].min()), float(b[:, 1].max())

    def _keep(self, zlo: float, zhi: float) -> np.ndarray:
        b = self._bounds()
        return (b[:, 0] <= zhi) & (b[:, 1] >= zlo)

    def xy_box(self, zlo, zhi):
        keep = self._keep(zlo, zhi)
        if not keep.any():
            return None
        b = self._bounds()[keep]
        return float(b[:, 2].min()), float(b[:, 3].max()), float(b[:, 4].min()), float(b[:, 5].max())

    def distance(self, out, grid, r0, c0, zs):
        s = np.ascontiguousarray(self.segments[self._keep(float(zs.min()), float(zs.max()))])
        raster.segments_distance(out, grid.x0, grid.y0, grid.ps, r0, c0, zs, s, self.reach + 2 * grid.ps)


@dataclass
class Extruded(Shape):
    """Axial superellipse interpolated along z from a table (body outline, lungs, vertebral bodies).

    table rows: z, cx, cy, a, b_anterior, b_posterior, exponent (z increasing). Outside
    [z_lo, z_hi] the shape ends with flat caps.
    """

    table: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    z_lo: float = -np.inf
    z_hi: float = np.inf
    coarse_step: int = 4

    def z_range(self):
        lo = max(self.z_lo, float(self.table[0, 0]) if np.isinf(self.z_lo) else self.z_lo)
        hi = min(self.z_hi, float(self.table[-1, 0]) if np.isinf(self.z_hi) else self.z_hi)
        return lo - self.reach, hi + self.reach

    def plane_params(self, zs: np.ndarray) -> np.ndarray:
        t = self.table
        out = np.empty((len(zs), 7), dtype=np.float64)
        for col in range(6):
            out[:, col] = np.interp(zs, t[:, 0], t[:, col + 1])
        out[:, 6] = np.maximum(self.z_lo - zs, zs - self.z_hi)
        return out

    def xy_box(self, zlo, zhi):
        zs = np.linspace(zlo, zhi, 3)
        p = self.plane_params(zs)
        r = self.reach
        return (
            float((p[:, 0] - p[:, 2]).min() - r),
            float((p[:, 0] + p[:, 2]).max() + r),
            float((p[:, 1] - p[:, 3]).min() - r),
            float((p[:, 1] + p[:, 4]).max() + r),
        )

    def distance(self, out, grid, r0, c0, zs):
        raster.extruded_distance(out, grid.x0, grid.y0, grid.ps, r0, c0, self.plane_params(zs))

    def distance_field(self, grid, r0, r1, c0, c1, zs, weights):
        """One plane when the slab holds no cap: the cross-section's drift across the slab widens
        the coverage ramp instead (same partial volume, a fraction of the cost)."""
        zlo, zhi = float(zs.min()), float(zs.max())
        if len(zs) > 1 and (self.z_lo < zhi + 1.0 and self.z_lo > zlo - 1.0 or self.z_hi < zhi + 1.0 and self.z_hi > zlo - 1.0):
            return _sampled(self, grid, r0, r1, c0, c1, zs), weights, grid.ps
        zc = np.array([0.5 * (zlo + zhi)])
        if len(zs) > 1:
            span = float(zhi - zlo) * len(zs) / max(len(zs) - 1, 1)
            ends = self.plane_params(np.array([zc[0] - span / 2, zc[0] + span / 2]))
            drift = float(np.max(np.abs(ends[1, :5] - ends[0, :5])))
        else:
            drift = 0.0
        return _sampled(self, grid, r0, r1, c0, c1, zc), np.ones(1), float(np.hypot(grid.ps, drift))


@dataclass(frozen=True)
class SliceGrid:
    """In-plane sampling: pixel (r, c) has its centre at (x0 + c·ps, y0 + r·ps) mm."""

    x0: float
    y0: float
    ps: float
    rows: int
    cols: int

    def pixel_box(self, box: tuple[float, float, float, float], margin_px: int = 1) -> tuple[int, int, int, int] | None:
        """Pixel rows/cols [r0, r1) × [c0, c1) covering an mm box, clipped to the image."""
        xmin, xmax, ymin, ymax = box
        c0 = max(int(np.floor((xmin - self.x0) / self.ps)) - margin_px, 0)
        c1 = min(int(np.ceil((xmax - self.x0) / self.ps)) + margin_px + 1, self.cols)
        r0 = max(int(np.floor((ymin - self.y0) / self.ps)) - margin_px, 0)
        r1 = min(int(np.ceil((ymax - self.y0) / self.ps)) + margin_px + 1, self.rows)
        if r1 <= r0 or c1 <= c0:
            return None
        return r0, r1, c0, c1


def _sampled(shape: Shape, grid: "SliceGrid", r0: int, r1: int, c0: int, c1: int, zs: np.ndarray) -> np.ndarray:
    """Distance of ``shape`` on pixel box rows r0:r1, cols c0:c1 for each plane in zs."""
    h, w = r1 - r0, c1 - c0
    step = shape.coarse_step
    if step <= 1 or min(h, w) < 4 * step:
        out = np.empty((len(zs), h, w), dtype=np.float32)
        shape.distance(out, grid, r0, c0, zs)
        return out
    hc = (h - 1 + step - 1) // step + 1
    wc = (w - 1 + step - 1) // step + 1
    coarse_grid = SliceGrid(grid.x0 + c0 * grid.ps, grid.y0 + r0 * grid.ps, grid.ps * step, hc, wc)
    coarse = np.empty((len(zs), hc, wc), dtype=np.float32)
    shape.distance(coarse, coarse_grid, 0, 0, zs)
    out = np.empty((len(zs), h, w), dtype=np.float32)
    raster.upsample_bilinear(coarse, step, out)
    return out


def layer_arrays(layers: tuple[Layer, ...], dense_scale: float) -> tuple[np.ndarray, ...]:
    """Layer fields as the contiguous float64 arrays the Numba compositor takes."""
    off = np.array([l.offset_mm for l in layers], dtype=np.float64)
    val = np.array([l.hu * (dense_scale if l.dense else 1.0) for l in layers], dtype=np.float64)
    t1 = np.array([l.tex_fine for l in layers], dtype=np.float64)
    t2 = np.array([l.tex_coarse for l in layers], dtype=np.float64)
    mod = np.array([l.wobble_mm for l in layers], dtype=np.float64)
    return off, val, t1, t2, mod


def wobble_map(grid: SliceGrid, zc: float, waves: np.ndarray, step: int = 8) -> np.ndarray:
    """The smooth random 3D field of ``raster.modulation`` on this slice (coarse, interpolated)."""
    hc = (grid.rows - 1 + step - 1) // step + 1
    wc = (grid.cols - 1 + step - 1) // step + 1
    coarse = np.empty((1, hc, wc), dtype=np.float32)
    raster.modulation_grid(coarse[0], grid.x0, grid.y0, grid.ps * step, zc, waves)
    out = np.empty((1, grid.rows, grid.cols), dtype=np.float32)
    raster.upsample_bilinear(coarse, step, out)
    return out[0]


def paint_slice(
    img: np.ndarray,
    shapes: list[Shape],
    grid: SliceGrid,
    zs: np.ndarray,
    weights: np.ndarray,
    zc: float,
    tex_fine: np.ndarray,
    tex_coarse: np.ndarray,
    waves: np.ndarray,
    dense_scale: float = 1.0,
    point_sampling: bool = False,
    keep_distance: str | None = None,
) -> np.ndarray | None:
    """Paint ``shapes`` in order into ``img`` (one slice, HU). Returns the centre-plane distance
    map of the shape named ``keep_distance`` (full image, FAR outside its box), for motion masks."""
    zs = np.ascontiguousarray(zs, dtype=np.float64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    zlo, zhi = float(zs.min()), float(zs.max())
    wobble = wobble_map(grid, zc, waves)
    kept: np.ndarray | None = None
    for shape in shapes:
        s_lo, s_hi = shape.z_range()
        if s_hi < zlo or s_lo > zhi:
            continue
        box = shape.xy_box(zlo, zhi)
        if box is None:
            continue
        pb = grid.pixel_box(box)
        if pb is None:
            continue
        r0, r1, c0, c1 = pb
        dist, w_used, edge = shape.distance_field(grid, r0, r1, c0, c1, zs, weights)
        inv_edge = 1.0e9 if point_sampling else 1.0 / edge
        off, val, t1, t2, mod = layer_arrays(shape.layers, dense_scale)
        cy = shape.grad_y_ref
        raster.composite_layers(
            img, r0, c0, dist, w_used, off, val, t1, t2, mod, tex_fine, tex_coarse,
            wobble, grid.y0, grid.ps, inv_edge, shape.mask_mode, shape.grad_y, cy,
        )
        if keep_distance is not None and shape.name == keep_distance:
            kept = np.full(img.shape, raster.FAR, dtype=np.float32)
            kept[r0:r1, c0:c1] = dist[len(dist) // 2]
    return kept
