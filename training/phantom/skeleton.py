"""Bones of the chest: thoracic spine, ribs with costal cartilage, sternum, scapulae, clavicles.

Bone is a cortical shell (≈ 1000–1200 HU, 1–1.5 mm) around cancellous marrow (≈ 200–300 HU with a
trabecular texture); after the PSF the shell's peak stays ≥ 700 HU, as on real scans. Ribs slope
down from the spine to the front; in an axial slice they show as 6–9 obliquely cut ovals per side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cacstream.training.phantom import paths
from cacstream.training.phantom.shapes import Extruded, Layer, Shape, Tubes
from cacstream.training.phantom.torso import Torso

CORTEX_HU = 1000.0
MARROW_HU = 240.0


def _bone_layers(cortex_mm: float, cortex_hu: float = CORTEX_HU, marrow_hu: float = MARROW_HU) -> tuple[Layer, ...]:
    """Cortical shell then textured marrow (the trabecular pattern is the fine texture)."""
    return (
        Layer(0.0, cortex_hu, tex_fine=40.0, dense=True),
        Layer(cortex_mm, marrow_hu, tex_fine=55.0, tex_coarse=25.0, dense=True),
    )


def _cartilage_foci(rng: np.random.Generator, probability: float, curves: list[np.ndarray]) -> list[Shape]:
    """Patchy calcification of the costal cartilage: short dense capsules on the cartilage's centre
    line, in its middle half (so never touching rib or sternum), 0-2 per cartilage. Real costal
    cartilage calcifies in foci like these; each is its own small calcium component, which the
    skeletal check (large components only) cannot exclude and a segmenter must learn to leave out."""
    if rng.random() >= probability or not curves:
        return []
    hu = float(np.exp(rng.uniform(np.log(250.0), np.log(800.0))))
    segs = []
    for curve in curves:
        step = np.linalg.norm(np.diff(curve, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(step)])
        if s[-1] <= 0:
            continue
        for _ in range(int(rng.integers(0, 3))):
            at = float(rng.uniform(0.25, 0.75)) * s[-1]
            half = float(rng.uniform(0.75, 3.0))
            ends = np.stack([np.interp([at - half, at + half], s, curve[:, d]) for d in range(3)], axis=1)
            segs.append(paths.capsules(ends, float(rng.uniform(0.7, 2.0))))
    if not segs:
        return []
    return [Tubes(name="cartilage_foci", layers=(Layer(0.0, hu, tex_fine=40.0, dense=True),), segments=np.concatenate(segs))]


@dataclass
class Skeleton:
    shapes: list[Shape]
    vertebra_z: np.ndarray


def _constant_table(z_lo: float, z_hi: float, cx: float, cy: float, a: float, bant: float, bpost: float, ex: float) -> np.ndarray:
    return np.array([[z_lo, cx, cy, a, bant, bpost, ex], [z_hi, cx, cy, a, bant, bpost, ex]])


def draw_skeleton(rng: np.random.Generator, torso: Torso,
                  cartilage_foci: tuple[np.random.Generator, float] | None = None) -> Skeleton:
    """Spine, ribs, cartilage, sternum, scapulae and clavicles for this torso; with ``cartilage_foci``
    (generator, probability) sometimes patchy calcified foci in the costal cartilage too."""
    zh = torso.z_heart
    z_lo, z_hi = zh - 260.0, zh + 260.0
    zs = np.arange(z_lo, z_hi + 1.0, 20.0)
    vb_a = float(rng.uniform(17.0, 22.0))
    vb_b = float(rng.uniform(13.0, 16.0))
    spine_y = torso.spine_y(zs)
    shapes: list[Shape] = []

    def spine_table(a_add: float, bant_add: float, bpost_add: float, dy: float, ex: float) -> np.ndarray:
        n = len(zs)
        return np.stack([zs, np.zeros(n), spine_y + dy, np.full(n, vb_a + a_add), np.full(n, vb_b + bant_add),
                         np.full(n, vb_b + bpost_add), np.full(n, ex)], axis=1)

    shapes.append(Extruded(name="paraspinal", layers=(Layer(0.0, 42.0, tex_fine=4.0, tex_coarse=5.0),),
                           table=spine_table(14.0, 6.0, 30.0, 4.0, 2.0)))
    shapes.append(Extruded(name="discs", layers=(Layer(0.0, 78.0, tex_fine=3.0),), table=spine_table(-0.5, -0.5, -3.5, 0.0, 2.3)))
    # vertebral bodies (pitch ≈ 26 mm, disc ≈ 6 mm)
    pitch = float(rng.uniform(24.0, 28.0))
    disc = float(rng.uniform(4.5, 6.5))
    phase = float(rng.uniform(0, pitch))
    vz = np.arange(z_lo + phase, z_hi, pitch)
    cortex = float(rng.uniform(1.0, 1.4))
    for k, z in enumerate(vz):
        y = float(torso.spine_y(np.array([z]))[0])
        grow = 1.0 + 0.004 * (zh - z) / 10.0  # lower vertebrae are larger
        a, b = vb_a * grow, vb_b * grow
        t = _constant_table(z - pitch, z + pitch, 0.0, y, a, b, b * 0.8, 2.2)
        shapes.append(Extruded(name=f"vertebra_{k}", layers=_bone_layers(cortex), table=t,
                               z_lo=z - (pitch - disc) / 2, z_hi=z + (pitch - disc) / 2))
    # spinal canal (cord + CSF) behind the bodies
    canal = spine_table(0.0, 0.0, 0.0, 0.0, 2.0)
    canal[:, 2] = spine_y + vb_b * 0.8 + 9.5
    canal[:, 3:6] = (9.0, 8.0, 8.0)
    shapes.append(Extruded(name="canal", layers=(Layer(0.0, 18.0, tex_fine=3.0),), table=canal))
    # posterior elements per vertebra: pedicles, laminae, spinous and transverse processes
    segs = []
    for z in vz:
        y = float(torso.spine_y(np.array([z]))[0])
        yb = y + vb_b * 0.8  # back of the body
        back_wall = float(torso.posterior_wall_mm(np.array([z]))[0])
        zt = z + 4.0
        for side in (-1.0, 1.0):
            segs.append([side * 11.0, yb - 2.0, zt, side * 11.5, yb + 13.0, zt, 4.2, 4.0])  # pedicle
            segs.append([side * 11.5, yb + 13.0, zt, side * 3.0, yb + 21.0, zt - 2.0, 3.6, 3.4])  # lamina
            segs.append([side * 11.5, yb + 13.0, zt, side * 30.0, yb + 20.0, zt + 1.0, 4.2, 3.8])  # transverse
        tip = min(yb + 21.0 + rng.uniform(22.0, 30.0), yb + back_wall - 8.0)
        segs.append([0.0, yb + 21.0, zt - 2.0, 0.0, tip, zt - 16.0, 4.0, 3.2])  # spinous (slopes down)
    shapes.append(Tubes(name="vertebral_arches", layers=_bone_layers(1.2, 950.0, 260.0), segments=np.array(segs, float)))

    shapes += _ribs_and_sternum(rng, torso, vz, cartilage_foci)
    return Skeleton(shapes=shapes, vertebra_z=vz)


def _ribs_and_sternum(rng: np.random.Generator, torso: Torso, vz: np.ndarray,
                      cartilage_foci: tuple[np.random.Generator, float] | None = None) -> list[Shape]:
    zh = torso.z_heart
    # rib k (1..12) leaves the spine at the level of vertebra T_k; T1 sits near the lung apex
    pitch = float(np.median(np.diff(vz)))
    top = torso.apex_z - rng.uniform(5.0, 15.0)
    rib_r = float(rng.uniform(4.0, 5.2))
    calcified = rng.random() < 0.35
    rib_segs, cart_segs, cart_curves = [], [], []
    # sternum: manubrium on top, body, xiphoid; its back touches the cavity's front
    st_top = zh + rng.uniform(105.0, 125.0)
    man_bottom = st_top - rng.uniform(40.0, 50.0)
    st_bottom = zh - rng.uniform(35.0, 55.0)
    xiph_bottom = st_bottom - rng.uniform(15.0, 25.0)
    st_z = np.array([xiph_bottom, st_bottom, st_bottom + 5, man_bottom - 5, man_bottom + 5, st_top - 8, st_top])
    st_a = np.array([6.0, 9.0, 13.0, 15.0, 20.0, 26.0, 22.0]) * rng.uniform(0.9, 1.1)
    st_b = np.array([3.5, 5.0, 6.0, 6.5, 8.0, 8.5, 7.0]) * rng.uniform(0.9, 1.1)
    front = torso.cavity_front_y(st_z)
    st_table = np.stack([st_z, np.zeros(7), front - st_b - 0.5, st_a, st_b, st_b, np.full(7, 3.2)], axis=1)
    sternum = Extruded(name="sternum", layers=_bone_layers(1.1, 900.0, 260.0), table=st_table, z_lo=xiph_bottom, z_hi=st_top)
    for k in range(12):
        z0 = top - k * pitch
        th_end = np.deg2rad([150, 150, 152, 155, 156, 155, 150, 138, 130, 122, 95, 80][k])
        drop = [25, 35, 45, 55, 65, 75, 85, 90, 90, 85, 60, 45][k] * rng.uniform(0.85, 1.15)
        th0 = np.deg2rad(18.0)
        for side in (-1.0, 1.0):
            th = np.linspace(th0, th_end, 28)
            frac = (th - th0) / (th_end - th0)
            z = z0 - 6.0 - drop * (1.0 - (1.0 - frac) ** 2.2)
            cx, cy, a, bant, bpost, _ = torso.cavity_params(z)
            off = rib_r + 1.5
            x = side * (a + off) * np.sin(th) + cx
            b = np.where(np.cos(th) >= 0, bpost, bant)
            y = cy + (b + off) * np.cos(th)
            y_sp = float(torso.spine_y(np.array([z0]))[0])
            head = np.array([[side * 20.0, y_sp + 6.0, z0 + 2.0], [side * 31.0, y_sp + 19.0, z0 + 1.0]])
            curve = np.concatenate([head, np.stack([x, y, z], axis=1)])
            curve = paths.smooth_curve(curve, 3.0)
            rib_segs.append(paths.capsules(curve, rib_r))
            if k < 10:  # costal cartilage to the sternum (ribs 8–10 join the cartilage above)
                end = curve[-1]
                zst = float(np.clip(st_top - 12.0 - k * 20.0, st_bottom + 5.0, st_top - 5.0))
                if k >= 7:
                    zst = st_bottom + 8.0
                yst = float(torso.cavity_front_y(np.array([zst]))[0]) - 5.0
                ast = float(np.interp(zst, st_z, st_a))
                mid = np.array([0.5 * (end[0] + side * ast), min(end[1], yst) - 3.0, 0.5 * (end[2] + zst)])
                cart = paths.smooth_curve(np.array([end, mid, [side * (ast + 1.0), yst, zst]]), 3.0)
                cart_segs.append(paths.capsules(cart, rib_r * 0.95))
                cart_curves.append(cart)
    cart_layers = (
        (Layer(0.0, 420.0, tex_fine=60.0, dense=True), Layer(0.9, 125.0, tex_fine=8.0))
        if calcified else (Layer(0.0, 125.0, tex_fine=8.0),)
    )
    shapes: list[Shape] = [
        Tubes(name="ribs", layers=_bone_layers(1.2, 950.0, 240.0), segments=np.concatenate(rib_segs)),
        Tubes(name="costal_cartilage", layers=cart_layers, segments=np.concatenate(cart_segs)),
        sternum,
    ]
    if cartilage_foci is not None and cartilage_foci[1] > 0.0:
        shapes += _cartilage_foci(cartilage_foci[0], cartilage_foci[1], cart_curves)
    shapes += _scapulae_clavicles(rng, torso, st_top)
    return shapes


def _scapulae_clavicles(rng: np.random.Generator, torso: Torso, st_top: float) -> list[Shape]:
    """Scapular blades behind the upper ribs and the clavicles from the manubrium outwards."""
    zh = torso.z_heart
    segs = []
    z_bottom = zh + rng.uniform(30.0, 55.0)
    z_top = torso.apex_z + rng.uniform(-5.0, 15.0)
    for z in np.arange(z_bottom, z_top, 2.5):
        cx, cy, a, bant, bpost, _ = torso.cavity_params(np.array([z]))
        frac = (z - z_bottom) / (z_top - z_bottom)
        width = 0.55 + 0.45 * np.sin(np.pi * min(frac * 1.3, 1.0))  # narrow at the tip, widest above
        for side in (-1.0, 1.0):
            lat = np.array([side * (a[0] * 0.92 + 12.0), cy[0] + bpost[0] * 0.45 + 14.0, z])
            med = np.array([side * (60.0 + 8 * frac), cy[0] + bpost[0] + 24.0, z])
            mid = 0.5 * (lat + med) + np.array([side * 4.0, 6.0, 0.0])  # blade bowed over the ribs
            med = lat + (med - lat) * width
            mid = lat + (mid - lat) * width
            segs.append(np.concatenate([lat, mid, [2.2, 1.4]]))
            segs.append(np.concatenate([mid, med, [1.4, 1.6]]))
    cl = []
    zc = st_top - 6.0
    for side in (-1.0, 1.0):
        front = float(torso.cavity_front_y(np.array([zc]))[0])
        cav = torso.cavity_params(np.array([zc + 10.0]))
        curve = paths.smooth_curve(np.array([
            [side * 24.0, front - 10.0, zc],
            [side * 60.0, front - 14.0, zc + 12.0],
            [side * (cav[2][0] + 25.0), cav[1][0] + 10.0, zc + 22.0],
        ]), 3.0)
        cl.append(paths.capsules(curve, 6.0))
    return [
        Tubes(name="scapulae", layers=_bone_layers(1.0, 950.0, 300.0), segments=np.array(segs)),
        Tubes(name="clavicles", layers=_bone_layers(1.4, 1000.0, 260.0), segments=np.concatenate(cl)),
    ]
