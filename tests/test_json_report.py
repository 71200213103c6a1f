"""The report contract: schema-valid scored and rejected reports, atomic writes, the CSV ledger."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jsonschema
import pytest

from cacstream.engine.domain import ARTERIES
from cacstream.engine.report.json_report import (
    ModelInfo,
    ScoredSeries,
    rejected_report,
    report_path,
    scored_report,
    validate_report,
    write_report,
)
from cacstream.engine.report.ledger import LEDGER_COLUMNS, append_to_ledger
from cacstream.engine.scoring.results import AgatstonResult, Lesion
from cacstream.engine.series.types import AcquisitionInfo, Geometry, Series, SliceHeader

UID = "1.2.826.0.1.3680043.8.498.1"


def _series(n: int = 3) -> Series:
    geom = Geometry(rows=4, columns=4, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=3.0,
                    slice_increment_mm=3.0, normal=(0.0, 0.0, 1.0), z_mm=tuple(3.0 * i for i in range(n)))
    slices = tuple(
        SliceHeader(path=Path(f"/x/{i}.dcm"), frame=None, sop_instance_uid=f"{UID}.{i}", series_instance_uid=UID,
                    study_instance_uid="1.2.3", modality="CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                    rows=4, columns=4, pixel_spacing_mm=(0.5, 0.5), position_mm=(0.0, 0.0, 3.0 * i),
                    orientation=(1, 0, 0, 0, 1, 0), slice_thickness_mm=3.0, rescale_slope=1.0,
                    rescale_intercept=-1024.0, bits_allocated=16, bits_stored=12, pixel_representation=0,
                    acquisition=AcquisitionInfo(manufacturer="ACME", kvp=120.0))
        for i in range(n)
    )
    return Series(uid=UID, slices=slices, geometry=geom)


def _result() -> AgatstonResult:
    # one 3x3 lesion at 0.5 mm pixels with peak 250 HU: area 2.25 mm², weight 2, score 4.5; 3 mm slices → factor 1
    lesion = Lesion(slice_index=1, z_mm=3.0, n_pixels=9, area_mm2=2.25, peak_hu=250.0, mean_hu=180.0, weight=2,
                    score=4.5, artery="LAD", centroid_rc=(1.0, 1.0), volume_mm3=6.75)
    per = {a: 0.0 for a in ARTERIES} | {"LAD": 4.5}
    vol = {a: 0.0 for a in ARTERIES} | {"LAD": 6.75}
    return AgatstonResult(lesions=[lesion], agatston_total=4.5, agatston_per_artery=per, volume_mm3_total=6.75,
                          volume_mm3_per_artery=vol, mass_mg_total=None, mass_mg_per_artery=None,
                          risk_category="1-10", thickness_factor=1.0, config={"threshold_hu": 130.0})


def _scored() -> dict:
    return scored_report(ScoredSeries(series=_series(), result=_result(), mode="model",
                                      model=ModelInfo("w1", "torch", "fp32", "cpu", 0.3, "whole slice"), slices_flagged=1,
                                      timings_ms={"decode": 1.0, "agatston": 0.5}))


def test_scored_report_has_contract_fields_and_validates() -> None:
    r = _scored()
    validate_report(r)
    for key in ("series_instance_uid", "status", "agatston_total", "agatston_per_artery", "volume_mm3_total",
                "risk_category", "lesions", "slices_total", "slices_flagged", "model", "timings_ms"):
        assert key in r
    assert r["status"] == "scored" and r["agatston_total"] == 4.5 and r["risk_category"] == "1-10"
    assert set(r["agatston_per_artery"]) == set(ARTERIES)
    assert r["lesions"][0] | {} == r["lesions"][0] and r["lesions"][0]["weight"] == 2
    assert r["slices_total"] == 3 and r["files"] == 3
    assert r["model"] == {"weights_id": "w1", "backend": "torch", "precision": "fp32", "device": "cpu",
                          "filter_threshold": 0.3, "segment_regions": "whole slice"}


def test_rejected_report_validates_and_requires_reason() -> None:
    r = rejected_report(UID, "gantry_tilt", "slices tilted 12° from axial", n_files=40, slices_total=40)
    validate_report(r)
    assert r["status"] == "rejected" and r["agatston_total"] is None
    r["reason"] = None
    with pytest.raises(jsonschema.ValidationError):
        validate_report(r)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.pop("agatston_total"),
        lambda r: r.__setitem__("risk_category", "high"),
        lambda r: r["agatston_per_artery"].pop("LCX"),
        lambda r: r["agatston_per_artery"].__setitem__("LCA", 1.0),
        lambda r: r["lesions"][0].__setitem__("weight", 5),
        lambda r: r.__setitem__("status", "done"),
        lambda r: r.__setitem__("agatston_total", -1.0),
        lambda r: r.__setitem__("agatston_total", None),  # a scored report must carry a number
    ],
)
def test_schema_rejects_broken_reports(mutate) -> None:
    r = _scored()
    mutate(r)
    with pytest.raises(jsonschema.ValidationError):
        validate_report(r)


def test_write_report_is_atomic_and_named_by_uid(tmp_path: Path) -> None:
    r = _scored()
    p = write_report(r, tmp_path)
    assert p == report_path(tmp_path, UID) and p.name == f"{UID}.json"
    assert json.loads(p.read_text()) == r
    assert [x.name for x in tmp_path.iterdir()] == [p.name]  # no temp files left behind


def test_invalid_report_is_never_written(tmp_path: Path) -> None:
    r = _scored()
    r["risk_category"] = "unknown"
    with pytest.raises(jsonschema.ValidationError):
        write_report(r, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_ledger_appends_rows_with_header_once(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.csv"
    append_to_ledger(ledger, _scored(), "a.json")
    append_to_ledger(ledger, rejected_report("9.9", "not_ct", "modality MR"), "b.json")
    rows = list(csv.DictReader(ledger.open()))
    assert list(rows[0].keys()) == list(LEDGER_COLUMNS)
    assert [r["status"] for r in rows] == ["scored", "rejected"]
    assert rows[0]["agatston_LAD"] == "4.5" and rows[0]["agatston_RCA"] == "0.0"
    assert rows[1]["reason"] == "not_ct" and rows[1]["agatston_total"] == ""
