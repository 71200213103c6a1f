"""What ``bench pipeline`` times, per series and per model configuration (backend × precision × batch size).

* :func:`stage_profile`: every stage alone, in sequence, so each time is attributable: read (header scan
  and series assembly), decode (pydicom → HU, per slice), preprocess (kernels, filter input for every
  slice + segmenter input for the flagged ones), filter (model call + sigmoid), segment (model call on
  the flagged slices + argmax + resize back), agatston (Numba, whole series), report (JSON report built,
  validated and written atomically);
* :func:`engine_end_to_end`: the engine's real path: header scan, then the concurrent slice pipeline
  (decode threads, batched filter and segmenter, Agatston worker — ``score_series``), then the JSON report;
* :func:`volume_wide`: the engine's fast path minus the slice filter: decode the volume (threads), segment
  EVERY slice (same backend, precision and batch size), Agatston, JSON report.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STAGES: tuple[str, ...] = ("read", "decode", "preprocess", "filter", "segment", "agatston", "report")


@dataclass
class StageTimes:
    ms: dict[str, float] = field(default_factory=dict)
    slices: int = 0
    flagged: int = 0
    agatston_total: float = 0.0

    @property
    def model_ms(self) -> float:
        """Model compute of the engine: preprocessing + filter + segmenter."""
        return self.ms.get("preprocess", 0.0) + self.ms.get("filter", 0.0) + self.ms.get("segment", 0.0)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def read_series(series_dir: Path) -> Any:
    """Header scan of one series folder → its Series (the largest if several)."""
    from cacstream.engine.series import scan_path

    res = scan_path(series_dir)
    if not res.series:
        why = res.rejected[0].message if res.rejected else f"{len(res.skipped)} files skipped"
        raise ValueError(f"{series_dir}: no eligible series ({why})")
    return max(res.series, key=lambda s: len(s.slices))


def write_json_report(
    series: Any, result: Any, models: Any, flagged: int, out_dir: Path, timings: dict[str, float]
) -> Path:
    from cacstream.engine.report.json_report import ScoredSeries, scored_report, write_report

    scored = ScoredSeries(
        series=series,
        result=result,
        mode="model",
        model=models.info,
        slices_flagged=flagged,
        timings_ms=timings,
    )
    return write_report(scored_report(scored), out_dir)


def stage_profile(series_dir: Path, models: Any, agatston: Any, out_dir: Path) -> StageTimes:
    """Each stage alone, in sequence (``models``: a CalciumModels)."""
    from cacstream.engine.pipeline.stages import decode_hu
    from cacstream.engine.scoring.agatston import score_volume

    st = StageTimes()
    t0 = time.perf_counter()
    series = read_series(series_dir)
    st.ms["read"] = _ms(t0)
    t0 = time.perf_counter()
    hu = np.stack([decode_hu(h) for h in series.slices]).astype(np.float32, copy=False)
    st.ms["decode"] = _ms(t0)
    st.slices = int(hu.shape[0])
    t0 = time.perf_counter()
    xf = models.preprocess(hu, "filter")
    st.ms["preprocess"] = _ms(t0)
    t0 = time.perf_counter()
    raw = models.infer(xf, "filter").logits
    exclude = models.skeletal_exclusion(hu, series.geometry)  # the skeletal gate, as the engine (None: off)
    p, patches = models.decide(raw, hu, series.geometry.pixel_spacing_mm, exclude)  # candidate gate + regions
    flags = p >= models.filter_threshold
    st.ms["filter"] = _ms(t0)
    st.flagged = int(flags.sum())
    labels = np.zeros(hu.shape, np.uint8)
    st.ms["segment"] = 0.0
    if flags.any():
        t0 = time.perf_counter()  # the segmenter's preprocessing is inside (tiles are cut from its input)
        labels[flags] = models.segment(hu[flags], None if patches is None else patches[flags])
        st.ms["segment"] = _ms(t0)
    t0 = time.perf_counter()
    res = score_volume(hu, series.geometry, labels, agatston)
    st.ms["agatston"] = _ms(t0)
    st.agatston_total = float(res.agatston_total)
    t0 = time.perf_counter()
    write_json_report(series, res, models, st.flagged, out_dir, dict(st.ms))
    st.ms["report"] = _ms(t0)
    return st


def engine_end_to_end(
    series_dir: Path,
    stages: Any,
    agatston: Any,
    batch_size: int,
    out_dir: Path,
    decode_threads: int = 2,
    max_batch_wait_ms: float = 50.0,
) -> tuple[float, int, float]:
    """(ms, flagged slices, Agatston total) of read → concurrent pipeline → JSON report.

    ``stages``: the pipeline's ModelStages; ``max_batch_wait_ms``: the `cacstream score` default."""
    from cacstream.engine.pipeline.runner import PipelineConfig
    from cacstream.engine.pipeline.scorer import score_series
    from cacstream.engine.report.json_report import scored_report, write_report

    t0 = time.perf_counter()
    series = read_series(series_dir)
    score = score_series(
        series,
        agatston,
        models=stages,
        config=PipelineConfig(
            decode_threads=decode_threads, batch_size=batch_size, max_batch_wait_ms=max_batch_wait_ms
        ),
    )
    write_report(scored_report(score.scored), out_dir)
    return _ms(t0), int(score.scored.slices_flagged or 0), float(score.scored.result.agatston_total)


def volume_wide(
    series_dir: Path, models: Any, agatston: Any, out_dir: Path, decode_threads: int = 2
) -> StageTimes:
    """No slice filter: every slice through the segmenter (same backend / precision / batch size)."""
    from cacstream.engine.scoring.agatston import score_volume
    from cacstream.engine.series import read_volume

    st = StageTimes()
    t0 = time.perf_counter()
    series = read_series(series_dir)
    st.ms["read"] = _ms(t0)
    t0 = time.perf_counter()
    hu = read_volume(series, threads=decode_threads).hu
    st.ms["decode"] = _ms(t0)
    st.slices = st.flagged = int(hu.shape[0])
    t0 = time.perf_counter()
    xs = models.preprocess(hu, "segmenter")
    st.ms["preprocess"] = _ms(t0)
    st.ms["filter"] = 0.0
    t0 = time.perf_counter()
    labels = models.labels_from_logits(models.infer(xs, "segmenter").logits, hu.shape[1:])
    st.ms["segment"] = _ms(t0)
    t0 = time.perf_counter()
    res = score_volume(hu, series.geometry, labels, agatston)
    st.ms["agatston"] = _ms(t0)
    st.agatston_total = float(res.agatston_total)
    t0 = time.perf_counter()
    write_json_report(series, res, models, st.flagged, out_dir, dict(st.ms))
    st.ms["report"] = _ms(t0)
    return st


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def temp_out() -> tempfile.TemporaryDirectory:  # type: ignore[type-arg]
    return tempfile.TemporaryDirectory(prefix="cacstream-bench-pipeline-")
