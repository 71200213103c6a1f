"""Truth masks and the truth record of a phantom.

What a perfect segmenter's mask is (the definition used for ``labels``):

    A voxel belongs to artery A's calcium iff
      1. its reconstructed HU (blur + noise + quantisation) is ≥ 130 — the Agatston threshold; the
         engine intersects labels with HU ≥ 130 anyway, so nothing else could ever count;
      2. artery A's plaques contribute at least ``label_support_hu`` (10 HU) to the noise-free
         blurred image there, and more than any other calcified source (another artery, aortic /
         valve calcium) — the voxel lies in the plaque's blurred footprint, blooming included;
      3. its in-slice 8-connected blob of such voxels reaches a plaque contribution of at least
         ``label_min_contrast_hu`` (30 HU) somewhere — so the blob is the plaque seen through noise,
         not a noise spike that happens to touch the faint fringe of a plaque.

So the mask is exactly the ≥ 130 HU blob a reader outlines around a plaque (blooming and partial
volume included, as in the COCA ROIs), and nothing the plaque did not cause.

``other_calcium`` marks voxels ≥ 130 HU caused by non-coronary dense matter: bone, costal
cartilage, aortic wall calcium and valve/annulus calcium (noise-free blurred base ≥ 95 HU, which
soft tissue never reaches, or a non-coronary plaque's footprint). Labels and other_calcium never
overlap.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.domain import ARTERIES
from cacstream.engine.scoring.results import AgatstonResult
from cacstream.engine.series.types import AcquisitionInfo, Geometry
from cacstream.training.phantom.plaques import OTHER_CLASS

#: In-plane 8-connectivity, no connection across slices (lesions are 2D, per axial slice).
_STRUCT_2D = np.zeros((3, 3, 3), dtype=bool)
_STRUCT_2D[1] = True


def calcium_masks(
    hu: np.ndarray,
    source_hu: np.ndarray,
    source_class: np.ndarray,
    dense_base: np.ndarray,
    threshold_hu: float,
    support_hu: float,
    min_contrast_hu: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8, other_calcium bool) per the definition in the module docstring.

    source_hu / source_class: per voxel, the largest blurred plaque contribution (HU) and whose it
    is (1..4 artery, OTHER_CLASS non-coronary, 0 none). dense_base: bool, the noise-free blurred image
    without coronary plaques is ≥ DENSE_BASE_HU there (bone, cartilage, aortic/valve calcium).
    """
    calc = hu >= threshold_hu
    labels = np.zeros(hu.shape, dtype=np.uint8)
    footprint = np.nonzero(source_hu >= support_hu)  # sparse: plaque footprints only
    cls = source_class[footprint]
    hot = calc[footprint]
    for a in range(1, len(ARTERIES) + 1):
        sel_a = hot & (cls == a)
        if not sel_a.any():
            continue
        idx = tuple(v[sel_a] for v in footprint)
        # label only the box that holds candidates (a few plaques in a large volume)
        box = tuple(slice(int(v.min()), int(v.max()) + 1) for v in idx)
        cand = np.zeros(tuple(b.stop - b.start for b in box), dtype=bool)
        where = tuple(v - b.start for v, b in zip(idx, box))
        cand[where] = True
        lab, n = ndi.label(cand, structure=_STRUCT_2D)
        ids = lab[where]
        peak = np.zeros(n + 1, dtype=np.float64)
        np.maximum.at(peak, ids, source_hu[idx])
        keep = peak >= min_contrast_hu
        keep[0] = False
        sel = keep[ids]
        labels[tuple(v[sel] for v in idx)] = a
    other = calc & (labels == 0) & (
        dense_base | ((source_class == OTHER_CLASS) & (source_hu >= support_hu))
    )
    return labels, other


def result_dict(result: AgatstonResult) -> dict:
    """JSON form of an Agatston result (per artery, lesions, risk)."""
    return {
        "agatston_total": result.agatston_total,
        "agatston_per_artery": dict(result.agatston_per_artery),
        "volume_mm3_total": result.volume_mm3_total,
        "volume_mm3_per_artery": dict(result.volume_mm3_per_artery),
        "risk_category": result.risk_category,
        "thickness_factor": result.thickness_factor,
        "lesions": [
            {
                "slice_index": les.slice_index, "z_mm": les.z_mm, "n_pixels": les.n_pixels,
                "area_mm2": les.area_mm2, "peak_hu": les.peak_hu, "mean_hu": les.mean_hu,
                "weight": les.weight, "score": les.score, "artery": les.artery,
                "centroid_rc": list(les.centroid_rc), "volume_mm3": les.volume_mm3,
            }
            for les in result.lesions
        ],
        "config": result.config,
    }


def geometry_dict(g: Geometry, origin_xy_mm: tuple[float, float]) -> dict:
    return {
        "rows": g.rows, "columns": g.columns, "pixel_spacing_mm": list(g.pixel_spacing_mm),
        "slice_thickness_mm": g.slice_thickness_mm, "slice_increment_mm": g.slice_increment_mm,
        "normal": list(g.normal), "z_mm": list(g.z_mm), "origin_xy_mm": list(origin_xy_mm),
        "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    }


def acquisition_dict(a: AcquisitionInfo) -> dict:
    return {"manufacturer": a.manufacturer, "model": a.model, "kvp": a.kvp,
            "convolution_kernel": a.convolution_kernel, "ecg_gated": a.ecg_gated}


def score_truth(hu: np.ndarray, geometry: Geometry, labels: np.ndarray | None) -> AgatstonResult:
    """Agatston on the phantom's own image with the project's scorer (default convention; every labelled
    lesion counts: the skeletal check guards model labels, truth labels need none)."""
    from cacstream.engine.scoring.agatston import score_volume

    return score_volume(hu, geometry, labels, AgatstonConfig().for_reference_labels())


def slice_flags(result: AgatstonResult, n_slices: int) -> list[bool]:
    """Per slice: does it hold at least one scored coronary lesion (the slice filter's target)."""
    flags = [False] * n_slices
    for les in result.lesions:
        if les.artery is not None:
            flags[les.slice_index] = True
    return flags
