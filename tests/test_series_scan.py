"""engine/series/scan.py on the real COCA samples (skipped without them) and its file finding."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cacstream.engine.series import find_files, read_volume, scan_path
from cacstream.engine.series.decode import decode_plan

GATED_0 = "Gated_release_final/patient/0"

# pydicom warns about real files' invalid values; the reasons under test are ours, not its warnings.
pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")]


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm"))


@pytest.mark.parametrize(
    ("sub", "n", "thickness", "spacing"),
    [
        (GATED_0, 57, 3.0, 0.4746),
        ("deidentified_nongated/1/1", 61, 5.0, None),
        ("deidentified_nongated/2/2", 70, 5.0, None),
    ],
)
def test_coca_samples_are_eligible_and_ordered_by_z(coca_root, sub, n, thickness, spacing) -> None:
    folder = coca_root / sub
    result = scan_path(folder)
    assert not result.rejected and not result.skipped, (result.rejected, result.skipped)
    assert len(result.series) == 1
    s = result.series[0]
    g = s.geometry
    assert len(s.slices) == n == len(_dicom_files(folder))
    assert (g.rows, g.columns) == (512, 512)
    assert g.slice_thickness_mm == thickness and g.slice_increment_mm == pytest.approx(thickness, abs=1e-3)
    if spacing is not None:
        assert g.pixel_spacing_mm[0] == pytest.approx(spacing, abs=1e-4)
    # independent expectation: pydicom's own ImagePositionPatient z, sorted (axial, normal +z)
    ipp_z = sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
                   for p in _dicom_files(folder))
    assert g.normal == pytest.approx((0.0, 0.0, 1.0))
    assert list(g.z_mm) == pytest.approx(ipp_z)
    assert all(b > a for a, b in zip(g.z_mm, g.z_mm[1:]))


def test_nongated_files_without_series_uid_form_one_derived_series(coca_root) -> None:
    s = scan_path(coca_root / "deidentified_nongated/1/1").series[0]
    assert all(h.series_uid_derived for h in s.slices)
    assert s.uid.startswith("2.25.")
    assert scan_path(coca_root / "deidentified_nongated/1/1").series[0].uid == s.uid  # deterministic


def test_whole_coca_tree(coca_root) -> None:
    result = scan_path(coca_root)
    assert sorted(len(s.slices) for s in result.series) == [46, 57, 57, 61, 70]
    assert not result.rejected
    assert sorted(k.path.name for k in result.skipped) == ["0.xml", "1.xml", "2.xml", "scores.xlsx"]
    assert {k.reason for k in result.skipped} == {"not_dicom"}


def test_coca_volume_equals_an_independent_pydicom_read(coca_root) -> None:
    folder = coca_root / GATED_0
    s = scan_path(folder).series[0]
    vol = read_volume(s).hu
    datasets = sorted((pydicom.dcmread(p) for p in _dicom_files(folder)),
                      key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])
    assert vol.dtype == np.float32 and vol.shape == (57, 512, 512)
    np.testing.assert_array_equal(vol, expected.astype(np.float32))
    assert decode_plan(s, 2) == ("threads", 2) and decode_plan(s, 1) == ("serial", 1)


def test_coca_header_scan_is_fast(coca_root) -> None:
    """57 files (one gated series): the brief asks for well under a second; median of 3 on a busy 2-core box."""
    folder = coca_root / GATED_0
    scan_path(folder)  # warm the file cache
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        scan_path(folder)
        times.append(time.perf_counter() - t0)
    assert float(np.median(times)) < 1.0, times


def test_find_files_sorted_and_skips_hidden_and_temporary(tmp_path) -> None:
    for name in ("b", "a.dcm", "sub/c", ".hidden", "x.tmp", "y.part", "~$lock", "DICOMDIR"):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    files, skipped = find_files(tmp_path)
    assert files == [tmp_path / "a.dcm", tmp_path / "b", tmp_path / "sub" / "c"]
    assert {(k.path.name, k.reason) for k in skipped} == {
        (".hidden", "hidden"), ("x.tmp", "temporary"), ("y.part", "temporary"), ("~$lock", "temporary"),
        ("DICOMDIR", "dicomdir")}
    one, none = find_files(tmp_path / "x.tmp")  # a file named explicitly is read whatever its name
    assert one == [tmp_path / "x.tmp"] and none == []
