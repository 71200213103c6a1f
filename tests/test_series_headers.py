"""engine/series/headers.py: header fields equal what was written; multi-frame functional groups;
files without preamble; the reasons given for files that are not images."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cacstream.engine.series import DicomReadError, decode_stored, read_header
from cacstream.engine.series.types import AcquisitionInfo
from cacstream.training.dicom_writer import write_ct_series, write_enhanced_ct

# pydicom warns about real files' invalid values; the reasons under test are ours, not its warnings.
pytestmark = [pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")]


def _vol(n=3, rows=6, cols=5) -> np.ndarray:
    return np.random.default_rng(7).integers(-1000, 2000, size=(n, rows, cols)).astype(np.float32)


def test_classic_header_fields_equal_the_written_values(tmp_path) -> None:
    acq = AcquisitionInfo(manufacturer="GE MEDICAL SYSTEMS", model="Revolution", kvp=120.0,
                          convolution_kernel="STANDARD", ecg_gated=True)
    paths = write_ct_series(_vol(), tmp_path, pixel_spacing_mm=(0.488281, 0.5), slice_thickness_mm=2.5,
                            z_positions_mm=[-10.0, -7.5, -5.0], origin_xy_mm=(-125.0, -130.0),
                            rescale_slope=1.0, rescale_intercept=-1024.0, acquisition=acq,
                            series_description="Ca score", instance_numbers=[7, 8, 9], gantry_tilt_deg=0.0)
    h = read_header(paths[1])
    assert len(h) == 1
    h = h[0]
    ds = pydicom.dcmread(paths[1], stop_before_pixels=True)
    assert h.path == paths[1] and h.frame is None
    assert h.sop_instance_uid == ds.SOPInstanceUID and h.series_instance_uid == ds.SeriesInstanceUID
    assert h.study_instance_uid == ds.StudyInstanceUID and not h.series_uid_derived
    assert h.modality == "CT" and h.image_type == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert (h.rows, h.columns) == (6, 5)
    assert h.pixel_spacing_mm == pytest.approx((0.488281, 0.5))
    assert h.position_mm == pytest.approx((-125.0, -130.0, -7.5))
    assert h.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert h.slice_thickness_mm == 2.5
    assert (h.rescale_slope, h.rescale_intercept) == (1.0, -1024.0)
    assert (h.bits_allocated, h.bits_stored, h.pixel_representation) == (16, 12, 0)
    assert h.instance_number == 8 and h.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert h.acquisition == acq and h.series_description == "Ca score" and h.gantry_tilt_deg == 0.0


def test_enhanced_ct_one_header_per_frame_per_frame_groups_win(tmp_path) -> None:
    z = [4.0, 0.0, 8.0, 2.0]

    def shared_lies(ds: pydicom.Dataset) -> None:
        # Per-frame groups must win over the shared ones.
        ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleIntercept = "-2000"
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = ["9", "9"]

    p = write_enhanced_ct(_vol(4), tmp_path / "e.dcm", pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=2.0,
                          z_positions_mm=z, origin_xy_mm=(1.0, 2.0), extra=shared_lies, per_frame_geometry=True)
    hs = read_header(p)
    assert [h.frame for h in hs] == [0, 1, 2, 3]
    assert len({h.sop_instance_uid for h in hs}) == 1 and len({h.key for h in hs}) == 4
    for h, zk in zip(hs, z):
        assert h.position_mm == pytest.approx((1.0, 2.0, zk))
        assert h.pixel_spacing_mm == pytest.approx((0.7, 0.7))
        assert h.rescale_intercept == -1024.0 and h.slice_thickness_mm == 2.0
        assert h.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        assert h.image_type[:3] == ("ORIGINAL", "PRIMARY", "AXIAL")


def test_enhanced_ct_shared_groups_are_the_fallback(tmp_path) -> None:
    p = write_enhanced_ct(_vol(3), tmp_path / "e.dcm", pixel_spacing_mm=(0.4, 0.45), slice_thickness_mm=1.0,
                          rescale_intercept=-1000.0, per_frame_geometry=False)
    for k, h in enumerate(read_header(p)):
        assert h.pixel_spacing_mm == pytest.approx((0.4, 0.45)) and h.rescale_intercept == -1000.0
        assert h.position_mm is not None and h.position_mm[2] == pytest.approx(k * 1.0)


def test_real_enhanced_ct_file_from_pydicom_data() -> None:
    path = Path(get_testdata_file("eCT_Supplemental.dcm"))
    hs = read_header(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert len(hs) == int(ds.NumberOfFrames) == 2
    for k, h in enumerate(hs):
        pf = ds.PerFrameFunctionalGroupsSequence[k]
        assert h.position_mm == pytest.approx([float(v) for v in pf.PlanePositionSequence[0].ImagePositionPatient])
        assert h.orientation == pytest.approx(
            [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
        assert h.pixel_spacing_mm == pytest.approx([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing])
        assert h.rescale_intercept == float(shared.PixelValueTransformationSequence[0].RescaleIntercept)
        assert h.modality == "CT"


def test_legacy_converted_enhanced_ct_from_highdicom(tmp_path) -> None:
    """An independent producer of multi-frame CT: highdicom's legacy conversion of our classic series."""
    hd = pytest.importorskip("highdicom")
    paths = write_ct_series(_vol(4, 8, 8), tmp_path / "classic", pixel_spacing_mm=(0.5, 0.5),
                            slice_thickness_mm=3.0, z_positions_mm=[0.0, 3.0, 6.0, 9.0])
    datasets = [pydicom.dcmread(p) for p in paths]
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=datasets, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1)
    out = tmp_path / "lc.dcm"
    mf.save_as(out)
    hs = read_header(out)
    assert len(hs) == 4
    by_z = sorted(hs, key=lambda h: h.position_mm[2])
    assert [h.position_mm[2] for h in by_z] == pytest.approx([0.0, 3.0, 6.0, 9.0])
    for h in hs:
        assert h.pixel_spacing_mm == pytest.approx((0.5, 0.5)) and h.rescale_intercept == -1024.0
        ds_frame = datasets[[round(float(d.ImagePositionPatient[2])) for d in datasets].index(round(h.position_mm[2]))]
        np.testing.assert_array_equal(decode_stored(h), ds_frame.pixel_array)


def _strip_preamble_and_meta(src: Path, dst: Path) -> None:
    """Write the bare data set (no 128-byte preamble, no 'DICM', no group 0002), as old software did."""
    data = src.read_bytes()
    assert data[128:132] == b"DICM"
    # (0002,0000) UL group length: tag 4 + VR 2 + length 2 + value 4 at offset 132
    group_len = struct.unpack("<I", data[132 + 8:132 + 12])[0]
    dst.write_bytes(data[132 + 12 + group_len:])


@pytest.mark.parametrize("ts", ["explicit_le", "implicit_le"])
def test_file_without_preamble_and_meta_is_read(tmp_path, ts) -> None:
    hu = _vol(1)
    src = write_ct_series(hu, tmp_path / "src", pixel_spacing_mm=(1, 1), slice_thickness_mm=1, transfer_syntax=ts)[0]
    bare = tmp_path / "bare_no_extension"
    _strip_preamble_and_meta(src, bare)
    h = read_header(bare)[0]
    assert h.transfer_syntax_uid == {"explicit_le": "1.2.840.10008.1.2.1", "implicit_le": "1.2.840.10008.1.2"}[ts]
    assert h.modality == "CT" and h.position_mm is not None
    np.testing.assert_array_equal(decode_stored(h).astype(np.float64) - 1024.0, hu[0])


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("rtplan.dcm", "no_pixel_data"),
        ("rtstruct.dcm", "no_pixel_data"),
        ("test-SR.dcm", "no_pixel_data"),
        ("waveform_ecg.dcm", "no_pixel_data"),
        ("ExplVR_LitEndNoMeta.dcm", "no_pixel_data"),  # no preamble, explicit little endian, an RT plan
        ("ExplVR_BigEndNoMeta.dcm", "no_pixel_data"),  # no preamble, explicit big endian
        ("MR_truncated.dcm", "truncated"),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated"),
        ("meta_missing_tsyntax.dcm", "not_dicom"),  # private elements only: no identity, no image
        ("rtplan.dump", "not_dicom"),
        ("test1.json", "not_dicom"),
        ("crayons.icc", "not_dicom"),
        ("zipMR.gz", "not_dicom"),
    ],
)
def test_real_odd_files_get_a_reason_naming_them(name, reason) -> None:
    path = Path(get_testdata_file(name))
    with pytest.raises(DicomReadError) as err:
        read_header(path)
    assert err.value.reason == reason
    assert str(path) in str(err.value) and err.value.path == path


def test_dicomdir_is_skipped_by_name_and_by_sop_class(tmp_path) -> None:
    root = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"
    with pytest.raises(DicomReadError) as err:
        read_header(root / "DICOMDIR")
    assert err.value.reason == "dicomdir"
    renamed = tmp_path / "index.dcm"
    shutil.copy(root / "DICOMDIR", renamed)
    with pytest.raises(DicomReadError) as err:
        read_header(renamed)
    assert err.value.reason == "dicomdir" and str(renamed) in err.value.message


def test_truncated_native_pixel_data_detected_without_decoding(tmp_path) -> None:
    src = write_ct_series(_vol(1, 64, 64), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1)[0]
    data = src.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(DicomReadError) as err:
        read_header(cut)
    assert err.value.reason == "truncated" and "100 bytes short" in err.value.message
    head_only = tmp_path / "head_only.dcm"
    head_only.write_bytes(data[:300])  # cut inside the header
    with pytest.raises(DicomReadError) as err:
        read_header(head_only)
    assert err.value.reason == "truncated" and str(head_only) in err.value.message


@pytest.mark.parametrize("ts", ["rle", "jpeg_ls", "jpeg2000_lossless"])
def test_truncated_compressed_pixel_data_detected(tmp_path, ts) -> None:
    src = write_ct_series(_vol(1, 64, 64), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1,
                          transfer_syntax=ts)[0]
    data = src.read_bytes()
    for keep in (len(data) - 4, len(data) - 30):
        cut = tmp_path / f"cut{keep}.dcm"
        cut.write_bytes(data[:keep])
        with pytest.raises(DicomReadError) as err:
            read_header(cut)
        assert err.value.reason == "truncated"
    assert read_header(src)[0].rows == 64  # the intact file passes the same check


def test_empty_and_garbage_files(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)  # marker but nonsense after it
    for p in (empty, junk, fake):
        with pytest.raises(DicomReadError) as err:
            read_header(p)
        assert err.value.reason in {"not_dicom", "truncated"}, (p, err.value.reason)
        assert str(p) in err.value.message


def test_missing_series_uid_gets_a_deterministic_derived_uid(tmp_path) -> None:
    def drop(ds: pydicom.Dataset, k: int) -> None:
        del ds.SeriesInstanceUID

    paths = write_ct_series(_vol(2), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1, extra=drop)
    a, b = read_header(paths[0])[0], read_header(paths[1])[0]
    assert a.series_uid_derived and a.series_instance_uid == b.series_instance_uid
    assert a.series_instance_uid.startswith("2.25.") and pydicom.uid.UID(a.series_instance_uid).is_valid
    assert read_header(paths[0])[0].series_instance_uid == a.series_instance_uid  # stable across reads


def test_unreadable_file_reason(tmp_path, monkeypatch) -> None:
    import cacstream.engine.series.headers as headers

    p = write_ct_series(_vol(1), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1)[0]

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(headers, "open", denied, raising=False)
    with pytest.raises(DicomReadError) as err:
        read_header(p)
    assert err.value.reason == "unreadable" and "permission" in err.value.message
    monkeypatch.undo()
    missing = tmp_path / "gone.dcm"
    with pytest.raises(DicomReadError) as err:
        read_header(missing)
    assert err.value.reason == "unreadable"
