"""Completion of a series: place the per-slice lesions in the final geometry and only sum (summarise).

Shared by `score` and `watch`: by the time a series is complete its slices are already scored; what is
left is ordering (done by eligibility), placing each slice's lesions at its final index / z / volume,
and the per-artery sums.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.pipeline.skeletal_gate import GateDecider, apply_skeletal_gate
from cacstream.engine.pipeline.stages import SliceOutcome, place_lesion
from cacstream.engine.report.json_report import ModelInfo, ScoredSeries
from cacstream.engine.scoring.agatston import label_slice, summarise
from cacstream.engine.scoring.results import Lesion
from cacstream.engine.scoring.cardiac_window import WINDOW_REASON, CardiacLevels, cardiac_levels
from cacstream.engine.scoring.juxta_skeletal import JUXTA_REASON, near_skeleton, slabs
from cacstream.engine.scoring.skeleton import SKELETAL_REASON, large_component_masks
from cacstream.engine.series.types import Geometry, Series

#: Stages whose per-slice times are summed into the report's ``timings_ms``.
SLICE_STAGES: tuple[str, ...] = ("decode", "filter", "segment", "agatston")


class SeriesFailed(Exception):
    """An eligible series could not be scored (a slice failed to decode, a model call failed, …)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class SeriesScore:
    """A scored series plus what the DICOM SEG and the key image need (lesion label maps by slice index)."""

    scored: ScoredSeries
    label_maps: dict[int, np.ndarray] = field(default_factory=dict)


def failure_of(exc: BaseException) -> tuple[str, str]:
    """(reason code, message) of a slice failure: DicomReadError carries both; anything else is internal."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason, str(getattr(exc, "message", exc))
    return "internal_error", f"{type(exc).__name__}: {exc}"


def finalize_series(
    series: Series,
    outcomes: Mapping[tuple[str, int], SliceOutcome],
    *,
    mode: str,
    agatston: AgatstonConfig,
    model: ModelInfo | None = None,
    timings_ms: Mapping[str, float] | None = None,
    report_version: int = 1,
    skeletal_gate: GateDecider | None = None,
) -> SeriesScore:
    """Sum the per-slice outcomes of an eligible series into its :class:`ScoredSeries`.

    ``skeletal_gate``: the models, when flagged slices are to be decided again without bone-sized
    calcium (``pipeline/skeletal_gate.py``; model mode with the skeletal check on).

    Raises:
        SeriesFailed: a slice has no outcome or its outcome is an error (reason from the error).
    """
    t0 = time.perf_counter()
    g = series.geometry
    ordered: list[SliceOutcome] = []
    for header in series.slices:
        outcome = outcomes.get(header.key)
        if outcome is None:
            raise SeriesFailed("internal_error", f"{header.path}: slice was never scored")
        if outcome.error is not None:
            raise SeriesFailed(*failure_of(outcome.error))
        ordered.append(outcome)
    warnings: list[str] = []
    skeletal: dict[int, np.ndarray] | None = None  # the bone-sized calcium of the slices that need it
    if mode == "model" and agatston.skeletal_component_mm3 is not None:
        comps = [o.calcium_components for o in ordered]
        need = [i for i, o in enumerate(ordered) if o.lesions or o.gate_evidence is not None]
        if agatston.juxta_skeletal_rule:  # the slices beside a lesion that can hold bone too close to it
            need = slabs(need, len(ordered), g.slice_increment_mm, float(agatston.min_bone_distance_mm))  # type: ignore[arg-type]
        if any(c is None for c in comps):
            if any(o.lesions for o in ordered):
                warnings.append("skeletal-calcium check skipped: a slice's calcium components were not kept")
        elif need:
            skeletal = large_component_masks(len(comps), None, g.voxel_volume_mm3,
                                             float(agatston.skeletal_component_mm3), need,
                                             components=comps.__getitem__, shape=(g.rows, g.columns))  # type: ignore[index]
            if skeletal_gate is not None:
                ordered = apply_skeletal_gate(ordered, skeletal, skeletal_gate, agatston)
    lesions: list[Lesion] = []
    label_maps: dict[int, np.ndarray] = {}
    stage_ms = dict.fromkeys(SLICE_STAGES, 0.0)
    flagged = 0
    per_slice_excluded: list[tuple[Lesion, str]] = []  # by the claim rule, as each slice was scored
    for i, outcome in enumerate(ordered):
        for stage, ms in outcome.timings_ms.items():
            stage_ms[stage] = stage_ms.get(stage, 0.0) + ms
        if outcome.flagged:
            flagged += 1
        lesions.extend(place_lesion(les, i, g.z_mm[i], g.slice_increment_mm) for les in outcome.lesions)
        per_slice_excluded.extend((place_lesion(les, i, g.z_mm[i], g.slice_increment_mm), why)
                                  for les, why in outcome.excluded)
        if outcome.label_map is not None:
            label_maps[i] = outcome.label_map
    excluded: list[Lesion] = []
    near: list[Lesion] = []
    if skeletal is not None and lesions:
        lesions, excluded = split_skeletal_lesions(lesions, skeletal, label_maps, agatston)
        if agatston.juxta_skeletal_rule and lesions:
            lesions, near = split_juxta_skeletal_lesions(lesions, skeletal, label_maps, g, agatston)
    outside: list[Lesion] = []
    levels = None
    if mode == "model" and agatston.cardiac_levels:
        airs = [o.internal_air for o in ordered]
        if any(a is None for a in airs):
            warnings.append("cardiac-levels rule skipped: a slice's internal air was not kept")
        else:
            levels = cardiac_levels(airs, g.z_mm, g.pixel_spacing_mm, g.slice_increment_mm, g.normal)  # type: ignore[arg-type]
            if lesions and levels.applies:
                lesions, outside = split_outside_levels(lesions, levels, label_maps)
    result = summarise(lesions, g, agatston)
    result.config["calcium_mask"] = "whole_slice" if mode == "threshold" else "labels>0"
    if levels is not None:
        result.config["cardiac_levels_found"] = levels.to_dict()
    result.excluded_lesions = (per_slice_excluded + [(les, SKELETAL_REASON) for les in excluded]
                               + [(les, JUXTA_REASON) for les in near] + [(les, WINDOW_REASON) for les in outside])
    timings = {k: v for k, v in stage_ms.items() if v > 0 or k in ("decode", "agatston")}
    timings.update(dict(timings_ms or {}))
    timings["summarise"] = (time.perf_counter() - t0) * 1e3
    scored = ScoredSeries(
        series=series,
        result=result,
        mode=mode,
        model=model or ModelInfo(),
        slices_flagged=flagged if mode == "model" else None,
        timings_ms=timings,
        warnings=warnings,
        report_version=report_version,
    )
    return SeriesScore(scored=scored, label_maps=label_maps)


def split_skeletal_lesions(
    lesions: list[Lesion],
    skeletal: dict[int, np.ndarray],
    label_maps: dict[int, np.ndarray],
    config: AgatstonConfig,
) -> tuple[list[Lesion], list[Lesion]]:
    """(kept, excluded) lesions of a completed series: a lesion is excluded when its calcium lies in a
    3D component larger than ``config.skeletal_component_mm3`` (engine/scoring/skeleton.py). The
    excluded lesions' pixels are removed from ``label_maps`` (so the SEG and key image show what counts).

    ``skeletal``: for every slice index that holds a lesion, the mask of its calcium in such components
    (``skeleton.large_component_masks``)."""
    def inside(z: int, lab: np.ndarray, n: int) -> np.ndarray:
        hit = np.zeros(n + 1, bool)
        if skeletal[z].any():
            hit[np.unique(lab[skeletal[z]])] = True
            hit[0] = False
        return hit

    return _split_lesions(lesions, label_maps, config, inside)


def split_outside_levels(
    lesions: list[Lesion], levels: CardiacLevels, label_maps: dict[int, np.ndarray]
) -> tuple[list[Lesion], list[Lesion]]:
    """(lesions within the heart's levels, lesions outside them): a slice outside holds no coronary
    calcium, so its lesions go and its label map with them (engine/scoring/cardiac_window.py)."""
    kept = [les for les in lesions if not levels.outside(les.z_mm)]
    gone = [les for les in lesions if levels.outside(les.z_mm)]
    for z in {les.slice_index for les in gone}:
        label_maps.pop(z, None)
    return kept, gone


def split_juxta_skeletal_lesions(
    lesions: list[Lesion],
    skeletal: dict[int, np.ndarray],
    label_maps: dict[int, np.ndarray],
    geometry: Geometry,
    config: AgatstonConfig,
) -> tuple[list[Lesion], list[Lesion]]:
    """(kept, excluded) lesions: a lesion closer than ``config.min_bone_distance_mm`` to skeletal calcium
    is excluded (engine/scoring/juxta_skeletal.py), its pixels removed from ``label_maps``. ``skeletal``
    holds the masks of every slice within that distance of a lesion (``juxta_skeletal.slabs``)."""
    spacing = (float(geometry.slice_increment_mm), *(float(v) for v in geometry.pixel_spacing_mm))

    def near(z: int, lab: np.ndarray, n: int) -> np.ndarray:
        return near_skeleton(lab, n, z, skeletal, spacing, float(config.min_bone_distance_mm))  # type: ignore[arg-type]

    return _split_lesions(lesions, label_maps, config, near)


def _split_lesions(
    lesions: list[Lesion],
    label_maps: dict[int, np.ndarray],
    config: AgatstonConfig,
    excluded_of: Callable[[int, np.ndarray, int], np.ndarray],
) -> tuple[list[Lesion], list[Lesion]]:
    """(kept, excluded) by ``excluded_of(slice index, lesion components, n) -> (n + 1,) bool``. A slice's
    lesions are the components of its label map in raster order (the same labeller and connectivity
    made both), so component k is lesion k of that slice; excluded pixels leave ``label_maps``."""
    by_slice: dict[int, list[Lesion]] = {}
    for les in lesions:
        by_slice.setdefault(les.slice_index, []).append(les)
    kept: list[Lesion] = []
    excluded: list[Lesion] = []
    for z, group in by_slice.items():
        lmap = label_maps[z]
        lab, n = label_slice(lmap > 0, config.connectivity)
        if n != len(group):
            raise RuntimeError(f"slice {z}: {n} lesion components in the label map, {len(group)} lesions")
        drop = excluded_of(z, lab, n)
        for k, les in enumerate(group, start=1):
            (excluded if drop[k] else kept).append(les)
        if drop.any():
            label_maps[z] = np.where(drop[lab], 0, lmap).astype(lmap.dtype)
    kept.sort(key=lambda les: les.slice_index)
    return kept, excluded
