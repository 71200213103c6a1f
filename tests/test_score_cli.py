"""`cacstream score PATH --out DIR`: the contract (reports, SR/SEG/key image, ledger, run summary), the
documented exit codes, and scores equal to the whole-volume reference."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cacstream.engine.cli import main
from cacstream.engine.scoring.agatston import score_volume
from cacstream.engine.series import read_volume, scan_path

from _stream_series import make_hu, write_series


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("score-src")
    write_series(root / "one", 61, n_slices=10)
    write_series(root / "two" / "nested", 62, n_slices=9, thickness_mm=2.0, spacing_mm=0.5)
    write_series(root / "short", 63, n_slices=4)
    (root / "junk.dcm").write_bytes(b"\x00garbage" * 50)
    return root


def test_scores_every_eligible_series_and_writes_the_contract(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["score", str(folder), "--out", str(out), "--mode", "threshold", "--quiet"]) == 0
    summary = json.loads((out / "run-summary.json").read_text())
    assert summary["counts"] == {"scored": 2, "rejected": 1, "failed": 0, "skipped_files": 1}
    assert summary["skipped_files"][0]["reason"] == "not_dicom"
    scan = scan_path(folder)
    for series in scan.series:
        report = json.loads((out / f"{series.uid}.json").read_text())
        ref = score_volume(read_volume(series).hu, series.geometry)
        assert report["status"] == "scored" and report["mode"] == "threshold"
        assert report["agatston_total"] == pytest.approx(ref.agatston_total, abs=1e-4)
        assert len(report["lesions"]) == len(ref.lesions)
        assert report["slices_total"] == len(series.slices) and report["slices_flagged"] is None
        assert {"decode", "agatston", "summarise"} <= set(report["timings_ms"])
        for kind, suffix in (("sr", ".sr.dcm"), ("seg", ".seg.dcm"), ("key_image", ".key.png")):
            assert report["artifacts"][kind] == f"{series.uid}{suffix}" and (out / f"{series.uid}{suffix}").is_file()
    rejected = json.loads((out / f"{scan.rejected[0].uid}.json").read_text())
    assert rejected["status"] == "rejected" and rejected["reason"] == "too_few_slices"
    assert not (out / f"{scan.rejected[0].uid}.sr.dcm").exists()
    with open(out / "ledger.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["status"] for r in rows) == ["rejected", "scored", "scored"]
    assert not (out / ".staging").exists() or not any((out / ".staging").iterdir())


def test_output_switches(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["score", str(folder / "one"), "--out", str(out), "--mode", "threshold", "--quiet", "--no-sr",
                 "--no-seg", "--no-key-image"]) == 0
    assert sorted(p.suffix for p in out.iterdir() if p.is_file()) == [".csv", ".json", ".json"]


def test_exit_codes_nothing_to_score_and_missing_weights(folder: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    assert main(["score", str(folder / "short"), "--out", str(tmp_path / "a"), "--mode", "threshold", "--quiet"]) == 3
    assert main(["score", str(tmp_path / "nope"), "--out", str(tmp_path / "b"), "--mode", "threshold", "--quiet"]) == 3
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setenv("CACSTREAM_WEIGHTS", str(empty))
    assert main(["score", str(folder), "--out", str(tmp_path / "c"), "--mode", "model", "--quiet"]) == 5


def test_a_series_that_fails_to_decode_exits_4_and_is_reported_with_the_reason(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from cacstream.training.dicom_writer import available_transfer_syntaxes, write_ct_series

    if "rle" not in available_transfer_syntaxes():
        pytest.skip("no RLE encoder installed")
    src = tmp_path / "src"
    paths = write_ct_series(make_hu(64, 9, 32), src, pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=3.0,
                            transfer_syntax="rle", series_uid=generate_uid())
    write_series(src / "good", 65, n_slices=9)
    data = bytearray(paths[3].read_bytes())
    items = [i for i in range(len(data) - 4) if data[i:i + 4] == b"\xfe\xff\x00\xe0"]
    start = items[1] + 8  # the first fragment after the basic offset table
    data[start:start + 64] = b"\x00" * 64  # RLE header: 0 segments, same length, so the header scan passes
    paths[3].write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["score", str(src), "--out", str(out), "--mode", "threshold", "--quiet"]) == 4
    summary = json.loads((out / "run-summary.json").read_text())
    assert summary["counts"]["scored"] == 1 and summary["counts"]["failed"] == 1
    failed = summary["failed"][0]
    report = json.loads((out / f"{failed['series_instance_uid']}.json").read_text())
    assert report["status"] == "rejected" and report["reason"] in ("decode_failed", "truncated", "unsupported_transfer_syntax")
    assert str(paths[3]) in report["reason_message"]
    assert (out / "errors" / f"{failed['series_instance_uid']}.txt").is_file()
    assert np.isfinite(json.loads((out / f"{summary['scored'][0]['series_instance_uid']}.json").read_text())
                       ["agatston_total"])


def _scipy_agatston(hu: np.ndarray, pixel_spacing: tuple[float, float], factor: float) -> float:
    """Independent reference: 8-connected lesions ≥ 130 HU per slice, area ≥ 1 mm², peak-HU weights."""
    from scipy import ndimage

    area_px = pixel_spacing[0] * pixel_spacing[1]
    total = 0.0
    for sl in hu:
        lab, n = ndimage.label(sl >= 130, structure=np.ones((3, 3), bool))
        for k in range(1, n + 1):
            vals = sl[lab == k]
            area = vals.size * area_px
            if area >= 1.0:
                peak = vals.max()
                total += area * (1 + (peak >= 200) + (peak >= 300) + (peak >= 400))
    return total * factor


@pytest.mark.parametrize("ideal", [True, False], ids=["ideal", "realistic"])
def test_threshold_mode_on_a_calibration_phantom_equals_the_reference(tmp_path: Path, ideal: bool) -> None:
    """Issue 2 acceptance: the DICOM written for a QA phantom, scored by the CLI, equals the reference to 0.01.

    Ideal mode: the reference is the analytic lattice count of each insert (exact areas, nominal density).
    Realistic mode (blur, noise): the reference is an independent scipy scoring of the pixel values read
    back with pydicom."""
    import pydicom

    from cacstream.training.phantom import PhantomConfig, make_phantom, write_series as write_phantom

    case = make_phantom(11, PhantomConfig(kind="calibration", ideal=ideal, matrix=256, thickness_mm=3.0))
    write_phantom(case, tmp_path / "src")
    out = tmp_path / "out"
    assert main(["score", str(tmp_path / "src"), "--out", str(out), "--mode", "threshold", "--quiet"]) == 0
    (report_file,) = [p for p in out.glob("*.json") if p.name != "run-summary.json"]
    report = json.loads(report_file.read_text())
    g = case.geometry
    factor = min(g.slice_thickness_mm, g.slice_increment_mm) / 3.0
    if ideal:
        ps = g.pixel_spacing_mm[0]
        expected = 0.0
        for ins in case.truth["inserts"]:
            area = ins["ideal_pixel_count"] * ps * ps
            if area >= 1.0:
                d = ins["density_hu"]
                expected += area * (1 + (d >= 200) + (d >= 300) + (d >= 400)) * factor * len(ins["slices"])
    else:
        files = sorted((tmp_path / "src").rglob("*.dcm"))
        dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
        hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
        expected = _scipy_agatston(hu, tuple(float(v) for v in dss[0].PixelSpacing), factor)
    assert expected > 0
    assert report["agatston_total"] == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("option, value, reason", [
    ("--skeletal-component-mm3", "-5", "skeletal_component_mm3 must be > 0"),
    ("--min-area-mm2", "-1", "min_area_mm2 must be >= 0"),
])
def test_an_agatston_value_the_config_refuses_ends_with_its_reason(
    folder: Path, tmp_path: Path, option: str, value: str, reason: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["score", str(folder), "--out", str(tmp_path / "o"), "--mode", "threshold", option, value, "--quiet"])
    assert reason in str(exc.value.code) and str(exc.value.code).startswith("error: Agatston option")
    assert not (tmp_path / "o").exists()  # nothing scored with a refused convention


def test_the_summary_row_names_what_the_rules_left_out() -> None:
    """The terminal table's line for a scored series: scores, then the excluded lesions counted by
    reason in the key image's words (none: an empty cell)."""
    from cacstream.engine.pipeline.batch import scored_row

    report = {"slices_total": 70, "agatston_total": 57.84, "risk_category": "11-100",
              "agatston_per_artery": {"LM": 0.0, "LAD": 0.0, "LCX": 4.04, "RCA": 53.81},
              "excluded_lesions": [{"reason": "outside_cardiac_levels"}] * 3 + [{"reason": "partial_claim"}]
              + [{"reason": "some_future_rule"}]}
    row = scored_row("1.2.3", report)
    assert row[:6] == ("1.2.3", "70", "scored", "57.8", "11-100", "LM 0.0 LAD 0.0 LCX 4.0 RCA 53.8")
    assert row[6] == "3 above or below the heart, 1 split calcium, 1 some_future_rule"
    assert scored_row("1.2.3", {**report, "excluded_lesions": []})[6] == ""
