"""The per-slice work every scoring path shares: decode → HU → (filter → segment) → lesions.

`cacstream score` and `cacstream watch` both score a series slice by slice with these functions, so
they cannot disagree. A slice is scored before its series is complete, i.e. before its final slice
index, z position and the series' slice increment are known: lesions are computed with a provisional
index 0, z 0 and voxel depth 1 mm, and :func:`place_lesions` (in ``finalize``) puts them in place once
the series geometry exists. The pixel area comes from the slice's own header, which equals the
series' (eligibility requires consistent pixel spacing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.domain import ARTERY_LABEL
from cacstream.engine.pipeline.skeletal_gate import GateEvidence
from cacstream.engine.scoring.results import Lesion
from cacstream.engine.series.types import SliceHeader

#: Label-map value of a lesion that has no artery (threshold mode: every calcium pixel of the slice).
UNASSIGNED_LABEL = 255


@dataclass(frozen=True)
class SliceJob:
    """One image plane to score. ``generation`` lets a re-opened series ignore stale results."""

    series_uid: str
    header: SliceHeader
    generation: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return self.header.key


@dataclass
class SliceOutcome:
    """What the pipeline learnt about one slice (provisional geometry, see module docstring).

    ``label_map``: uint8 (rows, columns) holding, for every pixel of a kept lesion, the lesion's artery
    label (1..4, or :data:`UNASSIGNED_LABEL` in threshold mode); None when the slice has no lesion.
    ``flagged``: the slice filter's decision (None in threshold mode). ``error``: why the slice could
    not be scored (the series then fails with that reason). ``calcium_components``: the plane's
    8-connected calcium components (HU ≥ threshold) in the sparse form of
    :func:`~cacstream.engine.scoring.skeleton.slice_components` (8 bytes per calcium pixel), kept in model
    mode for the 3D skeletal check at completion: labelled here, in parallel as slices arrive, so that
    completion only joins them. ``excluded``: lesions a per-slice model-mode rule took out (the claim
    rule, engine/scoring/claims.py), each with its reason, for the report's ``excluded_lesions``.
    ``gate_evidence``: what a flagged slice keeps for the skeletal gate at completion (the filter's
    output, its regions and the calcium pixels' HU and U-Net labels; ``pipeline/skeletal_gate.py``).
    ``internal_air``: the plane's air inside the body, sampled every 4th pixel and packed (about 2 KB),
    kept in model mode for the cardiac-levels rule at completion (engine/scoring/cardiac_window.py).
    """

    job: SliceJob
    lesions: list[Lesion] = field(default_factory=list)
    label_map: np.ndarray | None = None
    flagged: bool | None = None
    probability: float | None = None
    error: BaseException | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    calcium_components: tuple[np.ndarray, np.ndarray, int] | None = None
    excluded: list[tuple[Lesion, str]] = field(default_factory=list)
    gate_evidence: GateEvidence | None = None
    internal_air: np.ndarray | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.job.key


def decode_hu(header: SliceHeader) -> np.ndarray:
    """float32 HU of one plane: exactly what ``read_volume`` puts in the volume for that plane."""
    from cacstream.engine.series import decode_stored, to_hu

    return to_hu(decode_stored(header), header)


def pixel_spacing(header: SliceHeader) -> tuple[float, float]:
    if header.pixel_spacing_mm is None:
        raise ValueError(f"{header.path}: no PixelSpacing, the lesion areas cannot be measured")
    return (float(header.pixel_spacing_mm[0]), float(header.pixel_spacing_mm[1]))


def lesions_of_slice(
    hu2d: np.ndarray, labels2d: np.ndarray | None, header: SliceHeader, config: AgatstonConfig
) -> list[Lesion]:
    """Lesions of one plane with provisional placement (index 0, z 0, voxel depth 1 mm)."""
    from cacstream.engine.scoring.agatston import slice_lesions

    return slice_lesions(hu2d, labels2d, pixel_spacing(header), 0, 0.0, 1.0, config)


def lesion_label_map(
    hu2d: np.ndarray,
    labels2d: np.ndarray | None,
    lesions: list[Lesion],
    header: SliceHeader,
    config: AgatstonConfig,
) -> np.ndarray | None:
    """Pixels of the kept lesions, each set to its lesion's artery label (for the SEG and key image).

    The components are labelled again with the same Numba labeller; its components come in the same
    raster order as the lesions (first pixel, row-major), and are kept with the same float64 area rule.
    The pixel counts are checked against the lesions, so a mask can never silently disagree with a score.
    """
    if not lesions:
        return None
    from cacstream.engine.scoring.agatston import label_slice

    ps = pixel_spacing(header)
    pixel_area = ps[0] * ps[1]
    fg = np.asarray(hu2d, dtype=np.float64) >= np.float64(config.threshold_hu)
    if labels2d is not None:
        fg &= np.asarray(labels2d) > 0
    lab, n = label_slice(fg, config.connectivity)
    counts = np.bincount(lab.ravel(), minlength=n + 1)
    kept = [k for k in range(1, n + 1) if float(counts[k]) * pixel_area >= config.min_area_mm2]
    if len(kept) != len(lesions) or any(int(counts[k]) != les.n_pixels for k, les in zip(kept, lesions)):
        raise RuntimeError(f"{header.path}: lesion mask does not match the lesion table "
                           f"({len(kept)} components kept, {len(lesions)} lesions)")
    lut = np.zeros(n + 1, dtype=np.uint8)
    for k, les in zip(kept, lesions):
        lut[k] = ARTERY_LABEL[les.artery] if les.artery is not None else UNASSIGNED_LABEL
    return lut[lab]


def score_slice(
    job: SliceJob,
    hu2d: np.ndarray,
    labels2d: np.ndarray | None,
    config: AgatstonConfig,
    *,
    with_mask: bool = True,
    flagged: bool | None = None,
    probability: float | None = None,
    timings_ms: dict[str, float] | None = None,
    filter_output: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> SliceOutcome:
    """The Agatston stage of one plane: lesions (+ their label map when ``with_mask``).

    ``filter_output``: (served filter logits, flagged patches or None) of a flagged slice under the
    skeletal gate; the outcome then keeps the :class:`GateEvidence` completion decides on again."""
    t0 = time.perf_counter()
    timings = dict(timings_ms or {})
    excluded: list[tuple[Lesion, str]] = []
    labels_in = labels2d  # the U-Net's labels as they came, before the claim rule
    skeletal_check = labels2d is not None and config.skeletal_component_mm3 is not None
    claim_rule = labels2d is not None and config.min_claimed_share is not None
    calcium: tuple[np.ndarray, int] | None = None  # the plane's 8-connected calcium components, labelled once
    if skeletal_check or (claim_rule and config.connectivity == 8):
        from cacstream.engine.scoring.ccl import label_slice, threshold_for

        hu = np.asarray(hu2d)
        calcium = label_slice(hu >= threshold_for(hu.dtype, config.threshold_hu), 8)  # exact, no float64 copy
    if labels2d is not None and config.min_claimed_share is not None:  # the claim rule
        from cacstream.engine.scoring.claims import CLAIM_REASON, split_partial_claims

        labels2d, partial = split_partial_claims(hu2d, labels2d, config.threshold_hu, config.connectivity,
                                                 float(config.min_claimed_share),
                                                 components=calcium if config.connectivity == 8 else None)
        if partial is not None:
            excluded = [(les, CLAIM_REASON) for les in lesions_of_slice(hu2d, partial, job.header, config)]
    lesions = lesions_of_slice(hu2d, labels2d, job.header, config)
    # the skeletal check at completion finds each lesion's pixels through its label map
    label_map = lesion_label_map(hu2d, labels2d, lesions, job.header, config) if with_mask or skeletal_check else None
    comps = None
    evidence = None
    if skeletal_check:
        from cacstream.engine.scoring.skeleton import sparse_components

        assert calcium is not None
        comps = sparse_components(*calcium)
        if filter_output is not None and labels_in is not None:
            evidence = GateEvidence.of(filter_output[0], filter_output[1], hu2d, labels_in, comps[0],
                                       pixel_spacing(job.header))
    air = None
    if labels_in is not None and config.cardiac_levels:  # every slice: the lungs are found at completion
        from cacstream.engine.scoring.cardiac_window import internal_air

        air = internal_air(np.asarray(hu2d))
    timings["agatston"] = timings.get("agatston", 0.0) + (time.perf_counter() - t0) * 1e3
    return SliceOutcome(job=job, lesions=lesions, label_map=label_map, flagged=flagged,
                        probability=probability, timings_ms=timings, calcium_components=comps, excluded=excluded,
                        gate_evidence=evidence, internal_air=air)


def place_lesion(lesion: Lesion, slice_index: int, z_mm: float, voxel_depth_mm: float) -> Lesion:
    """Give a provisionally scored lesion its final slice index, z and volume (area × voxel depth)."""
    return replace(lesion, slice_index=int(slice_index), z_mm=float(z_mm),
                   volume_mm3=float(lesion.area_mm2 * float(voxel_depth_mm)))
