"""engine/series/eligibility.py: each rule rejects what it must (with a named reason and an actionable
message) and accepts what it must not reject."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cacstream.engine.config import EligibilityConfig
from cacstream.engine.series import check_series, read_header, scan_path
from cacstream.engine.series.types import RejectedSeries, Series
from cacstream.training.dicom_writer import write_ct_series


def _vol(n: int, rows: int = 6, cols: int = 6) -> np.ndarray:
    return np.zeros((n, rows, cols), dtype=np.float32)


def _write(folder: Path, n: int = 10, **kw) -> list[Path]:
    kw.setdefault("pixel_spacing_mm", (0.5, 0.5))
    kw.setdefault("slice_thickness_mm", 3.0)
    return write_ct_series(_vol(n, kw.pop("rows", 6), kw.pop("cols", 6)), folder, **kw)


def _only_rejection(folder: Path, config: EligibilityConfig = EligibilityConfig()) -> RejectedSeries:
    result = scan_path(folder, config)
    assert not result.series, [s.uid for s in result.series]
    assert len(result.rejected) == 1, result.rejected
    return result.rejected[0]


def _accepted(folder: Path, config: EligibilityConfig = EligibilityConfig()) -> Series:
    result = scan_path(folder, config)
    assert not result.rejected, [r.message for r in result.rejected]
    assert len(result.series) == 1
    return result.series[0]


def test_a_plain_axial_ct_series_is_eligible(tmp_path) -> None:
    paths = _write(tmp_path, 10)
    s = _accepted(tmp_path)
    assert len(s.slices) == 10 and {h.path for h in s.slices} == set(paths)


def test_not_ct(tmp_path) -> None:
    def mr(ds: pydicom.Dataset, k: int) -> None:
        ds.Modality = "MR"

    _write(tmp_path, extra=mr, series_description="t1_vibe")
    r = _only_rejection(tmp_path)
    assert r.reason == "not_ct" and "MR" in r.message and "t1_vibe" in r.message and len(r.files) == 10


def test_localizer_by_image_type(tmp_path) -> None:
    _write(tmp_path, 2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    r = _only_rejection(tmp_path)
    assert r.reason == "localizer"


def test_coronal_plane_is_not_axial(tmp_path) -> None:
    _write(tmp_path, orientation=(1, 0, 0, 0, 0, -1))
    assert _only_rejection(tmp_path).reason == "not_axial"


def test_tilted_orientation_is_gantry_tilt_and_small_tilt_is_accepted(tmp_path) -> None:
    def tilted(deg: float) -> tuple[float, ...]:
        t = math.radians(deg)
        return (1.0, 0.0, 0.0, 0.0, math.cos(t), math.sin(t))

    _write(tmp_path / "tilt", orientation=tilted(12.0))
    r = _only_rejection(tmp_path / "tilt")
    assert r.reason == "gantry_tilt" and "12.0°" in r.message
    _write(tmp_path / "slight", orientation=tilted(0.5))
    _accepted(tmp_path / "slight")
    assert _only_rejection(tmp_path / "slight", EligibilityConfig(max_gantry_tilt_deg=0.2)).reason == "gantry_tilt"


def test_gantry_detector_tilt_tag(tmp_path) -> None:
    _write(tmp_path, gantry_tilt_deg=-15.0)
    r = _only_rejection(tmp_path)
    assert r.reason == "gantry_tilt" and "-15" in r.message


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry(tmp_path, keyword) -> None:
    def drop(ds: pydicom.Dataset, k: int) -> None:
        if k == 4:
            delattr(ds, keyword)

    paths = _write(tmp_path, extra=drop)
    r = _only_rejection(tmp_path)
    assert r.reason == "missing_geometry" and keyword in r.message and str(paths[4]) in r.message


def test_mixed_sizes(tmp_path) -> None:
    _write(tmp_path, 5, series_uid="1.2.826.0.1.3680043.8.498.1", file_name="a{index}")
    _write(tmp_path, 5, series_uid="1.2.826.0.1.3680043.8.498.1", file_name="b{index}", rows=8, cols=8,
           z_positions_mm=[15.0 + 3 * k for k in range(5)])
    r = _only_rejection(tmp_path)
    assert r.reason == "mixed_sizes" and "6×6" in r.message and "8×8" in r.message


def test_inconsistent_pixel_spacing_and_orientation(tmp_path) -> None:
    def spacing(ds: pydicom.Dataset, k: int) -> None:
        if k == 3:
            ds.PixelSpacing = ["0.6", "0.6"]

    _write(tmp_path / "sp", extra=spacing)
    r = _only_rejection(tmp_path / "sp")
    assert r.reason == "inconsistent_geometry" and "pixel spacing" in r.message

    def orient(ds: pydicom.Dataset, k: int) -> None:
        if k == 3:
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0.9995", "0.0316"]

    _write(tmp_path / "or", extra=orient)
    assert _only_rejection(tmp_path / "or").reason == "inconsistent_geometry"


def test_sideways_drift_is_inconsistent_geometry(tmp_path) -> None:
    _write(tmp_path, positions_mm=[(2.0 * k, 0.0, 3.0 * k) for k in range(10)])
    r = _only_rejection(tmp_path)
    assert r.reason == "inconsistent_geometry" and "sideways" in r.message


def test_too_few_slices_and_the_knob(tmp_path) -> None:
    _write(tmp_path, 5)
    r = _only_rejection(tmp_path)
    assert r.reason == "too_few_slices" and "5 slice" in r.message
    _accepted(tmp_path, EligibilityConfig(min_slices=5))


def test_slice_thickness_bounds(tmp_path) -> None:
    _write(tmp_path, slice_thickness_mm=8.0)
    r = _only_rejection(tmp_path)
    assert r.reason == "slice_thickness" and "8 mm" in r.message
    _accepted(tmp_path, EligibilityConfig(max_slice_thickness_mm=10.0))
    assert _only_rejection(tmp_path, EligibilityConfig(max_slice_thickness_mm=10.0,
                                                       min_slice_thickness_mm=9.0)).reason == "slice_thickness"


def test_duplicate_positions_with_different_sop_uids(tmp_path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.77"
    _write(tmp_path, 10, series_uid=uid, file_name="p1_{index}")
    _write(tmp_path, 10, series_uid=uid, file_name="p2_{index}")  # second phase, same positions
    r = _only_rejection(tmp_path)
    assert r.reason == "duplicate_positions" and "10 pair(s)" in r.message


def test_exact_duplicate_file_is_skipped_and_the_series_stays_eligible(tmp_path) -> None:
    paths = _write(tmp_path / "s", 10)
    copy = tmp_path / "s" / "copy_of_slice_3"
    shutil.copy(paths[3], copy)
    result = scan_path(tmp_path / "s")
    assert len(result.series) == 1 and len(result.series[0].slices) == 10 and not result.rejected
    assert [(k.reason, k.path) for k in result.skipped] == [("duplicate_sop_instance", copy)]
    assert str(paths[3]) in result.skipped[0].message and str(copy) in result.skipped[0].message


def test_missing_slices_name_their_positions(tmp_path) -> None:
    z = [3.0 * k for k in range(12)]
    del z[7]  # 21.0 missing
    del z[3]  # 9.0 missing
    _write(tmp_path, len(z), z_positions_mm=z)
    r = _only_rejection(tmp_path)
    assert r.reason == "missing_slices"
    assert "2 slice(s) missing" in r.message and "9.00" in r.message and "21.00" in r.message


def test_a_gap_of_two_missing_slices(tmp_path) -> None:
    z = [0, 2, 4, 6, 12, 14, 16, 18, 20, 22]
    _write(tmp_path, len(z), z_positions_mm=[float(v) for v in z], slice_thickness_mm=2.0)
    r = _only_rejection(tmp_path)
    assert r.reason == "missing_slices" and "8.00, 10.00" in r.message


def test_irregular_spacing_and_tolerated_jitter(tmp_path) -> None:
    z = [0, 3, 6, 10.5, 13.5, 16.5, 19.5, 22.5, 25.5, 28.5]  # one step of 1.5 increments
    _write(tmp_path / "irr", len(z), z_positions_mm=[float(v) for v in z])
    assert _only_rejection(tmp_path / "irr").reason == "irregular_spacing"
    jitter = [3.0 * k + (0.1 if k % 2 else -0.1) for k in range(10)]  # steps 3.2 / 2.8: within 20 % of 3.2
    _write(tmp_path / "ok", 10, z_positions_mm=jitter)
    _accepted(tmp_path / "ok")


def test_check_series_directly_on_headers(tmp_path) -> None:
    paths = _write(tmp_path, 10, z_positions_mm=[30.0 - 3 * k for k in range(10)])
    headers = [read_header(p)[0] for p in paths]
    s = check_series(headers[0].series_instance_uid, headers)
    assert isinstance(s, Series)
    assert [h.path for h in s.slices] == paths[::-1]
    r = check_series("x", headers, EligibilityConfig(min_slices=11))
    assert isinstance(r, RejectedSeries) and r.reason == "too_few_slices"
    assert set(r.files) == set(paths)
