"""Calcified plaques: coronary (the truth), aortic wall and valve/annulus calcium (hard negatives).

A plaque is a rotated ellipsoid of calcium (intrinsic density 220–1700 HU, i.e. hydroxyapatite of
varying concentration) sitting in the vessel wall, elongated along the vessel (semi-axes from
≈ 0.4 mm to 6 mm). After the scanner's PSF and slice integration its peak drops and it blooms, so
small or thin plaques show as faint 130–200 HU blobs and large dense ones as > 1000 HU.

The coronary burden is drawn per patient from a target risk category (17 % zero-calcium, the
rest spread over 1–10, 11–100, 101–400, > 400); the category actually reached is measured on the
rendered image by the Agatston code, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cacstream.engine.domain import ARTERIES, RISK_CATEGORIES
from cacstream.training.phantom import paths
from cacstream.training.phantom.coronaries import Artery
from cacstream.training.phantom.heart import GreatVessels, Heart

#: Probability of each target category when none is forced.
CATEGORY_PROBS: dict[str, float] = {"0": 0.17, "1-10": 0.15, "11-100": 0.25, "101-400": 0.24, ">400": 0.19}

#: Per category: (min plaques, max plaques, along-vessel semi-axis range mm, cross semi-axis range mm,
#: intrinsic density range HU).
_BURDEN: dict[str, tuple[int, int, tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "0": (0, 0, (0, 0), (0, 0), (0, 0)),
    "1-10": (1, 2, (1.2, 2.4), (0.6, 1.0), (450.0, 950.0)),
    "11-100": (3, 7, (0.8, 3.0), (0.55, 1.2), (350.0, 1100.0)),
    "101-400": (7, 16, (1.2, 5.0), (0.7, 1.6), (400.0, 1200.0)),
    ">400": (12, 28, (1.6, 6.0), (0.8, 1.9), (450.0, 1600.0)),
}

#: Besides the burden-sized plaques, some are small and dense ("spotty") or larger but faint
#: (low-density calcification), whatever the burden: many lesions a reader outlines are a few mm²
#: and peak below 250 HU. Share of each and their (along, cross, density) ranges.
MINOR_SHARE = {"spotty": 0.2, "faint": 0.2}
_MINOR = {"spotty": ((0.4, 1.0), (0.35, 0.6), (400.0, 900.0)),
          "faint": ((1.0, 3.0), (0.7, 1.2), (200.0, 330.0))}

#: Share of plaques per artery (LAD most often, LM least).
ARTERY_PROBS: dict[str, float] = {"LM": 0.10, "LAD": 0.42, "LCX": 0.20, "RCA": 0.28}

#: Class index of non-coronary calcium in the per-voxel source map (after the four arteries).
OTHER_CLASS = len(ARTERIES) + 1


@dataclass(frozen=True)
class Plaque:
    """One calcified ellipsoid. ``rotation`` rows are its local axes (along, radial, circumferential)."""

    kind: str  # "coronary", "aortic", "valve"
    artery: str | None
    center: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]
    radii: tuple[float, float, float]
    density_hu: float
    arc_mm: float = 0.0
    shape: str = "ellipsoid"  # or "cylinder_z": radii = (r, r, half length), axis along z

    @property
    def label(self) -> int:
        """Source class: 1..4 for the arteries (engine/domain.py), OTHER_CLASS otherwise."""
        return ARTERIES.index(self.artery) + 1 if self.artery is not None else OTHER_CLASS

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "artery": self.artery,
            "center_mm": [round(v, 3) for v in self.center],
            "axes": [[round(v, 5) for v in row] for row in self.rotation],
            "semi_axes_mm": [round(v, 3) for v in self.radii],
            "density_hu": round(self.density_hu, 1), "arc_mm": round(self.arc_mm, 2), "shape": self.shape,
        }


def draw_category(rng: np.random.Generator, forced: str | None) -> str:
    if forced is not None:
        if forced not in RISK_CATEGORIES:
            raise ValueError(f"unknown risk category {forced!r}")
        return forced
    cats = list(CATEGORY_PROBS)
    return str(rng.choice(cats, p=np.array(list(CATEGORY_PROBS.values()))))


def _wall_plaque(
    rng: np.random.Generator, kind: str, artery: str | None, path: np.ndarray, radius: np.ndarray, i: int,
    along: float, cross: float, density: float, depth: tuple[float, float],
) -> Plaque:
    """Ellipsoid in the wall of a tube at centreline index i, facing a random direction."""
    t = paths.tangents(path)[i]
    n1, n2 = paths.perpendicular_basis(t)
    phi = rng.uniform(0, 2 * np.pi)
    radial = np.cos(phi) * n1 + np.sin(phi) * n2
    circ = np.cross(t, radial)
    center = path[i] + radial * radius[i] * rng.uniform(*depth)
    radii = (along, cross * rng.uniform(0.6, 1.0), cross * rng.uniform(0.9, 1.6))
    s = paths.arc_length(path)[i]
    return Plaque(kind=kind, artery=artery, center=tuple(map(float, center)),
                  rotation=tuple(tuple(map(float, v)) for v in (t, radial, circ)),
                  radii=tuple(map(float, radii)), density_hu=float(density), arc_mm=float(s))


def draw_coronary_plaques(rng: np.random.Generator, arteries: dict[str, Artery], category: str) -> list[Plaque]:
    """Plaques for a target category, spread over the arteries (proximal segments favoured)."""
    n_min, n_max, along_r, cross_r, dens_r = _BURDEN[category]
    if n_max == 0:
        return []
    n = int(rng.integers(n_min, n_max + 1))
    names = list(ARTERY_PROBS)
    probs = np.array(list(ARTERY_PROBS.values()))
    out = []
    for k in range(n):
        name = str(rng.choice(names, p=probs))
        art = arteries[name]
        m = len(art.path)
        frac = rng.uniform(0.1, 0.9) if name == "LM" else rng.beta(1.3, 2.6)
        i = int(np.clip(round(frac * (m - 1)), 2, m - 3))
        u = rng.random()
        if category == "1-10" or k == 0 or u >= sum(MINOR_SHARE.values()):  # the first one is always visible
            a_r, c_r, d_r = along_r, cross_r, dens_r
        else:
            a_r, c_r, d_r = _MINOR["spotty" if u < MINOR_SHARE["spotty"] else "faint"]
        along = float(np.exp(rng.uniform(np.log(a_r[0]), np.log(a_r[1]))))
        cross = float(rng.uniform(*c_r))
        density = float(np.exp(rng.uniform(np.log(d_r[0]), np.log(d_r[1]))))
        cross = min(cross, along * 1.2, float(art.radius[i]) * 1.1)
        out.append(_wall_plaque(rng, "coronary", name, art.path, art.radius, i, along, cross, density, (0.35, 0.85)))
    return out


def draw_aortic_plaques(rng: np.random.Generator, vessels: GreatVessels, probability: float, burden: str,
                        part_weights: tuple[float, float, float] = (0.2, 0.35, 0.45)) -> list[Plaque]:
    """Aortic wall calcium (arch and descending aorta mostly, sometimes the root) — not coronary.

    ``part_weights``: relative odds of the root / ascending aorta, the arch and the descending aorta.
    """
    p = min(1.0, probability * (1.4 if burden in ("101-400", ">400") else 0.8 if burden == "0" else 1.0))
    if rng.random() >= p:
        return []
    n = int(rng.integers(1, 9))
    part_w = np.asarray(part_weights, dtype=float) / float(sum(part_weights))
    out = []
    for _ in range(n):
        part = int(rng.choice(3, p=part_w))
        idx = np.flatnonzero(vessels.aorta_part == part)
        if len(idx) < 5:
            continue
        i = int(rng.choice(idx[2:-2]))
        along = float(rng.uniform(1.5, 7.0))
        cross = float(rng.uniform(0.6, 2.5))
        density = float(np.exp(rng.uniform(np.log(300.0), np.log(1600.0))))
        out.append(_wall_plaque(rng, "aortic", None, vessels.aorta, vessels.aorta_r, i, along, cross, density, (0.88, 0.98)))
    return out


def draw_valve_plaques(rng: np.random.Generator, heart: Heart, arteries: dict[str, Artery], probability: float) -> list[Plaque]:
    """Mitral-annulus calcium under the LCX and aortic-valve calcium in the root: close to the
    coronaries but not coronary — exactly what a segmenter must learn to leave out."""
    out: list[Plaque] = []
    if rng.random() < probability:
        lcx = arteries["LCX"]
        m = len(lcx.path)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(int(0.2 * m), max(int(0.8 * m), int(0.2 * m) + 1)))
            p = lcx.path[i]
            h = 0.5
            g = np.array([(heart.distance((p + e)[None]) - heart.distance((p - e)[None]))[0] / (2 * h) for e in np.eye(3) * h])
            g /= max(np.linalg.norm(g), 1e-6)
            center = p - g * (lcx.radius[i] + rng.uniform(6.0, 10.0))
            t = paths.tangents(lcx.path)[i]
            circ = np.cross(t, g)
            out.append(Plaque(kind="valve", artery=None, center=tuple(map(float, center)),
                              rotation=tuple(tuple(map(float, v)) for v in (t, g, circ)),
                              radii=(float(rng.uniform(2.0, 6.0)), float(rng.uniform(0.8, 1.8)), float(rng.uniform(1.2, 3.0))),
                              density_hu=float(rng.uniform(400.0, 1500.0))))
    if rng.random() < probability:
        root, rr = heart.chambers["AoRoot"]
        for _ in range(int(rng.integers(1, 4))):
            v = rng.normal(size=3)
            v /= np.linalg.norm(v)
            center = root + v * rr[0] * rng.uniform(0.2, 0.6)
            rot = paths.rotation_rows(np.stack([v, rng.normal(size=3), rng.normal(size=3)]))
            out.append(Plaque(kind="valve", artery=None, center=tuple(map(float, center)),
                              rotation=tuple(tuple(map(float, r)) for r in rot),
                              radii=tuple(float(x) for x in rng.uniform(0.8, 3.0, 3)),
                              density_hu=float(rng.uniform(300.0, 1300.0))))
    return out


def z_extent(p: Plaque, motion_mm: float = 0.0) -> tuple[float, float]:
    """Lowest and highest z (mm) the plaque can touch (motion included)."""
    if p.shape == "cylinder_z":
        return p.center[2] - p.radii[2] - motion_mm, p.center[2] + p.radii[2] + motion_mm
    rot = np.array(p.rotation)
    ext = float(np.sqrt(np.sum((rot[:, 2] * np.array(p.radii)) ** 2)))
    return p.center[2] - ext - motion_mm, p.center[2] + ext + motion_mm


def xy_extent(p: Plaque) -> tuple[float, float]:
    if p.shape == "cylinder_z":
        return p.radii[0], p.radii[1]
    rot = np.array(p.rotation)
    r = np.array(p.radii)
    return float(np.sqrt(np.sum((rot[:, 0] * r) ** 2))), float(np.sqrt(np.sum((rot[:, 1] * r) ** 2)))
