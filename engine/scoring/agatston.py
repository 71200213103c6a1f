"""Agatston, volume and mass scores from HU slices and (optionally) a per-artery label volume.

The convention (DESIGN.md, every knob in :class:`~cacstream.engine.config.AgatstonConfig`):

* calcium = pixels with HU >= ``threshold_hu`` inside the calcium mask. With a label volume the mask is
  ``labels > 0`` (model / truth mode); without one (``labels=None``, threshold mode) the whole slice
  counts, bone included, and lesions get ``artery=None``: they count in the totals, in no artery;
* lesion = 2D connected component in one axial slice (8-connectivity, or 4), computed in Numba
  (:mod:`cacstream.engine.scoring.ccl`);
* area = pixel count x pixel area (mm², float64); a lesion is kept when area >= ``min_area_mm2``
  (inclusive);
* weight from the lesion's PEAK HU with ``weight_thresholds_hu`` = (t1, t2, t3, t4): 1 below t2,
  2 in [t2, t3), 3 in [t3, t4), 4 at or above t4. A lesion whose peak is below t1 (possible only when
  ``threshold_hu`` < t1) still gets weight 1: it passed the calcium threshold and 1 is the lowest class;
* lesion score = area x weight (not normalised); series total = sum of lesion scores x thickness
  factor, where factor = effective thickness / ``reference_thickness_mm`` (effective thickness = slice
  thickness, or the slice increment when reconstructions overlap), or 1 when ``normalise_thickness``
  is off. Per-artery totals use the same factor, so they add up to the total when every lesion has an
  artery;
* volume = lesion pixels x voxel volume (pixel area x slice increment, mm³), not thickness-normalised;
* mass (only with ``mass_calibration_mg_per_hu_cm3`` = c): lesion mass in mg = mean HU x volume in cm³
  (mm³ / 1000) x c, c in mg / (HU·cm³) (mg of calcium hydroxyapatite per cm³ per HU, from a calibration
  phantom; ~0.7-0.8 at 120 kV);
* artery of a lesion = the most frequent non-zero label among its pixels; a tie goes to the artery
  listed first in ``ARTERIES`` (LM < LAD < LCX < RCA, i.e. the lowest label).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.domain import ARTERIES, LABEL_ARTERY, risk_category
from cacstream.engine.scoring.ccl import (
    ComponentTable,
    label_slice,
    slice_components,
    threshold_for,
    volume_components,
    warmup,
)
from cacstream.engine.scoring.claims import CLAIM_REASON, split_partial_claims_volume
from cacstream.engine.scoring.cardiac_window import WINDOW_REASON
from cacstream.engine.scoring.juxta_skeletal import JUXTA_REASON
from cacstream.engine.scoring.results import AgatstonResult, Lesion
from cacstream.engine.scoring.skeleton import SKELETAL_REASON, large_component_masks
from cacstream.engine.series.types import Geometry

__all__ = [
    "label_slice",
    "lesions_from_table",
    "score_volume",
    "scored_labels",
    "score_volume_and_labels",
    "slice_lesions",
    "split_juxta_skeletal",
    "split_partial",
    "split_skeletal",
    "summarise",
    "thickness_factor",
    "volume_table",
    "warmup",
    "weights_for_peaks",
]

#: How ties in the artery vote are broken (recorded in the report).
ARTERY_TIE_BREAK = "lowest label (LM < LAD < LCX < RCA)"


def weights_for_peaks(peak_hu: np.ndarray, weight_thresholds_hu: Sequence[float]) -> np.ndarray:
    """Agatston density weight (1..4) of each lesion from its peak HU (float64 comparisons)."""
    t = np.asarray(weight_thresholds_hu, dtype=np.float64)
    peak = np.asarray(peak_hu, dtype=np.float64)
    w = 1 + (peak >= t[1]).astype(np.int64) + (peak >= t[2]) + (peak >= t[3])
    return w.astype(np.int64)


def thickness_factor(geometry: Geometry, config: AgatstonConfig) -> float:
    """Effective thickness / reference thickness (1 when normalisation is off)."""
    eff = geometry.effective_thickness_mm
    if not (math.isfinite(eff) and eff > 0):
        raise ValueError(
            f"effective slice thickness must be > 0 mm (thickness {geometry.slice_thickness_mm}, "
            f"increment {geometry.slice_increment_mm})"
        )
    return eff / config.reference_thickness_mm if config.normalise_thickness else 1.0


def _check_spacing(pixel_spacing_mm: Sequence[float]) -> float:
    if len(pixel_spacing_mm) != 2 or not all(math.isfinite(s) and s > 0 for s in pixel_spacing_mm):
        raise ValueError(f"pixel spacing must be two positive mm values, got {tuple(pixel_spacing_mm)}")
    return float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1])


def lesions_from_table(
    table: ComponentTable,
    pixel_area_mm2: float,
    z_mm: Sequence[float] | Mapping[int, float],
    voxel_depth_mm: float,
    config: AgatstonConfig,
) -> list[Lesion]:
    """Lesion records from kept components (``z_mm[i]``: position of slice ``i``)."""
    if len(table) == 0:
        return []
    n = table.n_pixels
    area = n * pixel_area_mm2
    weight = weights_for_peaks(table.peak_hu, config.weight_thresholds_hu)
    score = area * weight
    mean = table.sum_hu / n
    cr = table.sum_row / n
    cc = table.sum_col / n
    vol = area * voxel_depth_mm
    out: list[Lesion] = []
    for s, k, a, pk, mh, w, sc, lab, r, c, v in zip(
        table.slice_index.tolist(), n.tolist(), area.tolist(), table.peak_hu.tolist(), mean.tolist(),
        weight.tolist(), score.tolist(), table.majority_label.tolist(), cr.tolist(), cc.tolist(),
        vol.tolist(),
    ):
        out.append(Lesion(
            slice_index=s, z_mm=float(z_mm[s]), n_pixels=k, area_mm2=a, peak_hu=pk, mean_hu=mh, weight=w,
            score=sc, artery=LABEL_ARTERY.get(lab), centroid_rc=(r, c), volume_mm3=v,
        ))
    return out


def slice_lesions(
    hu2d: np.ndarray,
    labels2d: np.ndarray | None,
    pixel_spacing_mm: tuple[float, float],
    slice_index: int,
    z_mm: float,
    voxel_depth_mm: float,
    config: AgatstonConfig = AgatstonConfig(),
) -> list[Lesion]:
    """Lesions of one slice, for the streaming engine (serial, GIL-free, thread-safe).

    ``labels2d=None`` is threshold mode (whole slice, ``artery=None``); ``voxel_depth_mm`` is the z
    extent of a voxel for the volume score (the series' slice increment).
    """
    pixel_area = _check_spacing(pixel_spacing_mm)
    table = slice_components(hu2d, labels2d, config.threshold_hu, config.connectivity, pixel_area,
                             config.min_area_mm2, slice_index=int(slice_index))
    z = {int(slice_index): float(z_mm)}
    return lesions_from_table(table, pixel_area, z, float(voxel_depth_mm), config)


def _sum(values: list[float]) -> float:
    return math.fsum(values)


def summarise(
    lesions: Sequence[Lesion], geometry: Geometry, config: AgatstonConfig = AgatstonConfig()
) -> AgatstonResult:
    """Series totals from lesions: thickness-normalised Agatston, volume, mass, per artery, risk."""
    factor = thickness_factor(geometry, config)
    per_score = {a: _sum([les.score for les in lesions if les.artery == a]) * factor for a in ARTERIES}
    per_volume = {a: _sum([les.volume_mm3 for les in lesions if les.artery == a]) for a in ARTERIES}
    total = _sum([les.score for les in lesions]) * factor
    volume = _sum([les.volume_mm3 for les in lesions])
    c = config.mass_calibration_mg_per_hu_cm3
    if c is None:
        mass_total, mass_per = None, None
    else:
        def mass(les: Lesion) -> float:
            return les.mean_hu * (les.volume_mm3 / 1000.0) * float(c)

        mass_total = _sum([mass(les) for les in lesions])
        mass_per = {a: _sum([mass(les) for les in lesions if les.artery == a]) for a in ARTERIES}
    cfg = config.to_dict()
    cfg.update({
        "thickness_factor": factor,
        "effective_thickness_mm": geometry.effective_thickness_mm,
        "slice_thickness_mm": float(geometry.slice_thickness_mm),
        "slice_increment_mm": float(geometry.slice_increment_mm),
        "pixel_area_mm2": geometry.pixel_area_mm2,
        "voxel_volume_mm3": geometry.voxel_volume_mm3,
        "artery_tie_break": ARTERY_TIE_BREAK,
        "mass_formula": "mean HU x volume cm3 x mass_calibration_mg_per_hu_cm3 -> mg",
    })
    return AgatstonResult(
        lesions=list(lesions),
        agatston_total=total,
        agatston_per_artery=per_score,
        volume_mm3_total=volume,
        volume_mm3_per_artery=per_volume,
        mass_mg_total=mass_total,
        mass_mg_per_artery=mass_per,
        risk_category=risk_category(total),
        thickness_factor=factor,
        config=cfg,
    )


def _check_volume(hu: np.ndarray, geometry: Geometry) -> None:
    expected = (geometry.n_slices, geometry.rows, geometry.columns)
    if np.ndim(hu) != 3 or tuple(np.shape(hu)) != expected:
        raise ValueError(f"HU volume shape {np.shape(hu)} does not match the geometry "
                         f"(slices, rows, columns) = {expected}")


def volume_table(
    hu: np.ndarray,
    geometry: Geometry,
    labels: np.ndarray | None = None,
    config: AgatstonConfig = AgatstonConfig(),
    n_threads: int | None = None,
) -> ComponentTable:
    """Kept components of the whole volume (slices in parallel): the fast core of :func:`score_volume`."""
    _check_volume(hu, geometry)
    pixel_area = _check_spacing(geometry.pixel_spacing_mm)
    return volume_components(hu, labels, config.threshold_hu, config.connectivity, pixel_area,
                             config.min_area_mm2, n_threads=n_threads)


def score_volume(
    hu: np.ndarray,
    geometry: Geometry,
    labels: np.ndarray | None = None,
    config: AgatstonConfig = AgatstonConfig(),
) -> AgatstonResult:
    """Score a whole series: HU (slices, rows, cols) + optional uint8 labels (0 bg, 1..4 arteries).

    With labels, the model-mode lesion rules of ``config`` run first, in this order: calcium components
    the labels claim only in part (``min_claimed_share``, engine/scoring/claims.py), then lesions in
    bone-sized 3D calcium components (``skeletal_component_mm3``, engine/scoring/skeleton.py), then
    lesions closer than ``min_bone_distance_mm`` to such components (engine/scoring/juxta_skeletal.py),
    then lesions above or below the heart's levels (``cardiac_levels``, engine/scoring/cardiac_window.py).
    Their lesions are excluded and returned in ``excluded_lesions`` with the reason. Reference labels
    (ROIs, phantom truth) are scored with :meth:`AgatstonConfig.for_reference_labels`, which turns them off."""
    return score_volume_and_labels(hu, geometry, labels, config)[0]


def score_volume_and_labels(
    hu: np.ndarray,
    geometry: Geometry,
    labels: np.ndarray | None = None,
    config: AgatstonConfig = AgatstonConfig(),
) -> tuple[AgatstonResult, np.ndarray | None]:
    """:func:`score_volume` and the labels it counted (``labels`` without what the rules excluded; None
    in threshold mode): for callers that need both, without running the rules twice."""
    excluded: list[tuple[Lesion, str]] = []
    if labels is not None:
        for reason, split in _MODEL_RULES:
            labels, dropped = split(hu, geometry, labels, config)
            if dropped is not None:
                t = volume_table(hu, geometry, dropped, config)
                excluded += [(les, reason) for les in lesions_from_table(
                    t, geometry.pixel_area_mm2, geometry.z_mm, float(geometry.slice_increment_mm), config)]
    table = volume_table(hu, geometry, labels, config)
    lesions = lesions_from_table(table, geometry.pixel_area_mm2, geometry.z_mm,
                                 float(geometry.slice_increment_mm), config)
    result = summarise(lesions, geometry, config)
    result.config["calcium_mask"] = "whole_slice" if labels is None else "labels>0"
    result.excluded_lesions = excluded
    return result, labels


def scored_labels(hu: np.ndarray, geometry: Geometry, labels: np.ndarray, config: AgatstonConfig) -> np.ndarray:
    """The labels :func:`score_volume` counts: ``labels`` without what the model-mode rules exclude."""
    counted = score_volume_and_labels(hu, geometry, labels, config)[1]
    assert counted is not None  # labels were given
    return counted


def split_partial(
    hu: np.ndarray, geometry: Geometry, labels: np.ndarray, config: AgatstonConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels without the partly claimed calcium components, labels of only those or None)."""
    if config.min_claimed_share is None:
        return labels, None
    return split_partial_claims_volume(hu, labels, config.threshold_hu, config.connectivity,
                                       float(config.min_claimed_share))


def _labelled_calcium(
    hu: np.ndarray, labels: np.ndarray, config: AgatstonConfig
) -> tuple[Callable[[int], np.ndarray], list[int]]:
    """(calcium mask of slice z, the slices where labels and calcium meet): what the volume rules read.
    The comparison is the kernels' exact one, without a float copy of the volume."""
    thr = threshold_for(np.asarray(hu).dtype, config.threshold_hu)

    def calcium(z: int) -> np.ndarray:
        return np.asarray(hu[z]) >= thr

    labelled = np.flatnonzero(np.asarray(labels).reshape(len(labels), -1).max(axis=1) > 0)
    return calcium, [int(z) for z in labelled if np.any(calcium(int(z)) & (labels[z] > 0))]


def split_skeletal(
    hu: np.ndarray, geometry: Geometry, labels: np.ndarray, config: AgatstonConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels without the skeletal calcium, labels of only the skeletal calcium or None when there is none)."""
    if config.skeletal_component_mm3 is None:
        return labels, None
    calcium, query = _labelled_calcium(hu, labels, config)
    if not query:
        return labels, None
    big = large_component_masks(len(hu), calcium, geometry.voxel_volume_mm3,
                                float(config.skeletal_component_mm3), query)  # type: ignore[arg-type]
    hit = [z for z in query if np.any(big[z] & (labels[z] > 0))]
    if not hit:
        return labels, None
    kept = np.array(labels, dtype=np.uint8, copy=True)
    dropped = np.zeros_like(kept)
    for z in hit:
        dropped[z] = np.where(big[z], kept[z], 0)
        kept[z][big[z]] = 0
    return kept, dropped


def split_juxta_skeletal(
    hu: np.ndarray, geometry: Geometry, labels: np.ndarray, config: AgatstonConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels without the lesions closer than ``min_bone_distance_mm`` to bone-sized calcium, labels of
    only those or None): engine/scoring/juxta_skeletal.py. Runs after :func:`split_skeletal`."""
    if not config.juxta_skeletal_rule:
        return labels, None
    from cacstream.engine.scoring.juxta_skeletal import near_skeleton, slabs

    calcium, lesion_slices = _labelled_calcium(hu, labels, config)
    if not lesion_slices:
        return labels, None
    inc, d = float(geometry.slice_increment_mm), float(config.min_bone_distance_mm)  # type: ignore[arg-type]
    big = large_component_masks(len(hu), calcium, geometry.voxel_volume_mm3, float(config.skeletal_component_mm3),  # type: ignore[arg-type]
                                slabs(lesion_slices, len(hu), inc, d))
    spacing = (inc, *(float(v) for v in geometry.pixel_spacing_mm))
    kept = np.array(labels, dtype=np.uint8, copy=True)
    dropped = np.zeros_like(kept)
    hit = False
    for z in lesion_slices:
        comps, n = label_slice((kept[z] > 0) & calcium(z), config.connectivity)
        near = near_skeleton(comps, n, z, big, spacing, d)  # type: ignore[arg-type]
        if near.any():
            mask = near[comps]
            dropped[z] = np.where(mask, kept[z], 0)
            kept[z][mask] = 0
            hit = True
    return (kept, dropped) if hit else (labels, None)


def split_outside_cardiac_levels(
    hu: np.ndarray, geometry: Geometry, labels: np.ndarray, config: AgatstonConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels without the slices outside the heart's levels, labels of only those or None):
    engine/scoring/cardiac_window.py."""
    if not config.cardiac_levels:
        return labels, None
    from cacstream.engine.scoring.cardiac_window import cardiac_levels_of_volume, outside_slices

    labelled = set(np.flatnonzero(np.asarray(labels).reshape(len(labels), -1).max(axis=1) > 0).tolist())
    if not labelled:
        return labels, None
    levels = cardiac_levels_of_volume(hu, geometry)
    out = [z for z in outside_slices(levels, geometry.z_mm) if z in labelled]
    if not out:
        return labels, None
    kept = np.array(labels, dtype=np.uint8, copy=True)
    dropped = np.zeros_like(kept)
    dropped[out] = kept[out]
    kept[out] = 0
    return kept, dropped


#: The model-mode lesion rules, in the order they run (the stream runs the first per slice, the others
#: at completion: the same order).
_MODEL_RULES = ((CLAIM_REASON, split_partial), (SKELETAL_REASON, split_skeletal),
                (JUXTA_REASON, split_juxta_skeletal), (WINDOW_REASON, split_outside_cardiac_levels))
