"""The naive serial baseline of ``bench pipeline``: how a first prototype would score a series.

pydicom ``dcmread`` of every file → numpy HU (pixel_array × slope + intercept) → slices sorted by
position → one slice at a time through the slice filter AND the U-Net in PyTorch eager (no batching,
no slice filter decision: every slice is segmented) → argmax → nearest resize back →
``scipy.ndimage.label`` per slice → Agatston. Same models, same preprocessing semantics (training's torch
reference), same Agatston convention as the engine: only the engineering differs, so the speedup the
benchmark reports is the engine's, not a different algorithm's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cacstream.engine.config import AgatstonConfig


@dataclass
class NaiveResult:
    agatston_total: float
    slices: int
    stages_ms: dict[str, float] = field(default_factory=dict)
    total_ms: float = 0.0


@dataclass
class NaiveModels:
    """The PyTorch modules (eval mode, CPU) and preprocessing of a weights folder."""

    filter_model: Any
    segmenter_model: Any
    filter_cfg: Any
    segmenter_cfg: Any
    threshold: float

    @classmethod
    def load(cls, weights_dir: Path) -> NaiveModels:
        from cacstream.training.weights import load_weights

        b = load_weights(weights_dir)
        assert b.slice_filter is not None and b.segmenter is not None
        return cls(
            b.slice_filter.model.eval(),
            b.segmenter.model.eval(),
            b.slice_filter.preprocess,
            b.segmenter.preprocess,
            b.slice_filter.threshold,
        )


def _agatston_scipy(
    hu: np.ndarray, labels: np.ndarray, pixel_area: float, factor: float, cfg: AgatstonConfig,
    voxel_mm3: float | None = None, spacing_mm: tuple[float, float, float] | None = None,
    z_mm: Sequence[float] | None = None,
) -> float:
    """Per slice: scipy.ndimage.label of (HU ≥ threshold & label > 0), area ≥ min, weight by peak HU.
    First, as the engine does: with the claim rule configured, the labels of 2D calcium components
    claimed below ``cfg.min_claimed_share`` are dropped; then, with ``voxel_mm3`` and the skeletal check
    configured, the calcium of 3D components (scipy, 26-connected) larger than
    ``cfg.skeletal_component_mm3``; then, with ``spacing_mm`` (slice increment, row, column) and the
    bone-distance rule configured, every lesion closer than ``cfg.min_bone_distance_mm`` to that calcium
    (scipy's distance transform over the whole volume); last, with ``z_mm`` (and the spacing) and the
    cardiac-levels rule configured, the labels of the slices outside the heart's levels (the levels
    themselves from engine/scoring/cardiac_window.py: the anatomy is found, not benchmarked)."""
    from scipy import ndimage

    structure = np.ones((3, 3), bool) if cfg.connectivity == 8 else None
    if cfg.min_claimed_share is not None:  # the claim rule, per slice, before the skeletal check (as the engine)
        labels = np.array(labels, copy=True)
        for k in range(hu.shape[0]):
            if not labels[k].any():
                continue
            comp, n = ndimage.label(hu[k] >= cfg.threshold_hu, structure=structure)
            size = np.bincount(comp.ravel(), minlength=n + 1)
            claimed = np.bincount(comp[labels[k] > 0], minlength=n + 1)
            partial = (claimed > 0) & (claimed < cfg.min_claimed_share * size)
            partial[0] = False
            labels[k][partial[comp]] = 0
    if voxel_mm3 is not None and cfg.skeletal_component_mm3 is not None:
        lab3, _ = ndimage.label(hu >= cfg.threshold_hu, structure=np.ones((3, 3, 3), bool))
        big = np.bincount(lab3.ravel()) * voxel_mm3 > cfg.skeletal_component_mm3
        big[0] = False
        labels = np.where(big[lab3], 0, labels)
        bone = big[lab3]
        near = None
        if spacing_mm is not None and cfg.min_bone_distance_mm is not None and bone.any():
            near = ndimage.distance_transform_edt(~bone, sampling=spacing_mm) < cfg.min_bone_distance_mm
        if near is not None:
            labels = np.array(labels, copy=True)
            for k in np.nonzero(near.any(axis=(1, 2)))[0]:
                lab, _ = ndimage.label((hu[k] >= cfg.threshold_hu) & (labels[k] > 0), structure=structure)
                close = np.unique(lab[near[k] & (lab > 0)])
                labels[k][np.isin(lab, close[close > 0])] = 0
    if z_mm is not None and spacing_mm is not None and cfg.cardiac_levels:
        from cacstream.engine.scoring.cardiac_window import cardiac_levels, internal_air_mask

        levels = cardiac_levels([internal_air_mask(hu[k]) for k in range(hu.shape[0])], z_mm,
                                (spacing_mm[1], spacing_mm[2]), spacing_mm[0])  # z_mm: patient z, head up
        out = [k for k, z in enumerate(z_mm) if levels.outside(float(z))]
        if out:
            labels = np.array(labels, copy=True)
            labels[out] = 0
    t = cfg.weight_thresholds_hu
    total = 0.0
    for k in range(hu.shape[0]):
        mask = (hu[k] >= cfg.threshold_hu) & (labels[k] > 0)
        lab, n = ndimage.label(mask, structure=structure)
        for j in range(1, n + 1):
            comp = lab == j
            area = float(comp.sum()) * pixel_area
            if area < cfg.min_area_mm2:
                continue
            peak = float(hu[k][comp].max())
            w = 1 + (peak >= t[1]) + (peak >= t[2]) + (peak >= t[3])
            total += area * w
    return total * factor


def score_naive(files: list[Path], models: NaiveModels, cfg: AgatstonConfig | None = None) -> NaiveResult:
    import pydicom
    import torch
    import torch.nn.functional as F
    from cacstream.training.datasets.preprocess import preprocess_slices

    cfg = cfg or AgatstonConfig()
    st: dict[str, float] = {"read_decode": 0.0, "filter": 0.0, "segment": 0.0, "agatston": 0.0}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    items = []
    for f in files:
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
            getattr(ds, "RescaleIntercept", 0)
        )
        items.append((float(ds.ImagePositionPatient[2]), hu, ds))
    items.sort(key=lambda x: x[0])
    hu_vol = np.stack([h for _, h, _ in items])
    ds0 = items[0][2]
    ps = [float(v) for v in ds0.PixelSpacing]
    z = [p for p, _, _ in items]
    increment = float(np.median(np.diff(z))) if len(z) > 1 else float(ds0.SliceThickness)
    eff = min(float(ds0.SliceThickness), abs(increment))
    st["read_decode"] = (time.perf_counter() - t0) * 1e3
    labels = np.zeros(hu_vol.shape, np.uint8)
    with torch.no_grad():
        for k in range(hu_vol.shape[0]):
            t0 = time.perf_counter()
            x = preprocess_slices(hu_vol[k], models.filter_cfg)
            p = torch.sigmoid(models.filter_model(x)).item()  # computed, but every slice is segmented anyway
            st["filter"] += (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            xs = preprocess_slices(hu_vol[k], models.segmenter_cfg)
            lab = models.segmenter_model(xs).argmax(dim=1)
            lab = F.interpolate(lab[:, None].float(), size=hu_vol.shape[1:], mode="nearest-exact")[0, 0]
            labels[k] = lab.to(torch.uint8).numpy()
            st["segment"] += (time.perf_counter() - t0) * 1e3
            del p
    t0 = time.perf_counter()
    total = _agatston_scipy(hu_vol, labels, ps[0] * ps[1], eff / cfg.reference_thickness_mm, cfg,
                            voxel_mm3=ps[0] * ps[1] * abs(increment),
                            spacing_mm=(abs(increment), float(ps[0]), float(ps[1])), z_mm=z)
    st["agatston"] = (time.perf_counter() - t0) * 1e3
    return NaiveResult(total, int(hu_vol.shape[0]), st, (time.perf_counter() - t_all) * 1e3)
