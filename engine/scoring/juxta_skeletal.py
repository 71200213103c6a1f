"""Calcium beside bone: a lesion that comes within a few millimetres of the skeleton is not coronary.

Why: the coronary arteries run in epicardial fat under the pericardium; between them and any bone lie
the pericardium, mediastinal fat and the chest wall. On the real COCA scans, every expert ROI lesion is
at least 20 mm from the skeleton (bone-sized calcium, ``skeleton.py``), and the phantoms' coronary
lesions at least 10 mm; the lesions the phantom-trained U-Net puts in an artery within 8 mm of the
skeleton are calcified costal cartilage, rib edges and other chest-wall calcium that is not joined to
the bone at 130 HU, so the skeletal check cannot see it (docs/models.md, "Calcium beside bone"). So, in
model mode, a lesion with a pixel closer than ``AgatstonConfig.min_bone_distance_mm`` (3D, mm) to
calcium of a bone-sized component is excluded and listed with the reason ``juxta_skeletal``.

How: per lesion, the skeletal masks of the slices within that distance are cropped to the lesion's
bounding box grown by the distance, and a Euclidean distance transform with the voxel spacing
(slice increment, pixel spacing) measures the gap. Skeletal voxels outside that box are farther than
the distance in the plane, so the crop never changes the answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import scipy.ndimage as ndi

#: Why a lesion was excluded, in the report.
JUXTA_REASON = "juxta_skeletal"


def slab_reach(increment_mm: float, distance_mm: float) -> int:
    """How many slices on each side of a lesion can hold bone closer than ``distance_mm``."""
    return int(math.floor(distance_mm / increment_mm + 1e-9)) if increment_mm > 0 else 0


def slabs(slices: Iterable[int], n_slices: int, increment_mm: float, distance_mm: float) -> list[int]:
    """The lesion slices and their neighbours within ``distance_mm``: the slices whose skeletal masks
    :func:`near_skeleton` reads."""
    k = slab_reach(increment_mm, distance_mm)
    out: set[int] = set()
    for z in slices:
        out.update(range(max(0, z - k), min(n_slices, z + k + 1)))
    return sorted(out)


def near_skeleton(
    components: np.ndarray,
    n: int,
    z: int,
    skeletal: Mapping[int, np.ndarray],
    spacing_mm: tuple[float, float, float],
    distance_mm: float,
) -> np.ndarray:
    """(n + 1,) bool: which of slice ``z``'s 2D components (``components``: int labels 1..n) have a pixel
    closer than ``distance_mm`` to a skeletal voxel. ``skeletal``: the skeletal calcium mask of every
    slice within reach (:func:`slabs`); ``spacing_mm``: (slice increment, row, column spacing)."""
    out = np.zeros(n + 1, bool)
    if n == 0:
        return out
    inc, py, px = (float(v) for v in spacing_mm)
    k = slab_reach(inc, distance_mm)
    zs = [zz for zz in range(z - k, z + k + 1) if zz in skeletal or zz == z]
    if not any(skeletal[zz].any() for zz in zs if zz in skeletal):
        return out
    rows, cols = components.shape
    empty = np.zeros((rows, cols), bool)
    my, mx = int(math.ceil(distance_mm / py)), int(math.ceil(distance_mm / px))
    for idx, sl in enumerate(ndi.find_objects(components), start=1):
        if sl is None:
            continue
        r0, r1 = max(0, sl[0].start - my), min(rows, sl[0].stop + my)
        c0, c1 = max(0, sl[1].start - mx), min(cols, sl[1].stop + mx)
        slab = np.stack([skeletal.get(zz, empty)[r0:r1, c0:c1] for zz in zs])
        if not slab.any():
            continue
        gap = ndi.distance_transform_edt(~slab, sampling=(inc, py, px))[zs.index(z)]
        out[idx] = bool(np.any(gap[components[r0:r1, c0:c1] == idx] < distance_mm))
    return out
