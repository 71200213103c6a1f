"""Calcium that belongs to the skeleton: large 3D components of the calcium mask.

Why: the segmenter sometimes puts a piece of rib, sternum or vertebra in an artery (the v1 U-Net did for
199 lesions on the 40 held-out phantoms, and for posterior ribs on the COCA scans). A coronary
calcification is a deposit in the wall of a 2-5 mm artery; at HU ≥ 130 it is its own small 3D
component. Bone is not: ribs, sternum and spine join into components of tens to hundreds of cm³. Measured
(``python scripts/skeletal-calcium-probe.py``): on the held-out phantoms every model lesion on bone lay in a
component above 2,000 mm³ and no true coronary lesion in one above 500 mm³; on the COCA ROIs the largest
component under a coronary ROI is 134 mm³, the largest (bone) components of a scan 146,000-491,000 mm³. So, in model mode, a
lesion whose component exceeds ``AgatstonConfig.skeletal_component_mm3`` is excluded and listed in the
report with the reason; it is not counted.

How: the components are 26-connected (8-connected in each slice, and across neighbouring slices with
any of the 9 pixels around). Slices are labelled one at a time with the Numba 2D labeller, and the 2D
components of neighbouring slices are joined in a union-find over their ids, so memory is two slices of
labels and one integer per 2D component, not an int32 copy of the volume. A 2D lesion is a connected
part of the calcium mask, so it lies in exactly one 3D component: excluding the voxels of the large
components removes whole lesions, never parts of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from numba import njit

from cacstream.engine.scoring.ccl import label_slice

#: Why a lesion was excluded, in the report.
SKELETAL_REASON = "skeletal"


@njit(cache=True, nogil=True, inline="always")
def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True, nogil=True)
def _link_slices(prev: np.ndarray, idx: np.ndarray, lab: np.ndarray, cols: int, off_prev: int, off_cur: int,
                 parent: np.ndarray) -> None:
    """Union every calcium pixel's component (``idx``/``lab``: the current slice, sparse) with the
    components of ``prev`` (dense labels of the slice before) in its 3×3 window."""
    rows = prev.shape[0]
    for k in range(idx.shape[0]):
        r = idx[k] // cols
        c = idx[k] - r * cols
        a = off_cur + lab[k]
        for dr in range(-1, 2):
            rr = r + dr
            if rr < 0 or rr >= rows:
                continue
            for dc in range(-1, 2):
                cc = c + dc
                if cc < 0 or cc >= cols:
                    continue
                b = prev[rr, cc]
                if b == 0:
                    continue
                ra = _find(parent, a)
                rb = _find(parent, off_prev + b)
                if ra < rb:
                    parent[rb] = ra
                elif rb < ra:
                    parent[ra] = rb


@njit(cache=True, nogil=True)
def _component_voxels(parent: np.ndarray, sizes: np.ndarray, n: int) -> np.ndarray:
    """Voxels of the 3D component of every 2D component id 1..n (index 0 unused)."""
    total = np.zeros(n + 1, np.int64)
    for i in range(1, n + 1):
        total[_find(parent, i)] += sizes[i]
    out = np.zeros(n + 1, np.int64)
    for i in range(1, n + 1):
        out[i] = total[_find(parent, i)]
    return out


def slice_components(mask2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The 8-connected components of one plane's calcium mask, sparse: (flat indices of the calcium
    pixels, int32, raster order; their component labels 1..n, int32; n). What the stream keeps per slice
    (8 bytes per calcium pixel) so that completion does not label every slice again."""
    return sparse_components(*label_slice(np.asarray(mask2d), 8))


def sparse_components(lab: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`slice_components`' sparse form of an 8-connected label image already made (``label_slice``)."""
    flat = lab.ravel()
    idx = np.flatnonzero(flat).astype(np.int32)
    return idx, flat[idx].astype(np.int32), n


def dense_labels(idx: np.ndarray, labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The int32 label image of :func:`slice_components`' sparse form."""
    out = np.zeros(shape[0] * shape[1], np.int32)
    out[idx] = labels
    return out.reshape(shape)


def large_component_masks(
    n_slices: int,
    calcium: Callable[[int], np.ndarray] | None,
    voxel_mm3: float,
    max_component_mm3: float,
    query: Iterable[int],
    *,
    components: Callable[[int], tuple[np.ndarray, np.ndarray, int]] | None = None,
    shape: tuple[int, int] | None = None,
) -> dict[int, np.ndarray]:
    """For each slice index in ``query``: the boolean mask of its calcium voxels whose 26-connected 3D
    component is larger than ``max_component_mm3`` (voxels × ``voxel_mm3``).

    Slices in spatial order, given either as ``calcium(z)``, the boolean calcium mask (HU ≥ threshold),
    or, when they are already known, as ``components(z)``, the sparse 8-connected components of
    :func:`slice_components`, with the plane ``shape``.
    """
    if voxel_mm3 <= 0:
        raise ValueError(f"voxel volume must be > 0 mm³, got {voxel_mm3}")
    if (calcium is None) == (components is None) or (components is not None and shape is None):
        raise ValueError("give calcium(z), or components(z) with the plane shape")
    if calcium is not None:
        def sparse(z: int) -> tuple[np.ndarray, np.ndarray, int]:
            return slice_components(calcium(z))  # type: ignore[misc]
        get = sparse
    else:
        get = components  # type: ignore[assignment]
    wanted = {int(z) for z in query}
    parent = np.arange(1024, dtype=np.int64)
    sizes = np.zeros(1024, np.int64)
    n_total = 0
    prev, prev_off = None, 0
    kept: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
    plane: tuple[int, int] | None = shape
    for z in range(n_slices):
        if calcium is not None and plane is None:
            plane = tuple(np.asarray(calcium(z)).shape)  # type: ignore[assignment]
        idx, lab, n = get(z)
        assert plane is not None
        off = n_total
        if off + n + 1 > parent.size:  # grow the union-find arrays
            cap = max(2 * parent.size, off + n + 1)
            parent = np.concatenate([parent, np.arange(parent.size, cap, dtype=np.int64)])
            sizes = np.concatenate([sizes, np.zeros(cap - sizes.size, np.int64)])
        if n:
            sizes[off + 1 : off + n + 1] = np.bincount(lab, minlength=n + 1)[1:]
            if prev is not None:
                _link_slices(prev, idx, lab, plane[1], prev_off, off, parent)
        if z in wanted:
            kept[z] = (idx, lab, off)
        prev, prev_off = dense_labels(idx, lab, plane), off
        n_total += n
    voxels = _component_voxels(parent, sizes, n_total)
    large = voxels.astype(np.float64) * float(voxel_mm3) > float(max_component_mm3)
    large[0] = False
    out = {}
    assert plane is not None or not kept
    for z, (idx, lab, off) in kept.items():
        mask = np.zeros(plane[0] * plane[1], bool)  # type: ignore[index]
        mask[idx] = large[off + lab]
        out[z] = mask.reshape(plane)  # type: ignore[arg-type]
    return out
