"""A whole patient: torso, lungs with vessel trees, airways, mediastinum, abdomen, skeleton, heart.

``draw_patient`` draws every anatomical parameter from one random generator and returns the
ordered list of shapes to paint (back to front) plus the landmarks that the coronaries, plaques,
field of view and scan range are placed by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cacstream.training.phantom import paths, raster
from cacstream.training.phantom.coronaries import Artery, artery_shapes, draw_arteries, draw_pads
from cacstream.training.phantom.heart import (
    GreatVessels, Heart, draw_great_vessels, draw_heart, fat_pads, heart_shape, vessel_shapes,
)
from cacstream.training.phantom.shapes import Blob, Extruded, Layer, Shape, Tubes
from cacstream.training.phantom.skeleton import draw_skeleton
from cacstream.training.phantom.torso import Torso, draw_torso


@dataclass
class Patient:
    """Everything drawn for one patient (mm, patient LPS coordinates)."""

    torso: Torso
    heart: Heart
    vessels: GreatVessels
    arteries: dict[str, Artery]
    shapes: list[Shape]
    carina_z: float
    dome_z: float  # top of the right hemidiaphragm
    lung_hu: float

    @property
    def heart_z_range(self) -> tuple[float, float]:
        lo, hi = self.heart.extent()
        return float(lo[2]), float(hi[2])


def _organs(rng: np.random.Generator, torso: Torso, dome_z: float) -> tuple[list[Shape], list[np.ndarray]]:
    """Liver (right dome), stomach with a gas bubble and spleen (left), each under the diaphragm."""
    zh = torso.z_heart
    cx, cy, a, bant, bpost, _ = (v[0] for v in torso.cavity_params(dome_z - 40.0))
    liver_r = np.array([rng.uniform(105, 125), rng.uniform(85, 100), rng.uniform(85, 100)])
    liver_c = np.array([cx - a + liver_r[0] * rng.uniform(0.8, 0.95), cy + rng.uniform(0, 10), dome_z - liver_r[2]])
    left_lobe_r = np.array([rng.uniform(55, 70), rng.uniform(35, 45), rng.uniform(40, 50)])
    left_lobe_c = np.array([cx + rng.uniform(10, 30), cy - bant + 45.0, dome_z - 25.0 - left_lobe_r[2]])
    liver = np.stack([paths.axis_aligned_row(liver_c, liver_r), paths.axis_aligned_row(left_lobe_c, left_lobe_r)])
    left_dome = dome_z - rng.uniform(12.0, 25.0)
    st_r = np.array([rng.uniform(45, 58), rng.uniform(40, 50), rng.uniform(45, 60)])
    st_c = np.array([cx + rng.uniform(50, 70), cy + rng.uniform(-15, 5), left_dome - st_r[2]])
    sp_r = np.array([rng.uniform(25, 35), rng.uniform(45, 60), rng.uniform(45, 60)])
    sp_c = np.array([cx + a * 0.62, cy + bpost * 0.45, left_dome - 15.0 - sp_r[2]])
    diaphragm = Layer(0.0, 44.0, tex_fine=3.0)
    shapes: list[Shape] = [
        Blob(name="liver", layers=(diaphragm, Layer(3.5, 58.0, tex_fine=4.0, tex_coarse=5.0)),
             ellipsoids=liver, smooth_mm=15.0),
        Blob(name="spleen", layers=(diaphragm, Layer(3.5, 47.0, tex_fine=4.0, tex_coarse=4.0)),
             ellipsoids=paths.axis_aligned_row(sp_c, sp_r)[None], smooth_mm=0.0),
        Blob(name="stomach", layers=(diaphragm, Layer(3.5, 36.0, tex_fine=3.0), Layer(6.5, 18.0, tex_fine=6.0, tex_coarse=14.0)),
             ellipsoids=paths.axis_aligned_row(st_c, st_r)[None], smooth_mm=0.0),
    ]
    if rng.random() < 0.8:  # gas rises to the front of the fundus in a supine patient
        g_r = np.array([st_r[0] * 0.55, st_r[1] * 0.45, rng.uniform(8.0, 16.0)])
        g_c = np.array([st_c[0] + 3.0, st_c[1] - st_r[1] * 0.35, st_c[2] + st_r[2] * 0.45])
        shapes.append(Blob(name="stomach_gas", layers=(Layer(0.0, -1000.0),),
                           ellipsoids=paths.axis_aligned_row(g_c, g_r)[None], smooth_mm=0.0))
    return shapes, [liver, paths.axis_aligned_row(st_c, st_r)[None], paths.axis_aligned_row(sp_c, sp_r)[None]]


def _mediastinum(torso: Torso, heart: Heart, carina_z: float) -> list[Shape]:
    """Fat of the superior/anterior mediastinum and of the posterior column (aorta, oesophagus)."""
    zh = torso.z_heart
    zs = np.array([zh - 150.0, zh - 40.0, zh + 10.0, zh + 40.0, zh + 80.0, zh + 130.0, torso.apex_z + 40.0])
    front = torso.cavity_front_y(zs)
    spine = torso.spine_y(zs)
    back = spine - 14.0
    cxs = np.array([15.0, 15.0, 12.0, 6.0, 2.0, 0.0, 0.0])
    half_w = np.array([16.0, 18.0, 20.0, 20.0, 18.0, 18.0, 18.0])
    cy = 0.5 * (front + back)
    b = 0.5 * (back - front)
    sup = Extruded(name="mediastinum", layers=(Layer(0.0, -88.0, tex_fine=6.0, tex_coarse=10.0),),
                   table=np.stack([zs, cxs, cy, half_w, b, b, np.full(len(zs), 2.4)], axis=1),
                   z_lo=float(heart.extent()[1][2]) + 5.0)
    pz = np.array([zh - 200.0, zh, torso.apex_z + 40.0])
    ps = torso.spine_y(pz)
    post = Extruded(name="posterior_mediastinum", layers=(Layer(0.0, -85.0, tex_fine=6.0, tex_coarse=10.0),),
                    table=np.stack([pz, np.full(3, 8.0), ps - 24.0, np.full(3, 34.0), np.full(3, 24.0), np.full(3, 16.0), np.full(3, 2.2)], axis=1))
    return [sup, post]


def _airways(rng: np.random.Generator, torso: Torso, carina_z: float, hila: tuple[np.ndarray, np.ndarray]) -> tuple[list[Shape], np.ndarray]:
    """Trachea and main bronchi (cartilage wall around air), oesophagus with an occasional air lumen."""
    zh = torso.z_heart
    y_sp_c = float(torso.spine_y(np.array([carina_z]))[0])
    r_tr = float(rng.uniform(8.0, 10.5))
    tr_y = y_sp_c - rng.uniform(38.0, 46.0)
    trachea = paths.smooth_curve(np.array([
        [-2.0, float(torso.spine_y(np.array([zh + 260.0]))[0]) - 40.0, zh + 260.0],
        [-3.0, tr_y, carina_z + 30.0], [0.0, tr_y + 2.0, carina_z],
    ]), 3.0)
    carina = trachea[-1]
    hr, hl = hila
    right = paths.smooth_curve(np.array([carina, [-22.0, carina[1] + 8.0, carina_z - 15.0], [hr[0] + 15.0, hr[1] + 8.0, hr[2] - 5.0]]), 3.0)
    left = paths.smooth_curve(np.array([carina, [25.0, carina[1] + 12.0, carina_z - 22.0], [hl[0] - 12.0, hl[1] + 10.0, hl[2] - 18.0]]), 3.0)
    segs = np.concatenate([paths.capsules(trachea, r_tr), paths.capsules(right, r_tr * 0.72), paths.capsules(left, r_tr * 0.66)])
    airway = Tubes(name="airways", layers=(Layer(0.0, 55.0, tex_fine=6.0), Layer(1.8, -1000.0)), segments=segs)
    es_r = float(rng.uniform(7.0, 9.0))
    es_x = float(rng.uniform(4.0, 10.0))
    zs = np.array([zh + 260.0, carina_z, zh, zh - 70.0])
    ys = torso.spine_y(zs) - [22.0, 20.0, 24.0, 30.0]
    oes = paths.smooth_curve(np.stack([np.array([es_x, es_x, es_x + 6.0, es_x + 25.0]), ys, zs], axis=1), 4.0)
    layers = (Layer(0.0, 38.0, tex_fine=4.0),)
    if rng.random() < 0.5:
        layers = layers + (Layer(es_r - rng.uniform(1.5, 3.0), -1000.0),)
    return [airway, Tubes(name="oesophagus", layers=layers, segments=paths.capsules(oes, es_r))], carina


class _LungTest:
    """Vectorised 'is this point in the lung?' used to grow the vessel trees inside the lungs."""

    def __init__(self, torso: Torso, heart: Heart, organ_blobs: list[np.ndarray], carina_z: float):
        self.torso = torso
        self.heart = heart
        self.organs = organ_blobs
        self.carina_z = carina_z

    def __call__(self, p: np.ndarray) -> np.ndarray:
        t = self.torso
        cx, cy, a, bant, bpost, ex = t.cavity_params(p[:, 2])
        dx = np.abs(p[:, 0] - cx) / a
        b = np.where(p[:, 1] < cy, bant, bpost)
        dy = np.abs(p[:, 1] - cy) / b
        rho = (dx**ex + dy**ex) ** (1 / ex)
        ok = (rho < 0.95) & (p[:, 2] < t.apex_z - 3.0) & (p[:, 2] > t.z_heart - 130.0)
        ok &= np.abs(p[:, 0] - 5.0) > 32.0  # mediastinum
        ok &= self.heart.distance(p) > 8.0
        for e in self.organs:
            ok &= raster.blob_distance_points(np.ascontiguousarray(p), np.ascontiguousarray(e), 15.0) > 5.0
        return ok


def _lung_tree(rng: np.random.Generator, hilum: np.ndarray, side: float, inside: _LungTest, max_segments: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """A random branching vessel tree from one hilum (radius ratio ≈ Murray's law), and bronchi.

    Grown one generation at a time (vectorised): each branch runs 3–5 radii (+4 mm), stops where
    it would leave the lung, and splits in two (sometimes three) thinner children that spread
    outwards from the hilum, down to ≈ 0.8 mm radius (thinner vessels vanish in thick slices).
    """
    roots = np.array([(0.3, 0.0, 1.0), (0.5, -0.5, 0.7), (0.8, 0.0, 0.3), (0.6, -0.6, -0.2), (0.5, 0.3, -0.8), (0.2, 0.8, -0.6),
                      (0.7, -0.3, -0.7), (0.6, 0.6, 0.3), (0.4, 0.7, 0.5), (0.3, -0.8, -0.5)])
    d = roots * np.array([side, 1.0, 1.0]) + rng.normal(0, 0.15, roots.shape)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    p = np.repeat(hilum[None], len(d), 0)
    r = rng.uniform(4.0, 5.5, len(d))
    segs, bronchi = [], []
    n_total = 0
    for gen in range(15):
        if len(p) == 0 or n_total >= max_segments:
            break
        length = r * rng.uniform(3.5, 6.0, len(r)) + 5.0
        end = p + d * length[:, None]
        if gen > 0:
            ok = inside(end)
            half = p + d * (0.5 * length)[:, None]
            ok_half = ~ok & inside(half)
            end = np.where(ok_half[:, None], half, end)
            keep = ok | ok_half
            p, d, r, end = p[keep], d[keep], r[keep], end[keep]
        if len(p) > max_segments - n_total:
            pick = rng.choice(len(p), max_segments - n_total, replace=False)
            p, d, r, end = p[pick], d[pick], r[pick], end[pick]
        segs.append(np.concatenate([p, end, r[:, None], 0.95 * r[:, None]], axis=1))
        n_total += len(p)
        helper = np.where(np.abs(d[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
        n1 = np.cross(d, helper)
        n1 /= np.linalg.norm(n1, axis=1, keepdims=True)
        n2 = np.cross(d, n1)
        big = r >= 2.5
        if big.any():
            off = n1[big] * (1.6 * r[big] + 0.8)[:, None]
            rb = 0.6 * r[big][:, None]
            bronchi.append(np.concatenate([p[big] + off, end[big] + off, rb, 0.95 * rb], axis=1))
        grow = r >= 0.8
        p, d, r, end, n1, n2 = p[grow], d[grow], r[grow], end[grow], n1[grow], n2[grow]
        m = len(p)
        if m == 0:
            break
        n_child = np.where(rng.random(m) < 0.15, 3, 2)
        parent = np.repeat(np.arange(m), n_child)
        k = np.concatenate([np.arange(c) for c in n_child])
        phi = rng.uniform(0, 2 * np.pi, m)[parent] + 2 * np.pi * k / n_child[parent]
        ang = np.deg2rad(rng.uniform(15.0, 42.0, len(parent)))
        outward = end[parent] - hilum
        outward /= np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-6)
        nd = (np.cos(ang)[:, None] * d[parent]
              + np.sin(ang)[:, None] * (np.cos(phi)[:, None] * n1[parent] + np.sin(phi)[:, None] * n2[parent])
              + 0.25 * outward)
        d = nd / np.linalg.norm(nd, axis=1, keepdims=True)
        p = end[parent]
        r = r[parent] * rng.uniform(0.72, 0.9, len(parent))
    return np.concatenate(segs), (np.concatenate(bronchi) if bronchi else np.zeros((0, 8)))


def _table(rng: np.random.Generator, torso: Torso) -> Extruded:
    """Curved carbon-fibre couch under the patient (chest scans show it at the image bottom)."""
    zh = torso.z_heart
    body = torso.body_params(np.array([zh]))
    y_top = float(body[1][0] + body[4][0]) + rng.uniform(0.0, 2.0)
    b = 60.0
    t = np.array([[zh - 400.0, 0.0, y_top + b, 230.0, b, b, 2.0], [zh + 400.0, 0.0, y_top + b, 230.0, b, b, 2.0]])
    return Extruded(name="table", layers=(Layer(0.0, 180.0), Layer(2.2, -880.0, tex_fine=10.0)), table=t)


def draw_patient(rng: np.random.Generator, z_heart: float, with_table: bool, detail: bool = True,
                 cartilage_foci: tuple[np.random.Generator, float] | None = None,
                 lean_fat: tuple[np.random.Generator, float] | None = None) -> Patient:
    """Draw a whole patient whose heart centre is at height ``z_heart`` (mm, DICOM z).

    ``cartilage_foci``: (its own generator, probability) of patchy costal-cartilage calcium
    (``skeleton.draw_skeleton``); drawn from that generator only, so ``rng``'s draws do not change.
    ``lean_fat``: the same for lean coronary sleeves (``coronaries.draw_pads``).

    ``detail=False`` stops after the parts that place the scan (torso, heart, great vessels,
    coronaries, diaphragm): no shapes to paint, a fraction of the cost. The parts drawn are the same
    as with ``detail=True`` for the same generator state.
    """
    # heart first (its depth sets how deep the chest must be), then the torso around it; the heart
    # is then shifted so its front sits just behind the sternum
    hx = float(rng.uniform(8.0, 28.0))
    heart0 = draw_heart(rng, np.array([hx, 0.0, z_heart]))
    lo, hi = heart0.extent()
    gap = float(rng.uniform(3.0, 9.0))
    torso = draw_torso(rng, z_heart, min_depth_mm=float(hi[1] - lo[1]) + heart0.fat_mm + gap + 14.0)
    front = float(torso.cavity_front_y(np.array([z_heart]))[0])
    shift = np.array([0.0, front + gap + heart0.fat_mm - lo[1], 0.0])
    heart = Heart(frame=type(heart0.frame)(heart0.frame.origin + shift, heart0.frame.u, heart0.frame.a, heart0.frame.l),
                  scale=heart0.scale, chambers={k: (c + shift, r) for k, (c, r) in heart0.chambers.items()},
                  blob_params=heart0.blob_params.copy(), smooth_mm=heart0.smooth_mm, fat_mm=heart0.fat_mm)
    heart.blob_params[:, :3] += shift
    spine_xy = np.array([0.0, float(torso.spine_y(np.array([z_heart]))[0])])
    carina_z = z_heart + float(rng.uniform(62.0, 82.0))
    dome_z = z_heart - float(rng.uniform(15.0, 35.0))
    vessels = draw_great_vessels(rng, heart, spine_xy, z_heart - 260.0, carina_z)
    arteries = draw_arteries(rng, heart)
    patient = Patient(torso=torso, heart=heart, vessels=vessels, arteries=arteries, shapes=[],
                      carina_z=carina_z, dome_z=dome_z, lung_hu=-860.0)
    if not detail:
        return patient
    organ_shapes, organ_blobs = _organs(rng, torso, dome_z)
    airway_shapes, _ = _airways(rng, torso, carina_z, vessels.hila)
    inside = _LungTest(torso, heart, organ_blobs, carina_z)
    trees, bronchi = [], []
    for hil, side in zip(vessels.hila, (-1.0, 1.0)):
        v, b = _lung_tree(rng, hil, side, inside)
        trees.append(v)
        bronchi.append(b)
    lung_hu = float(rng.uniform(-870.0, -800.0))
    shapes: list[Shape] = []
    if with_table:
        shapes.append(_table(rng, torso))
    shapes += [
        Extruded(name="body", layers=(Layer(0.0, 30.0, tex_fine=6.0), Layer(1.8, -102.0, tex_fine=6.0, tex_coarse=7.0)), table=torso.body),
        Extruded(name="chest_wall", layers=(Layer(0.0, 48.0, tex_fine=5.0, tex_coarse=6.0, wobble_mm=2.5),), table=torso.inner),
        Extruded(name="lungs", layers=(Layer(0.0, lung_hu, tex_fine=14.0, tex_coarse=12.0),), table=torso.cavity,
                 z_lo=z_heart - 130.0, z_hi=torso.apex_z, grad_y=0.45, grad_y_ref=0.0),
        Tubes(name="lung_vessels", layers=(Layer(0.0, 40.0),), segments=np.concatenate(trees), mask_mode=1),
        Tubes(name="bronchi", layers=(Layer(0.0, -150.0), Layer(0.6, -1000.0)), segments=np.concatenate(bronchi), mask_mode=1),
        Extruded(name="abdomen", layers=(Layer(0.0, -45.0, tex_fine=10.0, tex_coarse=30.0),), table=torso.cavity,
                 z_hi=z_heart - 110.0),
    ]
    shapes += organ_shapes
    shapes += _mediastinum(torso, heart, carina_z)
    shapes += draw_skeleton(rng, torso, cartilage_foci).shapes
    shapes += airway_shapes
    shapes += vessel_shapes(vessels)
    shapes += [fat_pads(rng, heart), heart_shape(heart)]
    pads = draw_pads(lean_fat[0], arteries, lean_fat[1]) if lean_fat is not None else None
    shapes += artery_shapes(arteries, pads)
    patient.shapes = shapes
    patient.lung_hu = lung_hu
    return patient
