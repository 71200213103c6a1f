"""The cardiac-levels rule (engine/scoring/cardiac_window.py): the levels found from the lungs of a
hand-built thorax against the levels computed by hand from its construction, the cases where the rule
must not apply (cardiac field of view, lungs not ending in the scan), both scoring paths excluding the
same neck and abdominal lesions, a phantom's heart inside its levels, and the real COCA scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.pipeline.runner import PipelineConfig
from cacstream.engine.pipeline.scorer import score_series
from cacstream.engine.report.json_report import scored_report, validate_report
from cacstream.engine.scoring.agatston import score_volume, score_volume_and_labels, scored_labels
from cacstream.engine.scoring.cardiac_window import (
    WINDOW_REASON,
    cardiac_levels,
    cardiac_levels_of_volume,
    internal_air,
    internal_air_mask,
    unpack,
)
from cacstream.engine.series import scan_path
from cacstream.engine.series.types import Geometry
from cacstream.training.dicom_writer import write_ct_series

from _fake_models import fake_labels, fake_models

COCA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coca-sample"

SPACING, INC, N, SIZE = 1.5, 5.0, 60, 256
Z0 = -300.0
FULL = range(10, 50)  # slices with whole lungs
THIN = (8, 9, 50, 51)  # lung bases and apices: 4 % of the cross-section
LESIONS = {5: "abdomen", 11: "heart, lowest", 30: "heart", 40: "upper chest", 55: "neck"}


def _z(i: int) -> float:
    return Z0 + INC * i


def _thorax() -> np.ndarray:
    """Body (40 HU) in air; two lungs (-850 HU) whole on slices 10..49 and at a fifth of their radii on
    8, 9, 50 and 51; a bowel-gas bubble (-1000 HU, 40 mm) on slices 2..4; a 300 HU disc (r 2 px) at each
    LESIONS slice, in the middle of the body."""
    hu = np.full((N, SIZE, SIZE), -1000.0, np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] * SPACING
    cy = cx = SIZE * SPACING / 2
    body = ((yy - cy) / 110.0) ** 2 + ((xx - cx) / 160.0) ** 2 <= 1.0
    hu[:, body] = 40.0
    for i in list(FULL) + list(THIN):
        s = 1.0 if i in FULL else 0.2
        for side in (-1, 1):
            lung = ((yy - cy) / (80.0 * s)) ** 2 + ((xx - cx - side * 80.0) / (55.0 * s)) ** 2 <= 1.0
            hu[i][lung] = -850.0
    gas = (yy - cy - 30.0) ** 2 + (xx - cx) ** 2 <= 20.0 ** 2
    hu[2:5][:, gas] = -1000.0
    disc = (yy / SPACING - SIZE // 2 + 10) ** 2 + (xx / SPACING - SIZE // 2 - 3) ** 2 <= 4
    for i in LESIONS:
        hu[i][disc] = 300.0
    return hu


def _geometry(n: int = N, size: int = SIZE) -> Geometry:
    return Geometry(rows=size, columns=size, pixel_spacing_mm=(SPACING, SPACING), slice_thickness_mm=INC,
                    slice_increment_mm=INC, normal=(0.0, 0.0, 1.0), z_mm=tuple(_z(i) for i in range(n)))


def test_levels_of_a_hand_built_thorax() -> None:
    levels = cardiac_levels_of_volume(_thorax(), _geometry())
    # bases: the lowest slice with >= 25 % of the largest lung area is 10; apices: the highest with >= 10 % is 49
    assert levels.inferior_mm == pytest.approx(_z(10) - 15.0)
    assert levels.superior_mm == pytest.approx(_z(49) - 50.0)
    whole = 2 * np.pi * 8.0 * 5.5  # cm² of both lungs, 40 slices of 0.5 cm
    assert levels.lung_cm3 == pytest.approx(40 * whole * 0.5 + 4 * 0.04 * whole * 0.5, rel=0.05)
    assert [i for i in LESIONS if levels.outside(_z(i))] == [5, 40, 55]


def test_the_packed_plane_is_the_mask() -> None:
    hu = _thorax()[30]
    mask = internal_air_mask(hu)
    assert mask.shape == (SIZE // 4, SIZE // 4) and mask.sum() > 0
    np.testing.assert_array_equal(unpack(internal_air(hu)), mask)
    assert not internal_air_mask(np.full((SIZE, SIZE), -1000.0, np.float32)).any()  # outside air only


def test_no_levels_when_the_field_of_view_cuts_the_lungs() -> None:
    hu = np.ascontiguousarray(_thorax()[:, 64:192, 64:192])  # a cardiac field of view: lungs reach the border
    levels = cardiac_levels_of_volume(hu, _geometry(size=128))
    assert not levels.applies and "field of view" in levels.note


def test_a_side_stays_open_where_the_lungs_do_not_end_in_the_scan() -> None:
    hu = _thorax()[:46]  # stops mid-chest: no apices
    levels = cardiac_levels_of_volume(hu, _geometry(n=46))
    assert levels.superior_mm is None and levels.inferior_mm == pytest.approx(_z(10) - 15.0)
    assert "apices not in the scan" in levels.note
    top = _thorax()[20:]  # starts mid-chest: no bases
    levels = cardiac_levels(
        [internal_air_mask(p) for p in top], [_z(i) for i in range(20, N)], (SPACING, SPACING), INC)
    assert levels.inferior_mm is None and levels.superior_mm == pytest.approx(_z(49) - 50.0)


def test_whole_volume_scorer_excludes_neck_and_abdomen() -> None:
    hu, g = _thorax(), _geometry()
    labels = fake_labels(hu)
    res = score_volume(hu, g, labels)
    assert sorted(les.slice_index for les in res.lesions) == [11, 30]
    assert sorted(les.slice_index for les, why in res.excluded_lesions if why == WINDOW_REASON) == [5, 40, 55]
    off = score_volume(hu, g, labels, AgatstonConfig(cardiac_levels=False))
    assert len(off.lesions) == 5 and not off.excluded_lesions
    assert res.agatston_total == pytest.approx(off.agatston_total * 2 / 5)  # five identical discs
    both, counted = score_volume_and_labels(hu, g, labels)  # the labels it counted, without a second pass
    assert both.lesions == res.lesions and both.excluded_lesions == res.excluded_lesions
    expected = labels.copy()
    expected[[5, 40, 55]] = 0  # the neck, upper-chest and abdominal discs' slices, by construction
    np.testing.assert_array_equal(counted, expected)
    np.testing.assert_array_equal(scored_labels(hu, g, labels, AgatstonConfig()), expected)
    assert not AgatstonConfig().for_reference_labels().cardiac_levels


def test_slice_by_slice_pipeline_agrees_and_reports_the_levels(tmp_path: Path) -> None:
    hu = _thorax()
    write_ct_series(hu, tmp_path / "s", pixel_spacing_mm=(SPACING, SPACING), slice_thickness_mm=INC,
                    z_positions_mm=[_z(i) for i in range(N)])
    (series,) = scan_path(tmp_path / "s").series
    score = score_series(series, models=fake_models(), config=PipelineConfig(batch_size=8))
    got = score.scored.result
    ref = score_volume(hu, series.geometry, fake_labels(hu))
    assert got.lesions == ref.lesions and len(got.lesions) == 2
    assert got.excluded_lesions == ref.excluded_lesions
    assert set(score.label_maps) == {11, 30}  # the excluded slices' masks are gone from the SEG too
    report = scored_report(score.scored)
    validate_report(report)
    assert [x["reason"] for x in report["excluded_lesions"]].count(WINDOW_REASON) == 3
    found = report["agatston_config"]["cardiac_levels_found"]
    assert found["inferior_mm"] == pytest.approx(_z(10) - 15.0) and found["superior_mm"] == pytest.approx(_z(49) - 50.0)


def test_a_series_whose_axis_runs_to_the_feet_keeps_the_same_levels(tmp_path: Path) -> None:
    """Rows running to the patient's anterior→posterior flipped (ImageOrientationPatient 1,0,0,0,-1,0):
    the slice normal points to the feet, the series' z_mm grows towards them and slice 0 is the top. The
    levels are the same anatomy, expressed on that axis."""
    hu = _thorax()
    write_ct_series(hu[:, ::-1, :], tmp_path / "s", pixel_spacing_mm=(SPACING, SPACING), slice_thickness_mm=INC,
                    z_positions_mm=[-_z(i) for i in range(N)],  # along the normal: patient z stays _z(i)
                    orientation=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    (series,) = scan_path(tmp_path / "s").series
    g = series.geometry
    assert g.normal[2] < 0 and g.z_mm[0] < g.z_mm[-1] and g.z_mm[0] == pytest.approx(-_z(N - 1))
    score = score_series(series, models=fake_models(), config=PipelineConfig(batch_size=8))
    got = score.scored.result
    assert sorted(-les.z_mm for les in got.lesions) == [_z(11), _z(30)]
    assert sorted(-les.z_mm for les, why in got.excluded_lesions if why == WINDOW_REASON) == [_z(5), _z(40), _z(55)]
    found = score.scored.result.config["cardiac_levels_found"]
    assert found["inferior_mm"] == pytest.approx(-(_z(10) - 15.0))
    assert found["superior_mm"] == pytest.approx(-(_z(49) - 50.0))


def test_a_phantom_heart_lies_inside_its_levels() -> None:
    from cacstream.training.phantom import PhantomConfig, make_phantom

    case = make_phantom(6003, PhantomConfig(kind="chest"))  # 512²: the whole chest in view
    levels = cardiac_levels_of_volume(case.hu, case.geometry)
    lo, hi = case.truth["landmarks"]["heart_z_range_mm"]
    assert levels.inferior_mm is not None and levels.superior_mm is not None
    assert levels.inferior_mm < lo - 10.0 and levels.superior_mm > hi + 10.0
    z = np.asarray(case.geometry.z_mm)
    coronary = (case.labels > 0).reshape(len(z), -1).any(axis=1)
    assert coronary.any() and not any(levels.outside(float(v)) for v in z[coronary])


@pytest.mark.skipif(not COCA.is_dir(), reason="COCA sample not beside the repository")
def test_coca_levels() -> None:
    """Gated scans: the cardiac field of view cuts the lungs, no levels. Non-gated: levels that hold the
    heart; its slices were read off the images by eye (docs/images/cardiac_levels_coca.png) —
    patient 1 from z -253 to -128 mm, patient 2 from -240 to -140 mm — and the lowest abdominal
    calcium the U-Net labelled in patient 2 (splenic hilum, z -280 mm) lies below them."""
    from cacstream.training.data import coca

    for pid in coca.list_gated_patients(COCA):
        v = coca.load_gated_patient(COCA, pid).volume
        assert not cardiac_levels_of_volume(v.hu, v.geometry).applies
    heart = {"1": (-253.0, -128.0), "2": (-240.0, -140.0)}
    for pid in coca.list_nongated_patients(COCA):
        v = coca.load_nongated_patient(COCA, pid).volume
        levels = cardiac_levels_of_volume(v.hu, v.geometry)
        lo, hi = heart[pid]
        assert levels.inferior_mm is not None and levels.superior_mm is not None
        assert levels.inferior_mm < lo and levels.superior_mm > hi
        if pid == "2":
            assert levels.outside(-280.0)
