"""Completion of a series: place the per-slice lesions in the final geometry and only sum (summarise).

Shared by `score` and `watch`: by the time a series is complete its slices are already scored; what is
left is ordering (done by eligibility), placing each slice's lesions at its final index / z / volume,
and the per-artery sums.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.pipeline.stages import SliceOutcome, place_lesion
from cacstream.engine.report.json_report import ModelInfo, ScoredSeries
from cacstream.engine.scoring.agatston import summarise
from cacstream.engine.scoring.results import Lesion
from cacstream.engine.series.types import Series

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
) -> SeriesScore:
    """Sum the per-slice outcomes of an eligible series into its :class:`ScoredSeries`.

    Raises:
        SeriesFailed: a slice has no outcome or its outcome is an error (reason from the error).
    """
    t0 = time.perf_counter()
    g = series.geometry
    lesions: list[Lesion] = []
    label_maps: dict[int, np.ndarray] = {}
    stage_ms = dict.fromkeys(SLICE_STAGES, 0.0)
    flagged = 0
    for i, header in enumerate(series.slices):
        outcome = outcomes.get(header.key)
        if outcome is None:
            raise SeriesFailed("internal_error", f"{header.path}: slice was never scored")
        if outcome.error is not None:
            raise SeriesFailed(*failure_of(outcome.error))
        for stage, ms in outcome.timings_ms.items():
            stage_ms[stage] = stage_ms.get(stage, 0.0) + ms
        if outcome.flagged:
            flagged += 1
        lesions.extend(place_lesion(les, i, g.z_mm[i], g.slice_increment_mm) for les in outcome.lesions)
        if outcome.label_map is not None:
            label_maps[i] = outcome.label_map
    result = summarise(lesions, g, agatston)
    result.config["calcium_mask"] = "whole_slice" if mode == "threshold" else "labels>0"
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
        report_version=report_version,
    )
    return SeriesScore(scored=scored, label_maps=label_maps)
