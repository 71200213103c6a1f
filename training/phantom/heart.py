"""The heart and great vessels: chambers as a smooth union of ellipsoids in a cardiac frame.

Non-contrast CT cannot tell myocardium from blood (both ≈ 40 HU); what it shows is the heart's
outline, the epicardial fat in the grooves where the coronaries run, the thin pericardium, and the
great vessels in mediastinal fat. The cardiac frame has ``u`` along the long axis (base → apex,
pointing left, anterior and down), ``a`` perpendicular to it towards the front, and ``l`` to the
patient's left; chamber positions are given in this frame so that any drawn orientation stays
anatomically consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cacstream.training.phantom import paths, raster
from cacstream.training.phantom.shapes import Blob, Layer, Tubes


@dataclass(frozen=True)
class CardiacFrame:
    """Origin (mm, patient LPS) and unit axes u (to apex), a (anterior), l (left)."""

    origin: np.ndarray
    u: np.ndarray
    a: np.ndarray
    l: np.ndarray

    def world(self, p) -> np.ndarray:
        """Frame coordinates (…, 3) [along u, along a, along l] → patient mm."""
        p = np.asarray(p, dtype=np.float64)
        return self.origin + p[..., :1] * self.u + p[..., 1:2] * self.a + p[..., 2:3] * self.l

    @property
    def rows(self) -> np.ndarray:
        return np.stack([self.u, self.a, self.l])


def draw_frame(rng: np.random.Generator, origin: np.ndarray) -> CardiacFrame:
    """Long axis ≈ 45° left of anterior in the axial plane and ≈ 30° below it (drawn per patient)."""
    az = np.deg2rad(rng.uniform(35.0, 55.0))
    el = np.deg2rad(rng.uniform(-38.0, -22.0))
    u = np.array([np.cos(el) * np.sin(az), -np.cos(el) * np.cos(az), np.sin(el)])
    ant = np.array([0.0, -1.0, 0.0])
    a = ant - (ant @ u) * u
    a /= np.linalg.norm(a)
    l = np.cross(u, a)
    if l[0] < 0:
        l = -l
    return CardiacFrame(origin=np.asarray(origin, float), u=u, a=a, l=l)


#: Chambers in frame coordinates: centre (u, a, l) and semi-axes (u, a, l), mm, before scaling.
CHAMBERS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "LV": ((8.0, -8.0, 12.0), (45.0, 28.0, 34.0)),
    "RV": ((0.0, 14.0, -14.0), (40.0, 18.0, 36.0)),
    "LA": ((-44.0, -16.0, 4.0), (23.0, 15.0, 32.0)),
    "RA": ((-33.0, 5.0, -36.0), (31.0, 23.0, 26.0)),
    "RVOT": ((-36.0, 17.0, 4.0), (20.0, 13.0, 14.0)),
    "AoRoot": ((-35.0, 0.0, -8.0), (14.0, 14.0, 14.0)),
}


@dataclass
class Heart:
    """The drawn heart: frame, chamber table, the Blob to paint and landmarks for vessels."""

    frame: CardiacFrame
    scale: float
    chambers: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (world centre, radii)
    blob_params: np.ndarray
    smooth_mm: float
    fat_mm: float

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (mm) of points (n, 3) to the myocardial surface."""
        return raster.blob_distance_points(np.ascontiguousarray(points, dtype=np.float64), self.blob_params, self.smooth_mm)

    def frame_point(self, p) -> np.ndarray:
        return self.frame.world(np.asarray(p, float) * self.scale)

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned (min, max) corners of the chamber ellipsoids (mm)."""
        e = self.blob_params
        rot = e[:, 3:12].reshape(-1, 3, 3)
        ext = np.sqrt(np.einsum("njw,nj->nw", rot**2, e[:, 12:15] ** 2))
        return (e[:, :3] - ext).min(0), (e[:, :3] + ext).max(0)


def draw_heart(rng: np.random.Generator, origin: np.ndarray, max_depth_mm: float | None = None) -> Heart:
    """A heart at ``origin`` with drawn orientation, size and chamber jitter; shrunk if needed so its
    front-to-back depth fits ``max_depth_mm`` (the room between sternum and spine)."""
    frame = draw_frame(rng, origin)
    scale = float(rng.uniform(1.08, 1.3))
    jitter = rng.normal(0, 2.0, (len(CHAMBERS), 3))
    stretch = rng.uniform(0.92, 1.08, (len(CHAMBERS), 3))
    root_stretch = rng.uniform(0.95, 1.1)
    fat = float(rng.uniform(1.0, 4.0))
    heart = _build(frame, scale, jitter, stretch, root_stretch, fat)
    if max_depth_mm is not None:
        lo, hi = heart.extent()
        depth = hi[1] - lo[1]
        if depth > max_depth_mm:
            heart = _build(frame, scale * max(max_depth_mm / depth, 0.9), jitter, stretch, root_stretch, fat)
    return heart


def _build(frame: CardiacFrame, scale: float, jitter: np.ndarray, stretch: np.ndarray, root_stretch: float, fat: float) -> Heart:
    rows = []
    chambers = {}
    for k, (name, (c, r)) in enumerate(CHAMBERS.items()):
        c = np.array(c) + jitter[k] * (name != "AoRoot")
        r = np.array(r) * stretch[k] if name != "AoRoot" else np.array(r) * root_stretch
        cw = frame.world(c * scale)
        rw = r * scale
        chambers[name] = (cw, rw)
        rows.append(paths.ellipsoid_row(cw, frame.rows, tuple(rw)))
    return Heart(
        frame=frame, scale=scale, chambers=chambers, blob_params=np.ascontiguousarray(np.stack(rows)),
        smooth_mm=14.0, fat_mm=fat,
    )


def heart_shape(heart: Heart) -> Blob:
    """Pericardium → epicardial fat (uneven) → myocardium/blood, as one painted Blob."""
    f = heart.fat_mm
    return Blob(
        name="heart",
        layers=(
            Layer(-(f + 0.8), 18.0, tex_fine=3.0, wobble_mm=3.5),
            Layer(-f, -92.0, tex_fine=5.0, tex_coarse=8.0, wobble_mm=3.5),
            Layer(0.0, 40.0, tex_fine=2.0, tex_coarse=3.0),
        ),
        ellipsoids=heart.blob_params,
        smooth_mm=heart.smooth_mm,
    )


def fat_pads(rng: np.random.Generator, heart: Heart) -> Blob:
    """Paracardial fat at the apex and the right cardiophrenic angle (painted before the heart)."""
    lv_c, lv_r = heart.chambers["LV"]
    rv_c, rv_r = heart.chambers["RV"]
    apex = heart.frame_point((48.0, 8.0, 0.0))
    right = heart.frame_point((25.0, 12.0, -35.0))
    size = float(rng.uniform(0.6, 1.4))
    rows = [
        paths.ellipsoid_row(apex, heart.frame.rows, (22 * size, 18 * size, 26 * size)),
        paths.ellipsoid_row(right, heart.frame.rows, (20 * size, 16 * size, 18 * size)),
    ]
    return Blob(name="fat_pads", layers=(Layer(0.0, -95.0, tex_fine=5.0, tex_coarse=8.0),),
                ellipsoids=np.stack(rows), smooth_mm=8.0)


@dataclass
class GreatVessels:
    """Centrelines (n, 3) and radii (n,) of the aorta and the vessels around the heart."""

    aorta: np.ndarray
    aorta_r: np.ndarray
    aorta_part: np.ndarray  # 0 root/ascending, 1 arch, 2 descending (for wall calcium)
    others: list[tuple[str, np.ndarray, np.ndarray]]
    pa_bifurcation: np.ndarray
    hila: tuple[np.ndarray, np.ndarray]  # right, left


def draw_great_vessels(
    rng: np.random.Generator, heart: Heart, spine_xy: np.ndarray, z_bottom: float, carina_z: float
) -> GreatVessels:
    """Aorta (root → ascending → arch → descending), pulmonary trunk and arteries, SVC, IVC, veins."""
    root, root_r = heart.chambers["AoRoot"]
    r_asc = float(rng.uniform(14.0, 18.0))
    r_desc = float(rng.uniform(10.5, 13.0))
    desc_xy = spine_xy + np.array([rng.uniform(28.0, 36.0), -rng.uniform(6.0, 16.0)])
    arch_z = root[2] + rng.uniform(70.0, 90.0)
    asc_top = root + np.array([-rng.uniform(4.0, 12.0), -rng.uniform(2.0, 10.0), arch_z - root[2] - 18.0])
    control = np.array([
        root,
        root + np.array([-3.0, -5.0, 20.0]),
        asc_top,
        [asc_top[0] + 10.0, asc_top[1] + 18.0, arch_z + 4.0],
        [desc_xy[0] - 6.0, desc_xy[1] - 12.0, arch_z + 2.0],
        [desc_xy[0], desc_xy[1], arch_z - 18.0],
        [desc_xy[0] - 2.0, desc_xy[1], root[2] - 40.0],
        [desc_xy[0] - 8.0, desc_xy[1] - 4.0, z_bottom - 20.0],
    ])
    aorta = paths.smooth_curve(control, 2.0)
    s = paths.arc_length(aorta)
    s_ctrl = paths.arc_length(control)
    # radius: sinus → ascending → arch → descending taper
    r_ctrl = np.array([root_r[0] * 1.05, r_asc, r_asc, 0.5 * (r_asc + r_desc), r_desc * 1.05, r_desc, r_desc * 0.95, r_desc * 0.85])
    # map control arc-length onto the resampled curve proportionally
    frac = s_ctrl / s_ctrl[-1]
    r = np.interp(s / s[-1], frac, r_ctrl)
    part = np.where(s / s[-1] < frac[2], 0, np.where(s / s[-1] < frac[5], 1, 2))

    others: list[tuple[str, np.ndarray, np.ndarray]] = []
    # pulmonary trunk from the RV outflow, up and back to the bifurcation left of the aorta
    rvot, _ = heart.chambers["RVOT"]
    pa_bif = np.array([root[0] + rng.uniform(20.0, 30.0), root[1] + rng.uniform(5.0, 15.0), min(carina_z - 10.0, root[2] + rng.uniform(38.0, 50.0))])
    pt = paths.smooth_curve(np.array([rvot + heart.frame.u * -8.0, rvot + np.array([0.0, 0.0, 22.0]), pa_bif]), 2.0)
    others.append(("pulmonary_trunk", pt, np.full(len(pt), rng.uniform(12.0, 15.0))))
    hila_r = np.array([spine_xy[0] - rng.uniform(55.0, 70.0), spine_xy[1] - rng.uniform(40.0, 55.0), pa_bif[2] - rng.uniform(5.0, 15.0)])
    hila_l = np.array([spine_xy[0] + rng.uniform(55.0, 70.0), spine_xy[1] - rng.uniform(35.0, 50.0), pa_bif[2] + rng.uniform(-2.0, 8.0)])
    rpa = paths.smooth_curve(np.array([pa_bif, [root[0], pa_bif[1] + 14.0, pa_bif[2] - 4.0], hila_r]), 2.0)
    lpa = paths.smooth_curve(np.array([pa_bif, [pa_bif[0] + 22.0, pa_bif[1] + 18.0, pa_bif[2] + 6.0], hila_l]), 2.0)
    others.append(("rpa", rpa, np.linspace(11.0, 8.0, len(rpa))))
    others.append(("lpa", lpa, np.linspace(10.5, 8.0, len(lpa))))
    # superior vena cava into the right atrium; inferior vena cava from below
    ra, ra_r = heart.chambers["RA"]
    svc_top = np.array([root[0] - rng.uniform(20.0, 30.0), root[1] - rng.uniform(0.0, 10.0), root[2] + 130.0])
    svc = paths.smooth_curve(np.array([svc_top, [svc_top[0], svc_top[1] + 4.0, root[2] + 40.0], ra + np.array([0, 0, ra_r[0] * 0.5])]), 2.0)
    others.append(("svc", svc, np.full(len(svc), rng.uniform(8.0, 11.0))))
    ivc = paths.smooth_curve(np.array([ra - np.array([0, 0, ra_r[0] * 0.3]), [ra[0] + 8.0, ra[1] + 15.0, ra[2] - 60.0], [ra[0] + 12.0, spine_xy[1] - 30.0, z_bottom - 20.0]]), 2.0)
    others.append(("ivc", ivc, np.full(len(ivc), rng.uniform(10.0, 13.0))))
    # four pulmonary veins from the left atrium to the hila
    la, la_r = heart.chambers["LA"]
    for side, hil in ((-1, hila_r), (1, hila_l)):
        for dz in (10.0, -12.0):
            start = la + np.array([side * la_r[2] * 0.5, 0.0, dz * 0.5])
            end = start + 0.55 * (np.array([hil[0] - side * 5.0, hil[1] + 15.0, la[2] + dz]) - start)
            mid = 0.5 * (start + end) + np.array([0.0, rng.uniform(-6.0, 6.0), rng.uniform(-4.0, 4.0)])
            v = paths.smooth_curve(np.array([start, mid, end]), 2.0)
            r0 = rng.uniform(6.0, 8.0)
            others.append(("pulmonary_vein", v, np.linspace(r0, r0 * 0.6, len(v))))
    return GreatVessels(aorta=aorta, aorta_r=r, aorta_part=part, others=others, pa_bifurcation=pa_bif, hila=(hila_r, hila_l))


def vessel_shapes(gv: GreatVessels) -> list[Tubes]:
    """Mediastinal great vessels in a sleeve of fat (the fat plane around them shows on CT); the
    pulmonary arteries and veins towards the hila without one (they border the lung directly)."""
    mediastinal = [paths.capsules(gv.aorta[::2], gv.aorta_r[::2])]
    hilar = []
    for name, p, r in gv.others:
        (mediastinal if name in ("pulmonary_trunk", "svc") else hilar).append(paths.capsules(p, r))
    return [
        Tubes(name="great_vessels", layers=(Layer(-3.0, -90.0, tex_fine=5.0, tex_coarse=6.0, wobble_mm=2.0), Layer(0.0, 42.0, tex_fine=2.0)),
              segments=np.concatenate(mediastinal)),
        Tubes(name="hilar_vessels", layers=(Layer(0.0, 40.0, tex_fine=2.0),), segments=np.concatenate(hilar)),
    ]
