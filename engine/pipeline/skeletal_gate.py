"""The skeletal gate: bone-sized calcium cannot make the slice filter flag a slice, decided at completion.

Why: on the development phantoms nearly all the calcium-free slices the candidate-gated filter flags are
flagged by bone, aortic or valve calcium, most of them by bone (docs/models.md, "The skeletal gate"). The
scorer's skeletal check (``scoring/skeleton.py``) already excludes every lesion in a 3D calcium component
larger than ``skeletal_component_mm3``, so a patch whose only candidates lie in such components cannot add
a point to any score: segmenting it is wasted work, and calling its slice "flagged" misstates what the
filter found. The gate withdraws that calcium from the candidates (``CalciumModels.skeletal_exclusion``).

When: a component's size is known only once the whole series is there, and the engine scores slices as
they land. So the stream filters and segments each slice with the per-slice candidate gate, which flags a
superset of what the skeletal gate keeps (withdrawing candidates only ever removes flagged patches), keeps
for every flagged slice its :class:`GateEvidence` (the filter output, the regions, and the HU and U-Net
labels of its calcium pixels: 5 bytes per calcium pixel), and :func:`apply_skeletal_gate` decides each
flagged slice again at completion with the skeletal calcium withdrawn. A slice whose regions shrink is
scored again from its evidence: the U-Net labels of the cores that remain (each core's labels come from
its own tile, so they equal what segmenting only those cores gives) over the calcium pixels, the only
pixels that Agatston, the claim rule and the candidates read. The result equals, slice for slice, the
whole-series path (``calibration.evaluate.run_engine_path`` with the same models).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cacstream.engine.config import AgatstonConfig

if TYPE_CHECKING:
    from cacstream.engine.pipeline.stages import SliceOutcome


class GateDecider(Protocol):
    """What the gate needs of the models (``inference.runtime.CalciumModels`` provides it)."""

    filter_threshold: float

    def decide(self, filter_logits: Any, hu_slices: Any, pixel_spacing_mm: Any = None, exclude: Any = None,
               ) -> tuple[np.ndarray, np.ndarray | None]: ...

    def region_pixels(self, regions: np.ndarray, native_hw: tuple[int, int]) -> np.ndarray | None: ...

    def decide_from_components(self, filter_logits: Any, components: tuple[np.ndarray, np.ndarray, int],
                               shape: tuple[int, int], pixel_spacing_mm: Any, exclude: np.ndarray | None,
                               threshold_hu: float) -> tuple[np.ndarray, np.ndarray | None] | None: ...


@dataclass(frozen=True)
class GateEvidence:
    """What a flagged slice keeps so that completion can decide it again.

    Attributes:
        filter_logits: the served filter output of the slice, (1 + G²,) float32 (slice logit, patch logits).
        regions: the patches segmented at slice time, (G, G) bool; None when whole slices are segmented.
        calcium_hu: float32 HU of the slice's calcium pixels, in the order of its sparse calcium
            components (``SliceOutcome.calcium_components``, raster order).
        calcium_labels: uint8 U-Net labels of those pixels (before the claim rule).
        shape: the slice's (rows, columns).
        pixel_spacing_mm: the slice's (row, column) spacing.
    """

    filter_logits: np.ndarray
    regions: np.ndarray | None
    calcium_hu: np.ndarray
    calcium_labels: np.ndarray
    shape: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]

    @classmethod
    def of(cls, filter_logits: np.ndarray, regions: np.ndarray | None, hu2d: np.ndarray, labels2d: np.ndarray,
           calcium_idx: np.ndarray, pixel_spacing_mm: tuple[float, float]) -> GateEvidence:
        hu = np.asarray(hu2d)
        return cls(np.asarray(filter_logits, np.float32).reshape(-1).copy(),
                   None if regions is None else np.asarray(regions, bool).copy(),
                   hu.ravel()[calcium_idx].astype(np.float32), np.asarray(labels2d).ravel()[calcium_idx].astype(np.uint8),
                   (int(hu.shape[0]), int(hu.shape[1])), (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])))

    def calcium_slice(self, calcium_idx: np.ndarray, threshold_hu: float) -> np.ndarray:
        """(rows, columns) float32 HU: the calcium pixels as they were, everything else well below the
        threshold. Scoring it equals scoring the decoded slice (only pixels >= threshold are read)."""
        out = np.full(self.shape[0] * self.shape[1], np.float32(min(-1024.0, threshold_hu - 1000.0)), np.float32)
        out[calcium_idx] = self.calcium_hu
        return out.reshape(self.shape)

    def labels(self, calcium_idx: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
        """(rows, columns) uint8 U-Net labels of the calcium pixels, only inside ``keep`` (None: all)."""
        out = np.zeros(self.shape[0] * self.shape[1], np.uint8)
        out[calcium_idx] = self.calcium_labels
        out = out.reshape(self.shape)
        return out if keep is None else np.where(keep, out, np.uint8(0))


def apply_skeletal_gate(
    outcomes: Sequence[SliceOutcome],
    skeletal: dict[int, np.ndarray],
    decider: GateDecider,
    config: AgatstonConfig,
) -> list[SliceOutcome]:
    """The outcomes in series order, each flagged slice decided again without the skeletal calcium.

    ``skeletal``: for every slice index with gate evidence, the (rows, columns) mask of its calcium in
    3D components above ``config.skeletal_component_mm3`` (``skeleton.large_component_masks``). Slices
    without evidence (unflagged, threshold mode) are returned as they are."""
    from cacstream.engine.pipeline.stages import score_slice

    out = list(outcomes)
    for i, o in enumerate(out):
        ev = o.gate_evidence
        if ev is None or o.calcium_components is None:
            continue
        idx = o.calcium_components[0]
        quick = decider.decide_from_components(ev.filter_logits[None], o.calcium_components, ev.shape,
                                               ev.pixel_spacing_mm, skeletal[i], config.threshold_hu)
        p, regions = quick if quick is not None else decider.decide(
            ev.filter_logits[None], ev.calcium_slice(idx, config.threshold_hu)[None], ev.pixel_spacing_mm,
            skeletal[i][None])
        prob = float(p[0])
        flagged = prob >= decider.filter_threshold
        new_regions = None
        if flagged and regions is not None and ev.regions is not None:
            # never more than was segmented (withdrawing candidates only removes patches; this is the guard)
            new_regions = regions[0] & ev.regions
        if flagged and (ev.regions is None or np.array_equal(new_regions, ev.regions)):
            out[i] = dataclasses.replace(o, probability=prob)  # same cores, same labels, same lesions
            continue
        if not flagged:
            labels = np.zeros(ev.shape, np.uint8)
        else:
            assert new_regions is not None
            keep = decider.region_pixels(new_regions[None], ev.shape)
            labels = ev.labels(idx, None if keep is None else keep[0])
        if np.array_equal(labels.ravel()[idx], ev.calcium_labels):
            # the withdrawn cores held no labelled calcium: the same lesions, exclusions and label map
            out[i] = dataclasses.replace(o, flagged=flagged, probability=prob, gate_evidence=ev if flagged else None)
            continue
        again = score_slice(o.job, ev.calcium_slice(idx, config.threshold_hu), labels, config, with_mask=True,
                            flagged=flagged, probability=prob, timings_ms=o.timings_ms)
        out[i] = dataclasses.replace(again, calcium_components=o.calcium_components,
                                     gate_evidence=ev if flagged else None, internal_air=o.internal_air)
    return out
