"""The JSON report (DESIGN.md contract), its schema validation and atomic writing.

A report is the thing a clinician reads: it is validated against the schema before it is written
and written atomically (temp file + rename), so a crash never leaves half a report behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from cacstream.engine.domain import ARTERIES
from cacstream.engine.scoring.results import AgatstonResult, Lesion
from cacstream.engine.series.types import Geometry, Series

from cacstream import __version__

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelInfo:
    """Which models produced the masks (all None in threshold mode)."""

    weights_id: str | None = None
    backend: str | None = None
    precision: str | None = None
    device: str | None = None
    filter_threshold: float | None = None
    #: What the segmenter saw of a flagged slice: "whole slice", or the cores around the filter's
    #: flagged patches (engine/inference/regions.py).
    segment_regions: str | None = None
    #: Set when the weights' config.json says they failed validation; goes into the report's warnings
    #: (not into its "model" object), so no reader can miss it.
    validation_warning: str | None = field(default=None, compare=False)


@dataclass
class ScoredSeries:
    """What the pipeline knows about one scored series, before it becomes JSON."""

    series: Series
    result: AgatstonResult
    mode: str
    model: ModelInfo = field(default_factory=ModelInfo)
    slices_flagged: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    report_version: int = 1


def _round(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))


def _per_artery(d: dict[str, float] | None) -> dict[str, float] | None:
    if d is None:
        return None
    return {a: _round(d.get(a, 0.0)) for a in ARTERIES}


def _lesion_json(lesion: Lesion) -> dict[str, Any]:
    return {
        "slice_index": int(lesion.slice_index),
        "z_mm": _round(lesion.z_mm),
        "area_mm2": _round(lesion.area_mm2),
        "n_pixels": int(lesion.n_pixels),
        "peak_hu": _round(lesion.peak_hu, 2),
        "mean_hu": _round(lesion.mean_hu, 2),
        "weight": int(lesion.weight),
        "score": _round(lesion.score),
        "artery": lesion.artery,
        "centroid_rc": [_round(lesion.centroid_rc[0], 2), _round(lesion.centroid_rc[1], 2)],
        "volume_mm3": _round(lesion.volume_mm3),
    }


def geometry_json(g: Geometry) -> dict[str, Any]:
    return {
        "rows": g.rows,
        "columns": g.columns,
        "pixel_spacing_mm": [float(g.pixel_spacing_mm[0]), float(g.pixel_spacing_mm[1])],
        "slice_thickness_mm": float(g.slice_thickness_mm),
        "slice_increment_mm": _round(g.slice_increment_mm, 6),
        "n_slices": g.n_slices,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _base(uid: str, report_version: int) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "cacstream_version": __version__,
        "created_utc": _now(),
        "report_version": report_version,
        "series_instance_uid": uid,
    }


def scored_report(s: ScoredSeries) -> dict[str, Any]:
    """Build the report of a scored series (validated by :func:`validate_report` on write)."""
    r = s.result
    first = s.series.first
    report = _base(s.series.uid, s.report_version)
    report.update(
        {
            "study_instance_uid": first.study_instance_uid or None,
            "status": "scored",
            "reason": None,
            "reason_message": None,
            "mode": s.mode,
            "agatston_total": _round(r.agatston_total),
            "agatston_per_artery": _per_artery(r.agatston_per_artery),
            "volume_mm3_total": _round(r.volume_mm3_total),
            "volume_mm3_per_artery": _per_artery(r.volume_mm3_per_artery),
            "mass_mg_total": None if r.mass_mg_total is None else _round(r.mass_mg_total),
            "mass_mg_per_artery": _per_artery(r.mass_mg_per_artery),
            "risk_category": r.risk_category,
            "lesions": [_lesion_json(les) for les in r.lesions],
            "excluded_lesions": [{**_lesion_json(les), "reason": why} for les, why in r.excluded_lesions],
            "slices_total": s.series.geometry.n_slices,
            "slices_flagged": s.slices_flagged,
            "geometry": geometry_json(s.series.geometry),
            "acquisition": dataclasses.asdict(first.acquisition),
            "agatston_config": r.config,
            "model": {k: v for k, v in dataclasses.asdict(s.model).items() if k != "validation_warning"},
            "timings_ms": {k: _round(v, 3) for k, v in s.timings_ms.items()},
            "warnings": list(s.warnings) + ([s.model.validation_warning] if s.model.validation_warning else []),
            "files": len({sl.path for sl in s.series.slices}),
        }
    )
    return report


def rejected_report(
    uid: str,
    reason: str,
    message: str,
    *,
    n_files: int = 0,
    slices_total: int = 0,
    model: ModelInfo | None = None,
    timings_ms: dict[str, float] | None = None,
    report_version: int = 1,
) -> dict[str, Any]:
    """Build the report of a series that will not be scored, saying why."""
    report = _base(uid, report_version)
    report.update(
        {
            "study_instance_uid": None,
            "status": "rejected",
            "reason": reason,
            "reason_message": message,
            "mode": None,
            "agatston_total": None,
            "agatston_per_artery": None,
            "volume_mm3_total": None,
            "volume_mm3_per_artery": None,
            "mass_mg_total": None,
            "mass_mg_per_artery": None,
            "risk_category": None,
            "lesions": [],
            "slices_total": slices_total,
            "slices_flagged": None,
            "geometry": None,
            "acquisition": None,
            "agatston_config": None,
            "model": dataclasses.asdict(model or ModelInfo()),
            "timings_ms": dict(timings_ms or {}),
            "warnings": [],
            "files": n_files,
        }
    )
    return report


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    """The JSON Schema shipped with the package (engine/report/report.schema.json)."""
    text = resources.files("cacstream.engine.report").joinpath("report.schema.json").read_text()
    return json.loads(text)


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if the report breaks the contract."""
    import jsonschema

    jsonschema.Draft202012Validator(report_schema()).validate(report)


def report_path(out_dir: Path, uid: str) -> Path:
    """Where a series' report lives: ``DIR/<SeriesInstanceUID>.json`` (DESIGN.md contract)."""
    return Path(out_dir) / f"{uid}.json"


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write JSON to ``path`` via a temp file in the same folder + fsync + rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    """Validate and atomically write a report to ``DIR/<SeriesInstanceUID>.json``."""
    validate_report(report)
    return write_json_atomic(report_path(out_dir, report["series_instance_uid"]), report)
