"""engine/series/decode.py: stored values, HU, volumes; compressed syntaxes against uncompressed twins;
BitsStored masking / sign extension; decode-time failures as DicomReadError."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cacstream.engine.series import DicomReadError, decode_stored, read_header, read_volume, scan_path, to_hu
from cacstream.engine.series.types import SliceHeader
from cacstream.training.dicom_writer import available_transfer_syntaxes, write_ct_series, write_enhanced_ct

# pydicom warns about real files' invalid values; the reasons under test are ours, not its warnings.
pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")]


def _header(slope: float, intercept: float) -> SliceHeader:
    return SliceHeader(path=Path("x"), frame=None, sop_instance_uid="1", series_instance_uid="2",
                       study_instance_uid="3", modality="CT", image_type=(), rows=1, columns=3,
                       pixel_spacing_mm=(1.0, 1.0), position_mm=(0.0, 0.0, 0.0),
                       orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), slice_thickness_mm=1.0,
                       rescale_slope=slope, rescale_intercept=intercept, bits_allocated=16, bits_stored=12,
                       pixel_representation=0)


def test_to_hu_hand_computed() -> None:
    stored = np.array([[0, 1024, 4095]], dtype=np.uint16)
    hu = to_hu(stored, _header(1.0, -1024.0))
    assert hu.dtype == np.float32 and hu.tolist() == [[-1024.0, 0.0, 3071.0]]
    assert to_hu(stored, _header(0.5, -1000.25)).tolist() == [[-1000.25, -488.25, 1047.25]]
    signed = np.array([[-2000, -1, 2047]], dtype=np.int16)
    assert to_hu(signed, _header(2.0, 0.0)).tolist() == [[-4000.0, -2.0, 4094.0]]
    # float64 arithmetic, one rounding to float32
    odd = to_hu(np.array([[3]], dtype=np.uint16), _header(1.1, -0.3))
    assert odd[0, 0] == np.float32(3 * 1.1 - 0.3)


CASES = [
    # (stored dtype, intercept, slope, HU range) → BitsStored 12 or 16 chosen by the writer
    ("uint16", -1024.0, 1.0, (-1024, 3071)),   # Siemens-like, 12 bits unsigned
    ("uint16", -1024.0, 1.0, (-1024, 20000)),  # 16 bits unsigned
    ("int16", 0.0, 1.0, (-2048, 2047)),        # 12 bits signed
    ("int16", -1024.0, 1.0, (-3000, 3000)),    # 16 bits signed (GE-like padding values below -2048)
    ("uint16", -1024.0, 0.5, (-1024, 1000)),   # non-unit slope: HU on a 0.5 grid
]


@pytest.mark.parametrize(("dtype", "intercept", "slope", "span"), CASES)
def test_hu_round_trip_signed_unsigned_and_bits_stored(tmp_path, dtype, intercept, slope, span) -> None:
    rng = np.random.default_rng(5)
    stored_span = (int((span[0] - intercept) / slope), int((span[1] - intercept) / slope))
    hu = (rng.integers(stored_span[0], stored_span[1] + 1, size=(8, 10, 9)) * slope + intercept).astype(np.float32)
    hu[0, 0, 0], hu[0, 0, 1] = span  # reach both ends
    write_ct_series(hu, tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1, stored_dtype=dtype,
                    rescale_intercept=intercept, rescale_slope=slope)
    s = scan_path(tmp_path).series[0]
    expect_bits = 12 if (span[1] - intercept) / slope < (4096 if dtype == "uint16" else 2048) \
        and (span[0] - intercept) / slope >= (0 if dtype == "uint16" else -2048) else 16
    assert s.first.bits_stored == expect_bits
    for threads in (1, 2):
        np.testing.assert_array_equal(read_volume(s, threads=threads).hu, hu)
    # int16 HU only when exact for every stored value the header allows (slope 1, range inside int16)
    lo, hi = ((-(1 << (expect_bits - 1)), (1 << (expect_bits - 1)) - 1) if dtype == "int16"
              else (0, (1 << expect_bits) - 1))
    exact = slope == 1.0 and -32768 <= lo + intercept and hi + intercept <= 32767
    auto = read_volume(s, hu_dtype="auto")
    assert auto.hu.dtype == (np.int16 if exact else np.float32)
    np.testing.assert_array_equal(auto.hu.astype(np.float32), hu)
    if not exact:
        with pytest.raises(ValueError, match="not exact integers within int16"):
            read_volume(s, hu_dtype="int16")
    # decode_stored returns the file's dtype, equal to pydicom's own decode
    ds = pydicom.dcmread(s.first.path)
    st = decode_stored(s.first)
    assert st.dtype == np.dtype(dtype) and np.array_equal(st, ds.pixel_array)


def test_unused_high_bits_are_masked(tmp_path) -> None:
    """Unsigned BitsStored 12 with junk in bits 12-15 (old overlay planes): decoded values ignore them."""
    hu = np.array([[[-1024, 0, 100, 3071]]], dtype=np.float32).repeat(2, axis=1)

    def junk(ds: pydicom.Dataset, k: int) -> None:
        a = np.frombuffer(ds.PixelData, "<u2").copy()
        a |= 0xF000
        ds.PixelData = a.tobytes()

    p = write_ct_series(hu, tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1, extra=junk)[0]
    h = read_header(p)[0]
    assert h.bits_stored == 12
    assert decode_stored(h).tolist() == [[0, 1024, 1124, 4095]] * 2
    np.testing.assert_array_equal(to_hu(decode_stored(h), h), hu[0])


def test_signed_12_bit_values_are_sign_extended(tmp_path) -> None:
    hu = np.array([[[-2048, -5, 0, 2047]]], dtype=np.float32)

    def not_extended(ds: pydicom.Dataset, k: int) -> None:
        a = np.frombuffer(ds.PixelData, "<u2").copy()
        a &= 0x0FFF  # 12-bit two's complement without sign extension into bits 12-15
        ds.PixelData = a.tobytes()

    p = write_ct_series(hu, tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1, stored_dtype="int16",
                        rescale_intercept=0.0, extra=not_extended)[0]
    h = read_header(p)[0]
    assert (h.bits_stored, h.pixel_representation) == (12, 1)
    assert decode_stored(h).tolist() == [[-2048, -5, 0, 2047]]


@pytest.mark.parametrize("ts", [t for t in available_transfer_syntaxes() if t != "explicit_le"])
def test_every_written_syntax_decodes_equal_to_the_uncompressed_twin(tmp_path, ts) -> None:
    hu = np.random.default_rng(9).integers(-1024, 3071, size=(8, 32, 40)).astype(np.float32)
    write_ct_series(hu, tmp_path / "plain", pixel_spacing_mm=(1, 1), slice_thickness_mm=1)
    write_ct_series(hu, tmp_path / ts, pixel_spacing_mm=(1, 1), slice_thickness_mm=1, transfer_syntax=ts)
    plain = read_volume(scan_path(tmp_path / "plain").series[0], threads=1).hu
    other = read_volume(scan_path(tmp_path / ts).series[0], threads=2).hu
    np.testing.assert_array_equal(other, plain)
    np.testing.assert_array_equal(plain, hu)


@pytest.mark.parametrize(
    ("compressed", "twin"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("MR_small_implicit.dcm", "MR_small.dcm"),
        ("MR_small_padded.dcm", "MR_small.dcm"),
        ("693_J2KR.dcm", "693_UNCR.dcm"),        # a real CT slice, JPEG 2000 lossless
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
        ("JPEG2000.dcm", "JPEG2000_UNC.dcm"),
    ],
)
def test_real_compressed_files_equal_their_uncompressed_twins(compressed, twin) -> None:
    a = decode_stored(read_header(Path(get_testdata_file(compressed)))[0])
    b = decode_stored(read_header(Path(get_testdata_file(twin)))[0])
    assert a.dtype == b.dtype and a.dtype.isnative
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", ["emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
                                     "emri_small_jpeg_ls_lossless.dcm", "emri_small_big_endian.dcm"])
def test_real_multiframe_variants_equal_frame_by_frame(variant) -> None:
    ref = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array
    headers = read_header(Path(get_testdata_file(variant)))
    assert len(headers) == ref.shape[0] == 10
    for h in headers:
        np.testing.assert_array_equal(decode_stored(h), ref[h.frame])


def test_jpeg_lossless_ct_decodes() -> None:
    """bad_sequence.dcm is a real CT slice in JPEG Lossless SV1 (no uncompressed twin ships):
    compare with pydicom's own full-dataset decode and a CT-plausible HU range."""
    path = Path(get_testdata_file("bad_sequence.dcm"))
    h = read_header(path)[0]
    assert h.modality == "CT" and h.transfer_syntax_uid == "1.2.840.10008.1.2.4.70"
    st = decode_stored(h)
    np.testing.assert_array_equal(st, pydicom.dcmread(path).pixel_array)
    hu = to_hu(st, h)
    assert -1100 < hu.min() < -900 and 500 < hu.max() < 3100


def test_deflated_file_decodes_like_pydicom() -> None:
    path = Path(get_testdata_file("image_dfl.dcm"))
    h = read_header(path)[0]
    np.testing.assert_array_equal(decode_stored(h), pydicom.dcmread(path).pixel_array)


def test_real_enhanced_ct_decodes_per_frame() -> None:
    path = Path(get_testdata_file("eCT_Supplemental.dcm"))
    ref = pydicom.dcmread(path).pixel_array
    for h in read_header(path):
        np.testing.assert_array_equal(decode_stored(h), ref[h.frame])


def test_enhanced_volume_in_position_order_not_frame_order(tmp_path) -> None:
    hu = np.random.default_rng(2).integers(-1024, 2000, size=(9, 12, 10)).astype(np.float32)
    order = [4, 0, 8, 2, 6, 1, 7, 3, 5]  # frame k lies at z = 2 * order[k]
    write_enhanced_ct(hu, tmp_path / "e.dcm", pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=2.0,
                      z_positions_mm=[2.0 * o for o in order], transfer_syntax="rle")
    s = scan_path(tmp_path).series[0]
    vol = read_volume(s, threads=2).hu
    expected = np.empty_like(hu)
    for k, o in enumerate(order):
        expected[o] = hu[k]
    np.testing.assert_array_equal(vol, expected)


def test_decode_time_failures_are_reasoned_errors(tmp_path) -> None:
    paths = write_ct_series(np.zeros((8, 16, 16), np.float32), tmp_path, pixel_spacing_mm=(1, 1),
                            slice_thickness_mm=1)
    s = scan_path(tmp_path).series[0]
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[:-50])  # truncated after the scan
    with pytest.raises(DicomReadError) as err:
        read_volume(s, threads=2)
    assert err.value.reason == "truncated" and err.value.path == paths[5] and str(paths[5]) in str(err.value)
    paths[5].unlink()  # deleted after the scan
    with pytest.raises(DicomReadError) as err:
        read_volume(s, threads=1)
    assert err.value.reason == "unreadable" and str(paths[5]) in str(err.value)
    e2 = pickle.loads(pickle.dumps(err.value))
    assert (e2.path, e2.reason, e2.message) == (err.value.path, err.value.reason, err.value.message)


def test_replaced_file_with_another_size_is_detected(tmp_path) -> None:
    p = write_ct_series(np.zeros((1, 16, 16), np.float32), tmp_path / "a", pixel_spacing_mm=(1, 1),
                        slice_thickness_mm=1)[0]
    h = read_header(p)[0]
    write_ct_series(np.zeros((1, 8, 8), np.float32), tmp_path / "a", pixel_spacing_mm=(1, 1), slice_thickness_mm=1)
    with pytest.raises(DicomReadError) as err:
        decode_stored(h)
    assert err.value.reason == "changed_on_disk"


def test_colour_image_is_not_a_ct_slice() -> None:
    h = read_header(Path(get_testdata_file("SC_rgb.dcm")))[0]
    with pytest.raises(DicomReadError) as err:
        decode_stored(h)
    assert err.value.reason == "invalid_image" and "colour" in err.value.message
