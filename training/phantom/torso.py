"""The torso envelope: body outline, subcutaneous fat, chest wall and thoracic cavity along z.

Each is an axial superellipse whose size follows a profile along z (narrowing to the lung apices,
the belly widening below the diaphragm); everything else is placed relative to these envelopes,
so a drawn body size, fat thickness or chest-wall thickness moves all organs consistently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: z knots relative to the heart centre (mm) and the body's size profile (relative to heart level).
_Z = np.array([-260.0, -130.0, -90.0, -50.0, 0.0, 50.0, 90.0, 120.0, 150.0, 175.0, 200.0, 260.0])
_A = np.array([0.96, 0.97, 0.98, 1.0, 1.0, 1.0, 0.99, 0.97, 0.95, 0.93, 0.9, 0.85])
_BANT = np.array([1.1, 1.06, 1.02, 1.0, 1.0, 0.98, 0.94, 0.9, 0.86, 0.8, 0.75, 0.7])
_BPOST = np.array([0.96, 0.97, 0.98, 1.0, 1.0, 1.0, 0.99, 0.97, 0.94, 0.9, 0.87, 0.8])


@dataclass
class Torso:
    """Envelopes as z tables (rows: z, cx, cy, a, b_anterior, b_posterior, exponent)."""

    z_heart: float
    apex_z: float
    body: np.ndarray
    inner: np.ndarray
    cavity: np.ndarray
    spine_offset_mm: float
    fat_mm: float

    def _interp(self, table: np.ndarray, z) -> tuple[np.ndarray, ...]:
        z = np.atleast_1d(np.asarray(z, dtype=np.float64))
        return tuple(np.interp(z, table[:, 0], table[:, c]) for c in range(1, 7))

    def cavity_params(self, z) -> tuple[np.ndarray, ...]:
        """(cx, cy, a, b_anterior, b_posterior, exponent) of the thoracic cavity at z."""
        return self._interp(self.cavity, z)

    def body_params(self, z) -> tuple[np.ndarray, ...]:
        return self._interp(self.body, z)

    def cavity_front_y(self, z) -> np.ndarray:
        cx, cy, a, bant, bpost, ex = self.cavity_params(z)
        return cy - bant

    def cavity_back_y(self, z) -> np.ndarray:
        cx, cy, a, bant, bpost, ex = self.cavity_params(z)
        return cy + bpost

    def spine_y(self, z) -> np.ndarray:
        """y of the vertebral bodies' centres (they bulge forward into the cavity)."""
        return self.cavity_back_y(z) - self.spine_offset_mm

    def posterior_wall_mm(self, z) -> np.ndarray:
        """Thickness of muscle behind the cavity (where the spinous processes live)."""
        i = self._interp(self.inner, z)
        return (i[1] + i[4]) - self.cavity_back_y(z)

    @property
    def body_diameter_mm(self) -> float:
        """Water-equivalent-ish diameter at heart level (drives the noise level)."""
        cx, cy, a, bant, bpost, ex = self.body_params(self.z_heart)
        return float(2.0 * np.sqrt(a[0] * 0.5 * (bant[0] + bpost[0])))


def draw_torso(rng: np.random.Generator, z_heart: float, min_depth_mm: float = 0.0) -> Torso:
    """Body size, fat and wall thicknesses drawn per patient. The chest is made deep enough that
    the sternum-to-vertebra distance at heart level is at least ``min_depth_mm`` (room for the heart)."""
    size = float(np.clip(rng.normal(1.0, 0.07), 0.86, 1.18))
    a0 = rng.uniform(150.0, 178.0) * size
    bant0 = rng.uniform(100.0, 122.0) * size
    bpost0 = rng.uniform(110.0, 128.0) * size
    ex = rng.uniform(2.1, 2.6)
    fat = float(rng.uniform(6.0, 30.0))
    z = z_heart + _Z
    n = len(z)
    body = np.stack([z, np.zeros(n), np.zeros(n), a0 * _A, bant0 * _BANT, bpost0 * _BPOST, np.full(n, ex)], axis=1)
    inner = body.copy()
    inner[:, 3] -= fat * 0.9
    inner[:, 4] -= fat * 0.8
    inner[:, 5] -= fat * 0.5
    inner[:, 6] = ex * 0.95
    w_lat = rng.uniform(10.0, 15.0)
    w_ant = rng.uniform(9.0, 14.0)
    w_post = rng.uniform(18.0, 28.0)
    apex_z = z_heart + rng.uniform(160.0, 185.0)
    cav = inner.copy()
    front = -inner[:, 4] + w_ant
    back = inner[:, 5] - w_post
    cav[:, 2] = 0.5 * (front + back)
    cav[:, 3] = inner[:, 3] - w_lat
    cav[:, 4] = cav[:, 5] = 0.5 * (back - front)
    cav[:, 6] = 2.2
    # dome of the apices: shrink above 110 mm over the heart
    dome = np.clip((z - (z_heart + 110.0)) / (apex_z - (z_heart + 110.0)), 0.0, 1.0)
    f = np.sqrt(np.clip(1.0 - dome**2, 0.04, 1.0))
    cav[:, 3] *= f
    cav[:, 4] *= f
    cav[:, 5] *= f
    cav[:, 2] += (1.0 - f) * 15.0  # apices sit posteriorly
    # add knots just below/at the apex so the dome is resolved
    extra_z = z_heart + 110.0 + (apex_z - z_heart - 110.0) * np.array([0.3, 0.55, 0.75, 0.9, 1.0])
    rows = []
    for ze in extra_z:
        row = [ze] + [float(np.interp(ze, cav[:, 0], cav[:, c])) for c in range(1, 7)]
        d = (ze - (z_heart + 110.0)) / (apex_z - (z_heart + 110.0))
        base_row = [ze] + [float(np.interp(ze, inner[:, 0], inner[:, c])) for c in range(1, 7)]
        fr = float(np.sqrt(max(1.0 - d**2, 0.04)))
        fr_front = -base_row[4] + w_ant
        fr_back = base_row[5] - w_post
        row[2] = 0.5 * (fr_front + fr_back) + (1 - fr) * 15.0
        row[3] = (base_row[3] - w_lat) * fr
        row[4] = row[5] = 0.5 * (fr_back - fr_front) * fr
        rows.append(row)
    cav = np.concatenate([cav, np.array(rows)])
    cav = cav[np.argsort(cav[:, 0])]
    torso = Torso(z_heart=z_heart, apex_z=float(apex_z), body=body, inner=inner, cavity=cav,
                  spine_offset_mm=float(rng.uniform(32.0, 45.0)), fat_mm=fat)
    depth = float(torso.spine_y(z_heart)[0] - 15.0 - torso.cavity_front_y(z_heart)[0])
    if depth < min_depth_mm:  # deepen the back: body, chest wall and cavity grow posteriorly
        d = min_depth_mm - depth
        body[:, 5] += d
        inner[:, 5] += d
        cav[:, 2] += d / 2.0
        cav[:, 4] += d / 2.0
        cav[:, 5] += d / 2.0
    return torso
