"""engine/series/grouping.py: order along the normal (never by name or InstanceNumber), geometry.

Series are written with known geometry by training/dicom_writer.py; the expected order and positions
are computed here by hand from what was written."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cacstream.engine.series import read_header, read_volume, scan_path
from cacstream.engine.series.grouping import (
    derive_geometry,
    group_by_series,
    median_increment,
    order_along_normal,
    slice_normal,
)
from cacstream.training.dicom_writer import write_ct_series


def _vol(n: int, rows: int = 6, cols: int = 5, seed: int = 0) -> np.ndarray:
    # each slice gets a distinct constant offset so order mistakes are visible
    rng = np.random.default_rng(seed)
    return (rng.integers(-100, 100, size=(n, rows, cols)) + 10 * np.arange(n)[:, None, None]).astype(np.float32)


@pytest.mark.parametrize(
    ("orientation", "normal"),
    [
        ((1, 0, 0, 0, 1, 0), (0, 0, 1)),     # axial, head first supine
        ((-1, 0, 0, 0, 1, 0), (0, 0, -1)),   # axial, feet first supine (x flipped)
        ((1, 0, 0, 0, 0, -1), (0, 1, 0)),    # coronal
        ((0, 1, 0, 0, 0, -1), (-1, 0, 0)),   # sagittal
    ],
)
def test_slice_normal_is_row_cross_column(orientation, normal) -> None:
    np.testing.assert_allclose(slice_normal(orientation), normal, atol=1e-12)


def test_slice_normal_refuses_parallel_directions() -> None:
    with pytest.raises(ValueError):
        slice_normal((1, 0, 0, 1, 0, 0))


def test_shuffled_names_and_reversed_instance_numbers_do_not_change_the_order(tmp_path) -> None:
    n = 12
    hu = _vol(n)
    names = [f"{x:08x}" for x in random.Random(3).sample(range(1 << 30), n)]  # random names, no extension
    paths = write_ct_series(hu, tmp_path, pixel_spacing_mm=(0.6, 0.6), slice_thickness_mm=2.0,
                            instance_numbers=list(range(n, 0, -1)), file_name="{index}")
    for p, new in zip(paths, names):
        os.rename(p, tmp_path / new)
    result = scan_path(tmp_path)
    assert not result.rejected and not result.skipped and len(result.series) == 1
    s = result.series[0]
    assert [h.instance_number for h in s.slices] == list(range(n, 0, -1))  # i.e. ordered by z, not by number
    assert s.geometry.z_mm == pytest.approx([2.0 * k for k in range(n)])
    np.testing.assert_array_equal(read_volume(s, threads=1).hu, hu)


def test_feet_first_orientation_orders_along_its_own_normal(tmp_path) -> None:
    n = 9
    hu = _vol(n)
    table_z = [-100.0 - 3.0 * k for k in range(n)]  # ImagePositionPatient z, moving towards the feet
    orientation = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)   # normal (0, 0, -1)
    positions = [(10.0, -20.0, z) for z in table_z]
    write_ct_series(hu, tmp_path, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=3.0, positions_mm=positions,
                    orientation=orientation)
    s = scan_path(tmp_path).series[0]
    expected_proj = sorted(-z for z in table_z)  # IPP · (0,0,-1)
    assert s.geometry.normal == pytest.approx((0.0, 0.0, -1.0))
    assert s.geometry.z_mm == pytest.approx(expected_proj)
    assert s.geometry.slice_increment_mm == pytest.approx(3.0)
    # projections increase with IPP z decreasing: slice k of the input is already in increasing order
    np.testing.assert_array_equal(read_volume(s, threads=1).hu, hu)


def test_head_first_written_top_down_is_reordered_bottom_up(tmp_path) -> None:
    n = 8
    hu = _vol(n)
    z = [50.0 - 2.5 * k for k in range(n)]  # written from head to feet
    write_ct_series(hu, tmp_path, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=2.5, z_positions_mm=z)
    s = scan_path(tmp_path).series[0]
    assert s.geometry.z_mm == pytest.approx(sorted(z))
    np.testing.assert_array_equal(read_volume(s, threads=1).hu, hu[::-1])


def test_overlapping_reconstruction_keeps_thickness_and_increment_apart(tmp_path) -> None:
    write_ct_series(_vol(10), tmp_path, pixel_spacing_mm=(0.4, 0.4), slice_thickness_mm=3.0,
                    z_positions_mm=[1.5 * k for k in range(10)])
    g = scan_path(tmp_path).series[0].geometry
    assert g.slice_thickness_mm == 3.0 and g.slice_increment_mm == pytest.approx(1.5)
    assert g.effective_thickness_mm == pytest.approx(1.5)
    assert g.voxel_volume_mm3 == pytest.approx(0.4 * 0.4 * 1.5)
    assert (g.rows, g.columns, g.pixel_spacing_mm) == (6, 5, (0.4, 0.4))


def test_missing_slice_thickness_falls_back_to_the_increment(tmp_path) -> None:
    def drop(ds: pydicom.Dataset, k: int) -> None:
        del ds.SliceThickness

    write_ct_series(_vol(8), tmp_path, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=1.25, extra=drop)
    g = scan_path(tmp_path).series[0].geometry
    assert g.slice_thickness_mm == pytest.approx(1.25) and g.slice_increment_mm == pytest.approx(1.25)


def test_several_series_in_one_folder_and_nested_folders(tmp_path) -> None:
    write_ct_series(_vol(8), tmp_path / "a" / "deep" / "er", pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=3.0,
                    file_name="A{index}")
    write_ct_series(_vol(10, seed=1), tmp_path / "a", pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=5.0,
                    file_name="B{index}.dcm")
    write_ct_series(_vol(9, seed=2), tmp_path / "a", pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=2.0,
                    file_name="C{index}.ima")
    result = scan_path(tmp_path)
    assert sorted(len(s.slices) for s in result.series) == [8, 9, 10]
    assert not result.rejected and not result.skipped
    for s in result.series:
        assert len({h.series_instance_uid for h in s.slices}) == 1
        assert list(s.geometry.z_mm) == sorted(s.geometry.z_mm)


def test_group_by_series_and_tie_order_are_deterministic(tmp_path) -> None:
    p1 = write_ct_series(_vol(3), tmp_path / "x", pixel_spacing_mm=(1, 1), slice_thickness_mm=1, series_uid="1.2.3")
    p2 = write_ct_series(_vol(2), tmp_path / "y", pixel_spacing_mm=(1, 1), slice_thickness_mm=1, series_uid="1.2.4")
    headers = [read_header(p)[0] for p in (p2[0], *p1, p2[1])]
    groups = group_by_series(headers)
    assert list(groups) == ["1.2.4", "1.2.3"] and [len(v) for v in groups.values()] == [2, 3]
    # same position twice: order is decided by SOP UID, whatever the input order
    a = order_along_normal([headers[1], headers[0]])[0]
    b = order_along_normal([headers[0], headers[1]])[0]
    assert [h.key for h in a] == [h.key for h in b]


def test_derive_geometry_uses_median_increment_and_median_thickness(tmp_path) -> None:
    z = [0.0, 2.0, 4.0, 6.1, 8.0, 10.0]
    paths = write_ct_series(_vol(6), tmp_path, pixel_spacing_mm=(0.5, 0.6), slice_thickness_mm=2.0, z_positions_mm=z)
    headers = [read_header(p)[0] for p in reversed(paths)]
    ordered, normal, proj = order_along_normal(headers)
    assert proj.tolist() == pytest.approx(z)
    g = derive_geometry(ordered, normal, proj)
    assert g.slice_increment_mm == pytest.approx(float(np.median(np.diff(z))))
    assert g.pixel_spacing_mm == (0.5, 0.6) and g.n_slices == 6
    assert median_increment(np.array([1.0])) is None
