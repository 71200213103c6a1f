"""Calcium candidates: the slice-filter patches where Agatston scoring could count anything at all.

A lesion is a connected group of pixels at or above 130 HU whose area reaches 1 mm² (the Agatston
rule, ``AgatstonConfig``). So a filter patch that holds no pixel of such a 2D calcium component cannot
contribute a single point to any score, whatever the filter or the U-Net say about it. The *candidate
gate* uses that: a patch is flagged only when the filter's patch probability passes the threshold
**and** the patch holds a candidate; a slice is flagged when one of its patches is. The gated slice
logit is the maximum of the candidate patches' logits (a slice without a candidate is never flagged).

Why (docs/models.md, "The candidate gate"): the ``patch_max`` filter spreads a lesion's evidence onto
neighbouring soft-tissue patches and reacts to noise clusters; on the 40 held-out phantoms about half
of its false-positive gated-CT slices were flagged only on patches with no candidate. The gate only
withdraws patches that cannot hold a lesion pixel themselves (every lesion lies in a candidate
component). What it can change: a lesion in a patch the filter did *not* flag, which an ungated
filter segmented by luck because a candidate-free neighbour in the same segmentation core was flagged.
So a filter is trained with the gate (its slice logit and patch loss see candidate patches only, and
learns to flag the lesion's own patch), and weights trained so say it in ``config.json``
(``slice_filter.candidate_gate``); their threshold was chosen with it.

Patches are mapped to native pixels the way the segmentation regions paste labels back
(``runtime.nearest_indices``): native pixel ``r`` lies in the patch of served pixel
``nearest_indices(served, rows)[r]``. The components are labelled by the engine's Numba labeller
(``scoring.ccl.label_slice``), one slice at a time (about 1 ms for 512²), on the host.

The same labelling says which patches *one component* spans (:func:`candidate_reach`). The
segmentation regions use it so that a flagged lesion is segmented whole: a calcium component that
crosses from a flagged patch into patches the filter did not flag takes those patches along
(``regions.py``, mode ``components``), instead of being cut at the border of a segmented core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cacstream.engine.scoring.ccl import label_slice, threshold_for


@dataclass(frozen=True)
class CandidateRule:
    """What makes a calcium candidate: the Agatston lesion rule (the scoring config's, so the gate never
    hides what the scorer would count).

    Attributes:
        threshold_hu: a pixel is calcium at or above this (130 HU standard).
        min_area_mm2: a 2D component counts from this area on (1 mm² standard).
        connectivity: 8 (default) or 4, as the scorer forms lesions.
    """

    threshold_hu: float = 130.0
    min_area_mm2: float = 1.0
    connectivity: int = 8

    def __post_init__(self) -> None:
        if self.connectivity not in (4, 8):
            raise ValueError(f"candidate connectivity must be 4 or 8, got {self.connectivity}")
        if not self.min_area_mm2 >= 0:
            raise ValueError(f"candidate min_area_mm2 must be >= 0, got {self.min_area_mm2}")

    @classmethod
    def from_agatston(cls, config: Any) -> CandidateRule:
        """The rule of an ``AgatstonConfig`` (the one the series will be scored with)."""
        return cls(float(config.threshold_hu), float(config.min_area_mm2), int(config.connectivity))

    def to_dict(self) -> dict[str, Any]:
        return {"threshold_hu": self.threshold_hu, "min_area_mm2": self.min_area_mm2,
                "connectivity": self.connectivity}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateRule:
        return cls(float(d.get("threshold_hu", 130.0)), float(d.get("min_area_mm2", 1.0)),
                   int(d.get("connectivity", 8)))


def _candidate_components(hu2d: np.ndarray, pixel_area_mm2: float, rule: CandidateRule,
                          exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels (H, W) int32, keep (n + 1,) bool): the slice's 2D calcium components and which of them
    reach ``rule.min_area_mm2`` (area = pixel count × pixel area in float64, as the scorer decides) and
    hold no pixel of ``exclude`` ((H, W) bool, e.g. the skeletal calcium: see :func:`skeletal_calcium`)."""
    hu = np.asarray(hu2d)
    if hu.ndim != 2:
        raise ValueError(f"expected one (H, W) slice, got shape {hu.shape}")
    labels, n = label_slice(hu >= threshold_for(hu.dtype, rule.threshold_hu), rule.connectivity)
    if n == 0:
        return labels, np.zeros(1, bool)
    keep = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64) * float(pixel_area_mm2) >= rule.min_area_mm2
    if exclude is not None:
        ex = np.asarray(exclude, dtype=bool)
        if ex.shape != labels.shape:
            raise ValueError(f"exclusion mask of shape {ex.shape} for a slice of shape {labels.shape}")
        keep[np.unique(labels[ex])] = False
    keep[0] = False
    return labels, keep


def candidate_pixels(hu2d: np.ndarray, pixel_area_mm2: float, rule: CandidateRule,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: pixels of the 2D calcium components whose area reaches ``rule.min_area_mm2`` (and that
    hold no pixel of ``exclude``)."""
    labels, keep = _candidate_components(hu2d, pixel_area_mm2, rule, exclude)
    if not keep.any():
        return np.zeros(np.asarray(hu2d).shape, bool)
    return keep[labels]


def _patch_of_pixel(native: int, served: int, grid: int) -> np.ndarray:
    """Patch index (0..grid-1) of each native pixel along one axis (the regions' paste-back map)."""
    from cacstream.engine.inference.runtime import nearest_indices

    return nearest_indices(served, native) * grid // served


def pool_to_patches(mask: np.ndarray, served: int, grid: int) -> np.ndarray:
    """(grid, grid) bool: patches that hold at least one True pixel of the native (H, W) ``mask``."""
    h, w = mask.shape
    rows, cols = _patch_of_pixel(h, served, grid), _patch_of_pixel(w, served, grid)
    out = np.zeros((grid, grid), bool)
    ys, xs = np.nonzero(mask)
    out[rows[ys], cols[xs]] = True
    return out


def sparse_candidate_patches(idx: np.ndarray, labels: np.ndarray, n: int, shape: tuple[int, int],
                             pixel_area_mm2: float, rule: CandidateRule, served: int, grid: int,
                             exclude: np.ndarray | None = None) -> np.ndarray:
    """(grid, grid) bool: :func:`candidate_patches` of one slice from its calcium components already
    labelled (the sparse form of ``scoring.skeleton.slice_components``: flat pixel indices, their
    component labels 1..n). Valid when those components are the rule's: 8-connected at
    ``rule.threshold_hu`` (the scorer's components; completion has them, so it need not label again)."""
    out = np.zeros((grid, grid), bool)
    if n == 0 or idx.size == 0:
        return out
    keep = np.bincount(labels, minlength=n + 1).astype(np.float64) * float(pixel_area_mm2) >= rule.min_area_mm2
    if exclude is not None:
        keep[np.unique(labels[np.asarray(exclude, bool).ravel()[idx]])] = False
    keep[0] = False
    sel = idx[keep[labels]]
    rows, cols = _patch_of_pixel(shape[0], served, grid), _patch_of_pixel(shape[1], served, grid)
    out[rows[sel // shape[1]], cols[sel % shape[1]]] = True
    return out


def _per_slice_spacing(stack: np.ndarray, pixel_spacing_mm: Any) -> np.ndarray:
    """(N, 2) float64 spacing for N slices from one pair or one pair per slice (validated)."""
    spacing = np.asarray(pixel_spacing_mm, dtype=np.float64)
    if spacing.shape == (2,):
        spacing = np.broadcast_to(spacing, (stack.shape[0], 2))
    if spacing.shape != (stack.shape[0], 2) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"candidate gate: need a positive (row, column) pixel spacing per slice, got "
                         f"{np.asarray(pixel_spacing_mm).tolist()} for {stack.shape[0]} slices")
    return spacing


def _as_slices(hu: np.ndarray) -> np.ndarray:
    stack = np.asarray(hu)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"expected HU slices (N, H, W), got shape {stack.shape}")
    return stack


def skeletal_calcium(hu: np.ndarray, voxel_volume_mm3: float, max_component_mm3: float,
                     threshold_hu: float = 130.0) -> np.ndarray:
    """(N, H, W) bool: the calcium voxels of a whole series (HU slices in spatial order) whose 26-connected
    3D component is larger than ``max_component_mm3``: the calcium the scorer's skeletal check excludes
    (``scoring/skeleton.py``, the same labeller and union-find), so no candidate of the *skeletal gate*."""
    from cacstream.engine.scoring.skeleton import large_component_masks

    stack = _as_slices(hu)
    n = stack.shape[0]
    if n == 0:
        return np.zeros(stack.shape, bool)
    masks = large_component_masks(n, lambda z: stack[z] >= threshold_for(stack.dtype, threshold_hu),
                                  voxel_volume_mm3, max_component_mm3, range(n))
    return np.stack([masks[z] for z in range(n)])


def _exclusion_slices(exclude: np.ndarray | None, stack: np.ndarray) -> np.ndarray | None:
    """``exclude`` as (N, H, W) bool matching the slices, or None."""
    if exclude is None:
        return None
    ex = np.asarray(exclude, dtype=bool)
    if ex.ndim == 2:
        ex = ex[None]
    if ex.shape != stack.shape:
        raise ValueError(f"exclusion masks of shape {ex.shape} for slices of shape {stack.shape}")
    return ex


def candidate_reach(hu: np.ndarray, pixel_spacing_mm: Sequence[float] | Sequence[Sequence[float]],
                    served: int, grid: int, rule: CandidateRule, exclude: np.ndarray | None = None) -> np.ndarray:
    """(N, G², G²) bool for HU slices (N, H, W) or (H, W): ``reach[i, p, q]`` is True when one candidate
    component of slice ``i`` has pixels in both patch ``p`` and patch ``q`` (row-major patch indices).

    The diagonal is :func:`candidate_patches` (a patch reaches itself when it holds a candidate).
    ``pixel_spacing_mm``, ``served`` and ``exclude`` as for :func:`candidate_patches`."""
    stack = _as_slices(hu)
    spacing = _per_slice_spacing(stack, pixel_spacing_mm)
    ex = _exclusion_slices(exclude, stack)
    g2 = grid * grid
    out = np.zeros((stack.shape[0], g2, g2), bool)
    h, w = stack.shape[1:]
    rows, cols = _patch_of_pixel(h, served, grid), _patch_of_pixel(w, served, grid)
    for i in range(stack.shape[0]):
        labels, keep = _candidate_components(stack[i], float(spacing[i, 0] * spacing[i, 1]), rule,
                                             None if ex is None else ex[i])
        if not keep.any():
            continue
        ys, xs = np.nonzero(keep[labels])
        incidence = np.zeros((keep.size, g2), bool)  # component × patch
        incidence[labels[ys, xs], rows[ys] * grid + cols[xs]] = True
        incidence = incidence[keep].astype(np.int32)
        out[i] = (incidence.T @ incidence) > 0
    return out


def candidate_patches(hu: np.ndarray, pixel_spacing_mm: Sequence[float] | Sequence[Sequence[float]],
                      served: int, grid: int, rule: CandidateRule, exclude: np.ndarray | None = None) -> np.ndarray:
    """(N, grid, grid) bool for HU slices (N, H, W) or (H, W): the filter patches that hold a candidate.

    ``pixel_spacing_mm``: one (row, column) pair for every slice, or one pair per slice (a batch may mix
    series). ``served``: the filter's input side (its patch grid covers the served slice). ``exclude``:
    (N, H, W) or (H, W) bool; a component holding any of its pixels is no candidate (the skeletal gate)."""
    stack = _as_slices(hu)
    spacing = _per_slice_spacing(stack, pixel_spacing_mm)
    ex = _exclusion_slices(exclude, stack)
    out = np.zeros((stack.shape[0], grid, grid), bool)
    for i in range(stack.shape[0]):
        cand = candidate_pixels(stack[i], float(spacing[i, 0] * spacing[i, 1]), rule, None if ex is None else ex[i])
        out[i] = pool_to_patches(cand, served, grid)
    return out


def reach_diagonal(reach: np.ndarray) -> np.ndarray:
    """(N, G², G²) reach → (N, G, G) bool candidate patches (its diagonal)."""
    n, g2 = reach.shape[0], reach.shape[1]
    g = round(g2 ** 0.5)
    return np.diagonal(reach, axis1=1, axis2=2).reshape(n, g, g).copy()


def complete_components(flags: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """(N, G, G) flagged patches → the same plus every patch that a candidate component in a flagged
    patch reaches (one step: components that only touch an added patch do not pull in more)."""
    f = np.asarray(flags, dtype=bool)
    n = f.shape[0]
    flat = f.reshape(n, -1)
    grown = flat | (flat[:, :, None] & np.asarray(reach, dtype=bool)).any(axis=1)
    return grown.reshape(f.shape)


def gated_slice_logits(patch_logits: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(N,) float64: the maximum patch logit over each slice's candidate patches; -inf without one
    (its probability is 0: never flagged)."""
    p = np.asarray(patch_logits, dtype=np.float64).reshape(candidates.shape[0], -1)
    c = np.asarray(candidates, dtype=bool).reshape(p.shape)
    return np.where(c, p, -np.inf).max(axis=1, initial=-np.inf)
