"""A folder full of bad input (issue 2, item 8): every file ends up in a series, in a rejected series, or
skipped with the right reason and a message naming it — never a traceback, never silently dropped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from cacstream.engine.series import FILE_REASONS, SERIES_REASONS, read_volume, scan_path
from cacstream.training.dicom_writer import write_ct_series

# pydicom warns about real files' invalid values; the reasons under test are ours, not its warnings.
pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"), pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")]


def _td(name: str) -> Path:
    return Path(get_testdata_file(name))


@pytest.fixture()
def messy(tmp_path: Path) -> tuple[Path, dict[str, str], list[Path]]:
    """A realistic mess: one good CT series among odd files; returns (root, expected reason per file name, good files)."""
    root = tmp_path / "export"
    good_hu = np.random.default_rng(0).integers(-1024, 1500, size=(10, 16, 16)).astype(np.float32)
    good = write_ct_series(good_hu, root / "study" / "series_a", pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=3.0,
                           file_name="{index:x}")  # hex names, no extension
    expected: dict[str, str] = {}

    def put(src: Path, name: str, reason: str, sub: str = "") -> None:
        dst = root / sub / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        expected[name] = reason

    put(_td("rtplan.dcm"), "plan.dcm", "no_pixel_data")
    put(_td("test-SR.dcm"), "report", "no_pixel_data", "sr")
    put(_td("rtstruct.dcm"), "rtstruct.dcm", "no_pixel_data")
    put(_td("MR_truncated.dcm"), "mr_trunc.dcm", "truncated")
    put(_td("emri_small_jpeg_2k_lossless_too_short.dcm"), "emri_short.dcm", "truncated")
    put(_td("rtplan.dump"), "notes.txt", "not_dicom")
    put(Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "DICOMDIR", "DICOMDIR", "dicomdir")
    put(good[3], "copy_of_3", "duplicate_sop_instance", "study/series_a")
    (root / "empty.dcm").write_bytes(b"")
    expected["empty.dcm"] = "not_dicom"
    (root / "scores.xlsx").write_bytes(b"PK\x03\x04" + bytes(400))
    expected["scores.xlsx"] = "not_dicom"
    data = good[0].read_bytes()
    (root / "half.dcm").write_bytes(data[: len(data) // 2])
    expected["half.dcm"] = "truncated"
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    expected[".DS_Store"] = "hidden"
    (root / "IM-0099.dcm.part").write_bytes(data)
    expected["IM-0099.dcm.part"] = "temporary"
    (root / ".hidden_dir").mkdir()
    (root / ".hidden_dir" / "x.dcm").write_bytes(data)
    expected[".hidden_dir"] = "hidden"
    os.symlink(root / "does_not_exist", root / "broken_link")
    expected["broken_link"] = "unreadable"
    return root, expected, good


def test_messy_folder_every_file_accounted_for(messy) -> None:
    root, expected, good = messy
    # non-scoring series next to the good one
    put = lambda name, dst: shutil.copy(_td(name), root / dst)  # noqa: E731
    put("MR_small.dcm", "mr.dcm")           # an MR image: its series is rejected as not CT
    put("CT_small.dcm", "ct_single.dcm")    # a lone CT slice: too few slices
    result = scan_path(root, progress=True)

    assert len(result.series) == 1
    s = result.series[0]
    assert {h.path for h in s.slices} == set(good)
    got = {k.path.name: k.reason for k in result.skipped}
    assert got == expected
    for k in result.skipped:
        assert str(k.path) in k.message, k.message
        assert k.reason in FILE_REASONS
    rejected = {r.files[0].name: r.reason for r in result.rejected}
    assert rejected == {"mr.dcm": "not_ct", "ct_single.dcm": "too_few_slices"}
    for r in result.rejected:
        assert r.reason in SERIES_REASONS and r.uid in r.message
    # every regular file and every hidden folder under root appears exactly once
    listed = {p for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and ".hidden_dir" not in p.parts}
    listed.add(root / ".hidden_dir")
    accounted = [h.path for h in s.slices] + [k.path for k in result.skipped] + \
        [p for r in result.rejected for p in r.files]
    assert sorted(accounted) == sorted(listed)
    # the good series still decodes
    assert read_volume(s, threads=2).hu.shape == (10, 16, 16)


def test_duplicate_message_names_both_paths(messy) -> None:
    root, _, good = messy
    dup = [k for k in scan_path(root).skipped if k.reason == "duplicate_sop_instance"]
    assert len(dup) == 1 and str(good[3]) in dup[0].message and "copy_of_3" in dup[0].message


def test_a_single_file_path_and_a_missing_path(tmp_path) -> None:
    one = scan_path(_td("CT_small.dcm"))
    assert not one.series and one.rejected[0].reason == "too_few_slices"
    plan = scan_path(_td("rtplan.dcm"))
    assert [k.reason for k in plan.skipped] == ["no_pixel_data"]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        scan_path(tmp_path / "nowhere")


def test_real_non_ct_images_are_rejected_not_crashed(tmp_path) -> None:
    for name in ("SC_rgb.dcm", "JPEG2000.dcm", "US1_J2KR.dcm", "emri_small.dcm", "rtdose.dcm", "liver.dcm",
                 "OBXXXX1A_rle.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "badVR.dcm", "no_meta.dcm",
                 "image_dfl.dcm", "ExplVR_BigEndNoMeta.dcm", "UN_sequence.dcm"):
        shutil.copy(_td(name), tmp_path / name)
    result = scan_path(tmp_path)
    assert not result.series
    reasons = {r.files[0].name: r.reason for r in result.rejected}
    reasons.update({k.path.name: k.reason for k in result.skipped})
    assert set(reasons) == {p.name for p in tmp_path.iterdir()}
    assert reasons["SC_rgb.dcm"] == reasons["US1_J2KR.dcm"] == reasons["emri_small.dcm"] == "not_ct"
    assert reasons["liver.dcm"] == reasons["image_dfl.dcm"] == reasons["badVR.dcm"] == "not_ct"
    # badVR.dcm is rtdose.dcm with a damaged NumberOfFrames and the same SOPInstanceUID: a real duplicate
    assert reasons["rtdose.dcm"] == "duplicate_sop_instance"
    assert reasons["ExplVR_BigEndNoMeta.dcm"] == "no_pixel_data"
    # UN_sequence.dcm's File Meta says CT Image Storage, but the file ends with no image data at all
    assert reasons["UN_sequence.dcm"] == "truncated"
    assert reasons["no_meta.dcm"] == "not_dicom"


def test_localizer_next_to_the_axial_series(tmp_path) -> None:
    write_ct_series(np.zeros((10, 8, 8), np.float32), tmp_path, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=3.0,
                    file_name="ax{index}")
    write_ct_series(np.zeros((1, 8, 8), np.float32), tmp_path, pixel_spacing_mm=(1.0, 1.0), slice_thickness_mm=1.0,
                    orientation=(1, 0, 0, 0, 0, -1), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                    file_name="topo{index}")
    result = scan_path(tmp_path)
    assert len(result.series) == 1 and [r.reason for r in result.rejected] == ["localizer"]


def test_missing_slice_in_the_middle(tmp_path) -> None:
    paths = write_ct_series(np.zeros((12, 8, 8), np.float32), tmp_path, pixel_spacing_mm=(0.5, 0.5),
                            slice_thickness_mm=3.0, z_positions_mm=[-60.0 + 3 * k for k in range(12)])
    paths[6].unlink()  # z = -42
    r = scan_path(tmp_path).rejected
    assert [x.reason for x in r] == ["missing_slices"] and "-42.00" in r[0].message
