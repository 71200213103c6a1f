"""Coronary centrelines (LM, LAD, LCX, RCA) laid on the epicardial surface of the drawn heart.

Control points are given in the cardiac frame (see heart.py) at the usual anatomical positions:
- LM from the left (posterior) aortic sinus, leftwards between pulmonary trunk and left atrium,
  splitting after 8–15 mm into
- LAD down the anterior interventricular groove to the apex, and
- LCX round the left atrioventricular groove towards the back;
- RCA from the right (anterior) sinus, forwards, then down the right AV groove round the acute
  margin to the crux, giving the posterior descending branch (right dominance, ~85 %).
The points are spline-interpolated, then pulled onto the surface that lies one vessel radius (+ a
little fat) outside the myocardium, so each artery runs in the epicardial fat touching the heart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cacstream.engine.domain import ARTERIES
from cacstream.training.phantom import paths
from cacstream.training.phantom.heart import Heart
from cacstream.training.phantom.shapes import Layer, Tubes

#: Control points (u, a, l) in the cardiac frame, mm (scaled with the heart).
_LM = [(-35.0, -3.0, 5.0), (-33.0, 0.0, 12.0), (-31.0, 3.0, 18.0)]
_LAD = [(-24.0, 20.0, 16.0), (-12.0, 30.0, 8.0), (8.0, 31.0, 3.0), (28.0, 27.0, 0.0), (44.0, 17.0, -2.0), (54.0, 5.0, -2.0)]
_LCX = [(-30.0, -2.0, 30.0), (-27.0, -14.0, 34.0), (-24.0, -28.0, 28.0), (-22.0, -36.0, 15.0), (-20.0, -40.0, 2.0)]
_LCX_DOMINANT = [(-17.0, -40.0, -12.0), (-12.0, -36.0, -20.0), (5.0, -32.0, -10.0), (22.0, -27.0, -4.0)]
_RCA_PROX = [(-35.0, 12.0, -16.0), (-32.0, 24.0, -28.0), (-26.0, 22.0, -42.0), (-20.0, 10.0, -50.0)]
_RCA_DIST = [(-17.0, -8.0, -48.0), (-15.0, -24.0, -36.0), (-12.0, -34.0, -18.0), (0.0, -32.0, -8.0), (20.0, -27.0, -2.0), (36.0, -20.0, 0.0)]

#: Relative amplitude of each artery's cardiac motion (the RCA moves most, the LM least).
MOTION_SCALE: dict[str, float] = {"LM": 0.3, "LAD": 0.6, "LCX": 0.8, "RCA": 1.0}


@dataclass
class Artery:
    """One coronary artery: centreline (n, 3) every 0.5 mm, lumen+wall radius (n,) mm."""

    name: str
    path: np.ndarray
    radius: np.ndarray

    @property
    def length_mm(self) -> float:
        return float(paths.arc_length(self.path)[-1])


def _project(heart: Heart, pts: np.ndarray, target: np.ndarray, weight: np.ndarray, iters: int = 10) -> np.ndarray:
    """Move points along the distance gradient until they sit at distance ``target`` (blended by weight)."""
    p = pts.copy()
    h = 0.5
    eye = np.eye(3) * h
    for _ in range(iters):
        d = heart.distance(p)
        g = np.stack([(heart.distance(p + eye[k]) - heart.distance(p - eye[k])) / (2 * h) for k in range(3)], axis=1)
        gn2 = np.maximum((g**2).sum(1), 1e-6)
        p -= (weight * (d - target) / gn2)[:, None] * g
    return p


def _lay(heart: Heart, control: np.ndarray, r_start: float, r_end: float, free_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Spline through control points, projected onto the epicardial surface after ``free_mm``."""
    curve = paths.smooth_curve(control, 1.0)
    s = paths.arc_length(curve)
    radius = np.interp(s, [0, s[-1]], [r_start, r_end])
    weight = np.clip((s - free_mm) / 8.0, 0.0, 1.0) if free_mm > 0 else np.ones(len(s))
    target = radius + 0.6
    curve = _project(heart, curve, target, weight)
    curve = paths.moving_average(curve, 4)
    curve = _project(heart, curve, target, weight, iters=4)
    fine = paths.resample(curve, 0.5)
    s_fine = paths.arc_length(fine)
    return fine, np.interp(s_fine, [0, s_fine[-1]], [r_start, r_end])


def draw_arteries(rng: np.random.Generator, heart: Heart) -> dict[str, Artery]:
    """The four arteries for this heart (jittered control points, drawn calibre and dominance)."""
    def pts(ctrl: list[tuple[float, float, float]], jitter: float = 2.5) -> np.ndarray:
        c = np.array(ctrl) + rng.normal(0.0, jitter, (len(ctrl), 3))
        return heart.frame_point(c)

    size = float(rng.uniform(0.85, 1.15))
    root, root_r = heart.chambers["AoRoot"]
    left_dominant = rng.random() < 0.1

    lm_ctrl = pts(_LM, 1.0)
    # the ostium sits on the aortic root's surface (left sinus)
    lm_ctrl[0] = root + (lm_ctrl[0] - root) / np.linalg.norm(lm_ctrl[0] - root) * root_r[0]
    lm, lm_r = _lay(heart, lm_ctrl, 2.3 * size, 2.1 * size, free_mm=4.0)
    bif = lm[-1]
    lad_ctrl = np.concatenate([bif[None], pts(_LAD)])
    lad, lad_r = _lay(heart, lad_ctrl, 1.9 * size, 0.9 * size, free_mm=0.0)
    lcx_list = _LCX + (_LCX_DOMINANT if left_dominant else [])
    lcx_ctrl = np.concatenate([bif[None], pts(lcx_list)])
    lcx, lcx_r = _lay(heart, lcx_ctrl, 1.7 * size, 1.0 * size if left_dominant else 0.9 * size, free_mm=0.0)
    rca_list = _RCA_PROX + ([] if left_dominant else _RCA_DIST)
    rca_ctrl = pts(rca_list)
    rca_ctrl[0] = root + (rca_ctrl[0] - root) / np.linalg.norm(rca_ctrl[0] - root) * root_r[0]
    rca, rca_r = _lay(heart, rca_ctrl, 2.0 * size, 1.0 * size if not left_dominant else 1.2 * size, free_mm=6.0)
    arteries = {
        "LM": Artery("LM", lm, lm_r),
        "LAD": Artery("LAD", lad, lad_r),
        "LCX": Artery("LCX", lcx, lcx_r),
        "RCA": Artery("RCA", rca, rca_r),
    }
    assert tuple(arteries) == ARTERIES
    return arteries


#: How far (mm) an artery's epicardial fat pad reaches beyond its wall, and its density (HU).
FAT_PAD_MARGIN_MM = 3.5
FAT_PAD_HU = -92.0
#: A lean artery's pad: margin range (mm) and density range (HU) — see :class:`Pad`.
LEAN_PAD_MARGIN_MM = (1.0, 3.5)
LEAN_PAD_HU = (-60.0, 30.0)


@dataclass(frozen=True)
class Pad:
    """The tissue sleeve around one artery: reach beyond the wall (mm, one value per centreline point),
    density (HU), and whether it is a lean one (painted as its own shape) or the shared fat pad."""

    margin_mm: np.ndarray
    hu: float = FAT_PAD_HU
    lean: bool = False


def draw_pads(rng: np.random.Generator, arteries: dict[str, Artery], probability: float) -> dict[str, Pad]:
    """Per artery, the sleeve painted around it: a 3.5 mm fat pad, or with ``probability`` a *lean* one.

    Why: in the default phantoms every coronary runs in a 3.5 mm sleeve of -92 HU fat, so the tissue
    1-3 mm around a phantom plaque is 89 % fat (median); around the COCA samples' expert ROI plaques it
    is 40 % (median -8 HU: thick slices, motion and the vessel wall mix fat with soft tissue), and the
    v1.3 U-Net finds the real plaques in proportion to that fat (``scripts/lesion-features-probe.py
    --ring``; docs/models.md). A lean artery's sleeve has a margin that varies smoothly along it between
    four knots drawn from ``LEAN_PAD_MARGIN_MM`` and one density drawn from ``LEAN_PAD_HU``, so its
    plaques sit in soft-tissue-like surroundings as real ones often do. Draws come from ``rng`` only
    (its own stream); ``probability`` 0 draws nothing.
    """
    out = {}
    for name, art in arteries.items():
        pad = Pad(np.full(len(art.path), FAT_PAD_MARGIN_MM))
        if probability > 0 and rng.random() < probability:
            knots = rng.uniform(*LEAN_PAD_MARGIN_MM, size=4)
            margin = np.interp(np.linspace(0.0, 1.0, len(art.path)), np.linspace(0.0, 1.0, 4), knots)
            pad = Pad(margin, float(rng.uniform(*LEAN_PAD_HU)), lean=True)
        out[name] = pad
    return out


def artery_shapes(arteries: dict[str, Artery], pads: dict[str, Pad] | None = None) -> list[Tubes]:
    """Sleeves of fat along the grooves (painted over the heart), then the vessels themselves (≈ 40 HU).

    ``pads``: per artery (:func:`draw_pads`); None: the 3.5 mm fat pad around every artery. Lean
    sleeves are painted after the fat ones, each as its own shape (one density per shape)."""
    step = 4  # 2 mm capsules: plenty for a smooth tube
    pads = pads or {}
    fat = [n for n in arteries if n not in pads or not pads[n].lean]

    def sleeve(name: str) -> np.ndarray:
        a = arteries[name]
        margin = pads[name].margin_mm if name in pads else FAT_PAD_MARGIN_MM
        return paths.capsules(a.path[::step], (a.radius + margin)[::step])

    vessels = np.concatenate([paths.capsules(a.path[::step], a.radius[::step]) for a in arteries.values()])
    shapes = []
    if fat:
        shapes.append(Tubes(name="coronary_fat", layers=(Layer(0.0, FAT_PAD_HU, tex_fine=5.0, tex_coarse=6.0),),
                            segments=np.concatenate([sleeve(n) for n in fat])))
    for n in arteries:
        if n not in fat:
            shapes.append(Tubes(name=f"coronary_sleeve_{n}", layers=(Layer(0.0, pads[n].hu, tex_fine=5.0, tex_coarse=6.0),),
                                segments=sleeve(n)))
    shapes.append(Tubes(name="coronaries", layers=(Layer(0.0, 38.0, tex_fine=2.0),), segments=vessels))
    return shapes
