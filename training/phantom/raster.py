"""Sampling analytic 3D shapes onto an axial slice, with partial volume (Numba kernels).

Every shape is described by a signed distance in mm (negative inside). A slice is a slab of
thickness T: the distance is evaluated on S sub-planes inside the slab and the in-plane coverage
of each sub-plane is a linear ramp one pixel wide (anti-aliasing). Averaging the sub-planes with
the slice-sensitivity weights gives the slab's partial-volume fraction, which is what a CT voxel
integrates. The in-plane point spread of the scanner is applied later (scanner.py).

Kernels take a bounding box ``(r0, c0)`` + buffer shape so that small shapes cost little.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: Distance written where a shape is certainly absent (mm).
FAR = np.float32(1.0e6)


@njit(cache=True, inline="always")
def _ellipsoid_distance(params: np.ndarray, e: int, x: float, y: float, z: float) -> float:
    """Signed distance bound of point (x, y, z) to ellipsoid ``e`` of ``params`` (centre, rotation rows,
    semi-axes; the k0 (k0 - 1) / k1 bound), shared by the slice rasteriser and the point sampler."""
    px = x - params[e, 0]
    py = y - params[e, 1]
    pz = z - params[e, 2]
    qx = params[e, 3] * px + params[e, 4] * py + params[e, 5] * pz
    qy = params[e, 6] * px + params[e, 7] * py + params[e, 8] * pz
    qz = params[e, 9] * px + params[e, 10] * py + params[e, 11] * pz
    ax = params[e, 12]
    ay = params[e, 13]
    az = params[e, 14]
    ux = qx / ax
    uy = qy / ay
    uz = qz / az
    k0 = math.sqrt(ux * ux + uy * uy + uz * uz)
    vx = ux / ax
    vy = uy / ay
    vz = uz / az
    k1 = math.sqrt(vx * vx + vy * vy + vz * vz)
    if k1 > 1e-9:
        de = k0 * (k0 - 1.0) / k1
    else:
        de = -min(ax, min(ay, az))
    return de


@njit(cache=True)
def _smin(a: float, b: float, k: float) -> float:
    """Polynomial smooth minimum: unions of organs get rounded creases (grooves) instead of corners."""
    if k <= 0.0:
        return min(a, b)
    h = max(k - abs(a - b), 0.0) / k
    return min(a, b) - h * h * k * 0.25


@njit(cache=True)
def blob_distance(out, x0, y0, ps, r0, c0, zs, params, smooth_k):
    """Smooth union of rotated ellipsoids.

    params rows: cx, cy, cz, R (9, world→local rows), ax, ay, az (semi-axes, mm).
    The ellipsoid distance is the first-order estimate (ρ − 1)/|∇ρ| with ρ the normalised radius:
    exact on the surface, good within a few mm of it (where offsets and ramps live).
    """
    S, h, w = out.shape
    n = params.shape[0]
    for k in range(S):
        z = zs[k]
        for i in range(h):
            y = y0 + (r0 + i) * ps
            for j in range(w):
                x = x0 + (c0 + j) * ps
                d = 1.0e6
                for e in range(n):
                    de = _ellipsoid_distance(params, e, x, y, z)
                    if e == 0:
                        d = de
                    else:
                        d = _smin(d, de, smooth_k)
                out[k, i, j] = d


@njit(cache=True)
def segments_distance(out, x0, y0, ps, r0, c0, zs, segs, reach):
    """Union of capsules with linearly varying radius (vessels, airways, ribs, processes).

    segs rows: ax, ay, az, bx, by, bz, ra, rb. Distances farther than ``reach`` outside every
    capsule are left at FAR (nothing painted there), which keeps each capsule's work local.
    """
    S, h, w = out.shape
    for k in range(S):
        for i in range(h):
            for j in range(w):
                out[k, i, j] = 1.0e6
    n = segs.shape[0]
    for s in range(n):
        ax = segs[s, 0]
        ay = segs[s, 1]
        az = segs[s, 2]
        bx = segs[s, 3]
        by = segs[s, 4]
        bz = segs[s, 5]
        ra = segs[s, 6]
        rb = segs[s, 7]
        rm = max(ra, rb) + reach
        dx = bx - ax
        dy = by - ay
        dz = bz - az
        ll = dx * dx + dy * dy + dz * dz
        zlo = min(az, bz) - rm
        zhi = max(az, bz) + rm
        cmin = int(math.floor((min(ax, bx) - rm - x0) / ps)) - c0
        cmax = int(math.ceil((max(ax, bx) + rm - x0) / ps)) - c0
        rmin_ = int(math.floor((min(ay, by) - rm - y0) / ps)) - r0
        rmax_ = int(math.ceil((max(ay, by) + rm - y0) / ps)) - r0
        if cmax < 0 or rmax_ < 0 or cmin >= w or rmin_ >= h:
            continue
        cmin = max(cmin, 0)
        rmin_ = max(rmin_, 0)
        cmax = min(cmax, w - 1)
        rmax_ = min(rmax_, h - 1)
        for k in range(S):
            z = zs[k]
            if z < zlo or z > zhi:
                continue
            pz = z - az
            for i in range(rmin_, rmax_ + 1):
                py = y0 + (r0 + i) * ps - ay
                for j in range(cmin, cmax + 1):
                    px = x0 + (c0 + j) * ps - ax
                    if ll > 1e-12:
                        t = (px * dx + py * dy + pz * dz) / ll
                        if t < 0.0:
                            t = 0.0
                        elif t > 1.0:
                            t = 1.0
                    else:
                        t = 0.0
                    ex = px - t * dx
                    ey = py - t * dy
                    ez = pz - t * dz
                    d = math.sqrt(ex * ex + ey * ey + ez * ez) - (ra + t * (rb - ra))
                    if d < out[k, i, j]:
                        out[k, i, j] = d


@njit(cache=True)
def extruded_distance(out, x0, y0, ps, r0, c0, plane_params):
    """Axial superellipse whose parameters vary with z (body, chest wall, lungs, vertebral bodies).

    plane_params rows (one per sub-plane): cx, cy, a, b_anterior, b_posterior, exponent,
    cap (signed distance to the z caps, ≤ 0 inside the z range). b differs in front of and behind
    the centre so a back can be flatter than a chest.
    """
    S, h, w = out.shape
    for k in range(S):
        cx = plane_params[k, 0]
        cy = plane_params[k, 1]
        a = plane_params[k, 2]
        bant = plane_params[k, 3]
        bpost = plane_params[k, 4]
        ex = plane_params[k, 5]
        cap = plane_params[k, 6]
        for i in range(h):
            dy = y0 + (r0 + i) * ps - cy
            b = bant if dy < 0.0 else bpost
            v = abs(dy) / b
            for j in range(w):
                dx = x0 + (c0 + j) * ps - cx
                u = abs(dx) / a
                if u < 1e-12 and v < 1e-12:
                    d = -min(a, b)
                else:
                    un = u**ex
                    vn = v**ex
                    rho = (un + vn) ** (1.0 / ex)
                    # gradient of rho with respect to (dx, dy)
                    f = rho ** (1.0 - ex)
                    gx = f * (un / u if u > 1e-12 else 0.0) / a
                    gy = f * (vn / v if v > 1e-12 else 0.0) / b
                    g = math.sqrt(gx * gx + gy * gy)
                    d = (rho - 1.0) / g
                if cap > d:
                    d = cap
                out[k, i, j] = d


@njit(cache=True)
def modulation(x, y, z, waves):
    """Smooth 3D random field in about [-1, 1]: a few plane waves (fat-layer thickness, texture)."""
    m = waves.shape[0]
    if m == 0:
        return 0.0
    acc = 0.0
    for i in range(m):
        acc += math.sin(waves[i, 0] * x + waves[i, 1] * y + waves[i, 2] * z + waves[i, 3])
    return acc * math.sqrt(2.0 / m) * 0.7


@njit(cache=True, fastmath=True)
def composite_layers(
    img, r0, c0, dist, weights, offsets, values, tex1_amp, tex2_amp, mod_amp, tex1, tex2,
    wobble, y0, ps, inv_edge, mask_mode, grad_y, cy,
):
    """Paint nested layers of one shape into ``img`` (over-compositing with partial-volume coverage).

    Layer l covers the points whose distance is ≤ −offsets[l] (+ a smooth random modulation of
    amplitude mod_amp[l] mm, ``wobble`` being a smooth random map in [-1, 1]); layers are given
    outermost first. Its value is values[l] + tex1_amp[l]·tex1 + tex2_amp[l]·tex2 (+ grad_y·(y − cy)
    for layer 0, the gravity-dependent density gradient of lungs). mask_mode 1 paints only over
    lung-like pixels (< −500 HU), so lung vessels never leak into the chest wall or the mediastinum.
    """
    S, h, w = dist.shape
    L = offsets.shape[0]
    half = 0.5 / inv_edge
    for i in range(h):
        y = y0 + (r0 + i) * ps
        for j in range(w):
            dmin = dist[0, i, j]
            dmax = dmin
            for k in range(1, S):
                dk = dist[k, i, j]
                if dk < dmin:
                    dmin = dk
                if dk > dmax:
                    dmax = dk
            m = wobble[r0 + i, c0 + j]
            if dmin + offsets[0] + mod_amp[0] * m >= half:
                continue  # outside the outermost layer on every plane
            cur = img[r0 + i, c0 + j]
            gate = 1.0
            if mask_mode == 1:
                gate = (-200.0 - cur) / 300.0
                if gate <= 0.0:
                    continue
                if gate > 1.0:
                    gate = 1.0
            t1 = tex1[r0 + i, c0 + j]
            t2 = tex2[r0 + i, c0 + j]
            # start at the deepest layer that covers the pixel completely: the ones outside it are
            # painted over anyway (nested layers), so skip their blending
            first = 0
            if gate >= 1.0:
                for l in range(L - 1, -1, -1):
                    if dmax + offsets[l] + mod_amp[l] * m <= -half:
                        first = l
                        break
            for l in range(first, L):
                off = offsets[l] + mod_amp[l] * m
                if dmax + off <= -half:
                    a = 1.0  # fully inside on every plane
                elif dmin + off >= half:
                    break  # nested layers: nothing inside either
                else:
                    a = 0.0
                    for k in range(S):
                        c = 0.5 - (dist[k, i, j] + off) * inv_edge
                        if c > 1.0:
                            c = 1.0
                        elif c < 0.0:
                            c = 0.0
                        a += weights[k] * c
                    if a <= 0.0:
                        break
                a *= gate
                v = values[l] + tex1_amp[l] * t1 + tex2_amp[l] * t2
                if l == 0 and grad_y != 0.0:
                    v += grad_y * (y - cy)
                cur = cur * (1.0 - a) + v * a
            img[r0 + i, c0 + j] = cur


@njit(cache=True)
def ellipsoid_fraction(
    out, x0, y0, ps, r0, c0, zs, zw, q, center, rot, radii, disps, dweights,
):
    """Volume fraction of one rotated ellipsoid in each voxel of a slab, with motion.

    Supersampled: q×q points per pixel in-plane, one per sub-plane in z (zs, weights zw summing
    to 1), and the ellipsoid displaced by each motion sample (disps, weights dweights summing to
    1). Used for plaques and calibration inserts, whose partial volume decides the truth.
    """
    h, w = out.shape
    cx = center[0]
    cy = center[1]
    cz = center[2]
    ax = radii[0]
    ay = radii[1]
    az = radii[2]
    reach = max(ax, max(ay, az))
    K = disps.shape[0]
    inv_q = 1.0 / q
    for i in range(h):
        yp = y0 + (r0 + i) * ps
        for j in range(w):
            xp = x0 + (c0 + j) * ps
            acc = 0.0
            for m in range(K):
                ox = cx + disps[m, 0]
                oy = cy + disps[m, 1]
                oz = cz + disps[m, 2]
                # quick reject on the bounding sphere (pixel half-diagonal included)
                ddx = xp - ox
                ddy = yp - oy
                if ddx * ddx + ddy * ddy > (reach + ps) * (reach + ps):
                    continue
                sub = 0.0
                for kz in range(zs.shape[0]):
                    pz = zs[kz] - oz
                    if abs(pz) > reach:
                        continue
                    cnt = 0
                    for si in range(q):
                        py = yp + ((si + 0.5) * inv_q - 0.5) * ps - oy
                        for sj in range(q):
                            px = xp + ((sj + 0.5) * inv_q - 0.5) * ps - ox
                            lx = (rot[0, 0] * px + rot[0, 1] * py + rot[0, 2] * pz) / ax
                            ly = (rot[1, 0] * px + rot[1, 1] * py + rot[1, 2] * pz) / ay
                            lz = (rot[2, 0] * px + rot[2, 1] * py + rot[2, 2] * pz) / az
                            if lx * lx + ly * ly + lz * lz <= 1.0:
                                cnt += 1
                    sub += zw[kz] * cnt
                acc += dweights[m] * sub * inv_q * inv_q
            out[i, j] = acc


@njit(cache=True)
def blob_distance_points(points, params, smooth_k):
    """``blob_distance`` at arbitrary 3D points (n, 3): used to lay vessels on the heart surface."""
    n = points.shape[0]
    out = np.empty(n)
    m = params.shape[0]
    for p in range(n):
        d = 1.0e6
        for e in range(m):
            de = _ellipsoid_distance(params, e, points[p, 0], points[p, 1], points[p, 2])
            if e == 0:
                d = de
            else:
                d = _smin(d, de, smooth_k)
        out[p] = d
    return out


@njit(cache=True)
def upsample_bilinear(coarse, step, out):
    """Fine (S, h, w) from a coarse grid sampled every ``step`` pixels (coarse[0, 0] = out[0, 0]).

    Distances of large smooth shapes vary slowly: sampling them sparsely and interpolating is exact
    to well under 0.01 mm and an order of magnitude cheaper.
    """
    S, h, w = out.shape
    hc = coarse.shape[1]
    wc = coarse.shape[2]
    inv = 1.0 / step
    for k in range(S):
        for i in range(h):
            fi = i * inv
            i0 = int(fi)
            if i0 >= hc - 1:
                i0 = hc - 2 if hc > 1 else 0
            ti = fi - i0
            i1 = i0 + 1 if hc > 1 else 0
            for j in range(w):
                fj = j * inv
                j0 = int(fj)
                if j0 >= wc - 1:
                    j0 = wc - 2 if wc > 1 else 0
                tj = fj - j0
                j1 = j0 + 1 if wc > 1 else 0
                a = coarse[k, i0, j0] * (1.0 - tj) + coarse[k, i0, j1] * tj
                b = coarse[k, i1, j0] * (1.0 - tj) + coarse[k, i1, j1] * tj
                out[k, i, j] = a * (1.0 - ti) + b * ti


@njit(cache=True)
def modulation_grid(out, x0, y0, ps, z, waves):
    """``modulation`` sampled on a regular grid of one plane."""
    h, w = out.shape
    for i in range(h):
        for j in range(w):
            out[i, j] = modulation(x0 + j * ps, y0 + i * ps, z, waves)


@njit(cache=True)
def cylinder_fraction(out, x0, y0, ps, r0, c0, zs, zw, q, cx, cy, radius, zlo, zhi):
    """Volume fraction of an upright cylinder (axis along z, [zlo, zhi]) in each voxel of a slab:
    q×q in-plane samples per pixel times the sub-planes zs (weights zw). With q = 1 and one plane this
    is point sampling: 1 where the pixel centre is inside, else 0 (the calibration phantom's ideal mode)."""
    h, w = out.shape
    zfrac = 0.0
    for k in range(zs.shape[0]):
        if zlo <= zs[k] <= zhi:
            zfrac += zw[k]
    r2 = radius * radius
    inv_q = 1.0 / q
    for i in range(h):
        yp = y0 + (r0 + i) * ps
        for j in range(w):
            xp = x0 + (c0 + j) * ps
            if zfrac == 0.0:
                out[i, j] = 0.0
                continue
            cnt = 0
            for si in range(q):
                dy = yp + ((si + 0.5) * inv_q - 0.5) * ps - cy
                for sj in range(q):
                    dx = xp + ((sj + 0.5) * inv_q - 0.5) * ps - cx
                    if dx * dx + dy * dy <= r2:
                        cnt += 1
            out[i, j] = zfrac * cnt * inv_q * inv_q
