"""The claim rule: calcium the segmenter assigns to an artery only in part is not counted.

Why: a coronary calcification is a deposit in the wall of a 2-5 mm artery; in a slice it is its own
connected calcium component (HU ≥ 130), and a segmenter that recognises it labels all of it. When the
U-Net labels only part of a component, it has drawn the artery's edge *through* one piece of calcium:
the rest of that piece is aortic wall, valve annulus or bone the network saw as not coronary, and the
labelled part is the same calcium. Measured (``python scripts/lesion-features-probe.py --first 6000
--no-claim-rule``,
40 development phantoms that neither training nor the held-out set uses, shipped v1.2 weights): every
one of 329 lesions on true coronary calcium had at least 81 % of its component labelled (325 of them
100 %), while 33 of the 124 lesions on other calcium had less than 80 %. Excluding lesions whose
component is claimed below ``AgatstonConfig.min_claimed_share`` (0.75) raised their risk-category
accuracy from 75 % to 82.5 % and cut the mean score error from +29 to +10
(``python scripts/claim-rule-choice.py``); 1.0 did a little better there but drops true plaques for
one unlabelled edge pixel, 0.75 keeps a margin below the smallest true share. The held-out figures are
in docs/models.md.

The rule is per slice (Agatston lesions are 2D), so the streaming engine applies it as each slice is
scored. A dropped component is listed in the report's ``excluded_lesions`` with the reason
``partial_claim``, not silently lost. Components are formed exactly as lesions are (the scoring
threshold in the HU array's own dtype, the scoring connectivity, the engine's Numba labeller).
"""

from __future__ import annotations

import numpy as np
from cacstream.engine.scoring.ccl import label_slice, threshold_for

#: Why a lesion was excluded, in the report.
CLAIM_REASON = "partial_claim"


def split_partial_claims(
    hu2d: np.ndarray, labels2d: np.ndarray, threshold_hu: float, connectivity: int, min_share: float,
    components: tuple[np.ndarray, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One slice → (labels without the partly claimed components, labels of only those, or None).

    A calcium component (HU ≥ ``threshold_hu``, ``connectivity``-connected) is *partly claimed* when
    some but fewer than ``min_share`` of its pixels carry an artery label; all of its labelled pixels
    move to the second map. Labelled pixels below the threshold are left alone (they never score).
    ``components``: the calcium's ``label_slice`` image and count when the caller has them already
    (same threshold and connectivity), so the plane is labelled once."""
    labels = np.asarray(labels2d)
    if labels.shape != np.shape(hu2d):
        raise ValueError(f"labels {labels.shape} and HU {np.shape(hu2d)} differ in shape")
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    claimed_px = labels > 0
    if not claimed_px.any():
        return labels2d, None
    if components is None:
        hu = np.asarray(hu2d)
        components = label_slice(hu >= threshold_for(hu.dtype, threshold_hu), connectivity)
    comp, n = components
    if n == 0:
        return labels2d, None
    total = np.bincount(comp.ravel(), minlength=n + 1)
    claimed = np.bincount(comp[claimed_px], minlength=n + 1)
    partial = (claimed > 0) & (claimed < min_share * total)
    partial[0] = False
    if not partial.any():
        return labels2d, None
    mask = partial[comp]
    kept = np.where(mask, 0, labels).astype(labels.dtype)
    dropped = np.where(mask, labels, 0).astype(labels.dtype)
    return kept, dropped


def split_partial_claims_volume(
    hu: np.ndarray, labels: np.ndarray, threshold_hu: float, connectivity: int, min_share: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`split_partial_claims` on every labelled slice of a volume (input labels are not modified)."""
    labelled = np.flatnonzero(np.asarray(labels).reshape(len(labels), -1).max(axis=1, initial=0) > 0)
    kept: np.ndarray | None = None
    dropped: np.ndarray | None = None
    for z in labelled.tolist():
        k, d = split_partial_claims(hu[z], labels[z], threshold_hu, connectivity, min_share)
        if d is None:
            continue
        if kept is None:
            kept = np.array(labels, dtype=np.uint8, copy=True)
            dropped = np.zeros_like(kept)
        kept[z] = k
        dropped[z] = d  # type: ignore[index]
    return (labels, None) if kept is None else (kept, dropped)
