"""From a drawn scene to reconstructed HU: slab sampling, cardiac motion, plaques, PSF, noise.

The image chain, in order (all linear until quantisation, so each part can be tracked separately):
1. paint the anatomy into each slab (partial volume over the slice thickness);
2. non-gated scans: average the heart region over the displacements of the exposure window;
3. add each plaque's exact partial-volume contribution frac·(ρ_plaque − tissue) — supersampled
   in-plane and in z, averaged over its motion samples;
4. blur with the kernel's PSF (plaque contributions blurred separately so the truth knows, per
   voxel, how many HU each plaque put there);
5. add correlated noise and quantise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from cacstream.training.phantom import raster, scanner
from cacstream.training.phantom.plaques import OTHER_CLASS, Plaque, xy_extent, z_extent
from cacstream.training.phantom.shapes import Shape, SliceGrid, paint_slice

#: Noise-free HU above which a voxel is dense (bone/cartilage/calcium): no soft tissue reaches it.
DENSE_BASE_HU = 95.0


@dataclass
class SliceMotion:
    """Per slice: heart-region shifts (pixels) and each artery's 3D displacement samples (mm)."""

    heart_shifts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (K, 2) int rows/cols, (K,)
    artery: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)  # (K, 3) mm, (K,)


def draw_motion(
    rng: np.random.Generator, n_slices: int, ps: float, moving: bool, gated: bool, scales: dict[str, float]
) -> SliceMotion:
    """Cardiac motion per slice. Non-gated: each slice catches a random phase (fast systole or
    slower diastole), the RCA moving up to ≈ 12 mm during the exposure. Gated: a quarter of the
    scans keep a little residual motion of the RCA/LCX."""
    m = SliceMotion(artery={a: [] for a in scales})
    amp = float(rng.uniform(6.0, 12.0))
    heart_amp = float(rng.uniform(2.5, 6.0))
    residual = gated and rng.random() < 0.25
    res_amp = float(rng.uniform(0.5, 2.0))
    for _ in range(n_slices):
        if moving:
            systole = rng.random() < 0.35
            e = float(rng.uniform(0.6, 1.0) if systole else rng.uniform(0.05, 0.45))
            d, w = scanner.motion_samples(rng, e * heart_amp, 5)
            m.heart_shifts.append((np.rint(d[:, :2] / ps).astype(np.int64)[:, ::-1], w))  # (dy, dx)
            for a, s in scales.items():
                m.artery[a].append(scanner.motion_samples(rng, e * amp * s, 7))
        else:
            m.heart_shifts.append((np.zeros((1, 2), np.int64), np.ones(1)))
            for a, s in scales.items():
                if residual and a in ("RCA", "LCX"):
                    m.artery[a].append(scanner.motion_samples(rng, res_amp * s, 3))
                else:
                    m.artery[a].append((np.zeros((1, 3)), np.ones(1)))
    return m


def apply_heart_motion(img: np.ndarray, heart_dist: np.ndarray, shifts: np.ndarray, weights: np.ndarray) -> None:
    """Blend the heart region (inside its surface + 15 mm, feathered) with its shifted copies."""
    if len(weights) <= 1 and not shifts.any():
        return
    mask = np.clip((15.0 - heart_dist) / 10.0, 0.0, 1.0).astype(np.float32)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return
    pad = int(np.abs(shifts).max()) + 1
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, img.shape[0])
    c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, img.shape[1])
    region = img[r0:r1, c0:c1]
    moved = np.zeros_like(region)
    for (dy, dx), w in zip(shifts, weights):
        moved += np.float32(w) * np.roll(region, (int(dy), int(dx)), axis=(0, 1))
    m = mask[r0:r1, c0:c1]
    img[r0:r1, c0:c1] = region * (1.0 - m) + moved * m


@dataclass
class Patch:
    """A plaque's (sharp, later blurred) HU contribution on a pixel box of one slice."""

    slice_index: int
    r0: int
    c0: int
    values: np.ndarray
    source: int  # 1..4 artery label, OTHER_CLASS otherwise


def plaque_fraction(
    p: Plaque, grid: SliceGrid, zc: float, thickness: float, disps: np.ndarray, dweights: np.ndarray,
    margin_px: int, ideal: bool,
) -> tuple[int, int, np.ndarray] | None:
    """Volume fraction of plaque ``p`` in the slab [zc ± T/2] on a padded pixel box, or None."""
    reach = float(np.abs(disps).max()) if len(disps) else 0.0
    zlo, zhi = z_extent(p, reach)
    if ideal:
        if not zlo <= zc <= zhi:
            return None
    elif zhi < zc - thickness / 2 or zlo > zc + thickness / 2:
        return None
    ex, ey = xy_extent(p)
    box = grid.pixel_box((p.center[0] - ex - reach, p.center[0] + ex + reach, p.center[1] - ey - reach, p.center[1] + ey + reach),
                         margin_px=margin_px)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    if ideal:
        zs, zw, q = np.array([zc]), np.ones(1), 1
    else:
        nz = max(4, int(math.ceil(thickness / 0.25)))
        zs = zc + thickness * ((np.arange(nz) + 0.5) / nz - 0.5)
        zw = np.full(nz, 1.0 / nz)
        q = int(np.clip(math.ceil(grid.ps / 0.16), 2, 5))
    frac = np.empty((r1 - r0, c1 - c0), dtype=np.float64)
    if p.shape == "cylinder_z":
        raster.cylinder_fraction(frac, grid.x0, grid.y0, grid.ps, r0, c0, zs, zw, q, p.center[0], p.center[1],
                                 p.radii[0], p.center[2] - p.radii[2], p.center[2] + p.radii[2])
        return (r0, c0, frac) if frac.any() else None
    raster.ellipsoid_fraction(
        frac, grid.x0, grid.y0, grid.ps, r0, c0, zs, zw, q, np.asarray(p.center, float),
        np.asarray(p.rotation, float), np.asarray(p.radii, float), np.ascontiguousarray(disps, float),
        np.ascontiguousarray(dweights, float),
    )
    if not frac.any():
        return None
    return r0, c0, frac


def _texture_slices(rng: np.random.Generator, n: int, rows: int, cols: int, ps: float, inc: float):
    """Fine (independent per slice) and coarse (AR(1) along z) anatomical texture fields."""
    fine_base = scanner.texture_field(rng, rows, cols, ps, 0.7)
    coarse_base = scanner.texture_field(rng, rows, cols, ps, 3.5)
    rho = math.exp(-inc / 8.0)
    coarse = None
    for _ in range(n):
        sh = (int(rng.integers(rows)), int(rng.integers(cols)))
        fine = np.roll(fine_base, sh, axis=(0, 1))
        if rng.random() < 0.5:
            fine = fine[::-1]
        new = np.roll(coarse_base, (int(rng.integers(rows)), int(rng.integers(cols))), axis=(0, 1))
        coarse = new if coarse is None else (rho * coarse + math.sqrt(1 - rho * rho) * new).astype(np.float32)
        yield np.ascontiguousarray(fine), coarse


@dataclass
class Rendered:
    """Noise-free image parts and the per-voxel truth sources."""

    noise_free: np.ndarray  # blurred base + plaques (float32)
    dense_base: np.ndarray  # bool: blurred base (no coronary plaque) ≥ 95 HU
    source_hu: np.ndarray  # float32: largest blurred plaque contribution
    source_class: np.ndarray  # uint8: its class (1..4, OTHER_CLASS)


def render_volume(
    shapes: list[Shape],
    plaques: list[Plaque],
    grid: SliceGrid,
    z_centres: np.ndarray,
    thickness: float,
    increment: float,
    *,
    dense_scale: float,
    psf_sigma_mm: float,
    blur: bool,
    ideal: bool,
    motion: SliceMotion | None,
    plaque_motion_key: dict[int, str],
    tex_rng: np.random.Generator,
    waves: np.ndarray,
    background_hu: float = -1000.0,
    textures_off: bool = False,
) -> Rendered:
    """Render every slice (steps 1–4 of the module docstring)."""
    n = len(z_centres)
    vol = np.empty((n, grid.rows, grid.cols), dtype=np.float32)
    sigma_px = psf_sigma_mm / grid.ps if blur and not ideal else 0.0
    margin = int(math.ceil(3.5 * sigma_px)) + 2
    patches: list[Patch] = []
    img = np.empty((grid.rows, grid.cols), dtype=np.float32)
    if textures_off:
        flat = np.zeros((grid.rows, grid.cols), dtype=np.float32)
        textures = iter([(flat, flat)] * n)
    else:
        textures = _texture_slices(tex_rng, n, grid.rows, grid.cols, grid.ps, increment)
    zero = (np.zeros((1, 3)), np.ones(1))
    for i, zc in enumerate(z_centres):
        img.fill(background_hu)
        tf, tc = next(textures)
        if ideal:
            zs, w = np.array([zc]), np.ones(1)
        else:
            zs, w = scanner.sub_planes(float(zc), thickness)
        moving = motion is not None and bool(motion.heart_shifts[i][0].any())
        heart_d = paint_slice(img, shapes, grid, zs, w, float(zc), tf, tc, waves, dense_scale=dense_scale,
                              point_sampling=ideal, keep_distance="heart" if moving else None)
        if moving and heart_d is not None:
            apply_heart_motion(img, heart_d, *motion.heart_shifts[i])
        for k, p in enumerate(plaques):
            key = plaque_motion_key.get(k)
            disps, dw = motion.artery[key][i] if (motion is not None and key is not None) else zero
            got = plaque_fraction(p, grid, float(zc), thickness, disps, dw, margin, ideal)
            if got is None:
                continue
            r0, c0, frac = got
            h, wd = frac.shape
            under = img[r0:r0 + h, c0:c0 + wd]
            contrib = (frac * (p.density_hu * dense_scale - under)).astype(np.float32)
            if p.label == OTHER_CLASS:
                under += contrib  # part of the anatomy's image (blurred with it)
            patches.append(Patch(i, r0, c0, contrib, p.label))
        vol[i] = img
    if sigma_px > 0:
        vol = scanner.blur_inplane(vol, psf_sigma_mm, grid.ps)
    dense_base = vol >= DENSE_BASE_HU
    source_hu = np.zeros(vol.shape, dtype=np.float32)
    source_class = np.zeros(vol.shape, dtype=np.uint8)
    # sum patches of the same source on the same slice first (touching plaques add up)
    merged: dict[tuple[int, int], list[Patch]] = {}
    for pt in patches:
        merged.setdefault((pt.slice_index, pt.source), []).append(pt)
    for (i, src), group in merged.items():
        r0 = min(p.r0 for p in group)
        c0 = min(p.c0 for p in group)
        r1 = max(p.r0 + p.values.shape[0] for p in group)
        c1 = max(p.c0 + p.values.shape[1] for p in group)
        acc = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
        for p in group:
            acc[p.r0 - r0:p.r0 - r0 + p.values.shape[0], p.c0 - c0:p.c0 - c0 + p.values.shape[1]] += p.values
        if sigma_px > 0:
            acc = ndi.gaussian_filter(acc, sigma_px, mode="constant", truncate=3.0)
        if src != OTHER_CLASS:
            vol[i, r0:r1, c0:c1] += acc
        cur = source_hu[i, r0:r1, c0:c1]
        better = acc > cur
        cur[better] = acc[better]
        source_class[i, r0:r1, c0:c1][better] = src
    return Rendered(noise_free=vol, dense_base=dense_base, source_hu=source_hu, source_class=source_class)


def noise_sigma_map(grid: SliceGrid, body: tuple[np.ndarray, ...] | None) -> np.ndarray:
    """Relative noise σ over the slice: ≈ 1 in the middle of the body, ≈ 0.75 at its edge (rays
    through the periphery are shorter), 0.7 in the air around it."""
    if body is None:
        return np.ones((grid.rows, grid.cols), dtype=np.float32)
    cx, cy, a, bant, bpost, ex = (float(v[0]) for v in body)
    x = grid.x0 + np.arange(grid.cols) * grid.ps
    y = grid.y0 + np.arange(grid.rows) * grid.ps
    dx = np.abs(x - cx)[None, :] / a
    b = np.where(y < cy, bant, bpost)[:, None]
    dy = np.abs(y - cy)[:, None] / b
    rho2 = np.minimum(dx**2 + dy**2, 1.5)
    m = np.where(rho2 < 1.0, 1.0 - 0.25 * rho2, 0.7)
    return m.astype(np.float32)
