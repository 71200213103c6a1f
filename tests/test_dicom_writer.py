"""training/dicom_writer.py: valid CT objects, exact HU round trips, geometry as asked.

The expectations are independent of our reader: pixels are read back with pydicom's own
``dcmread(...).pixel_array`` and the geometry is recomputed here from the inputs.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, CTImageStorage, EnhancedCTImageStorage

from cacstream.engine.series import read_volume, scan_path
from cacstream.engine.series.types import AcquisitionInfo
from cacstream.training.dicom_writer import (
    DicomWriteError,
    available_transfer_syntaxes,
    hu_to_stored,
    write_ct_series,
    write_enhanced_ct,
)

RNG = np.random.default_rng(1234)


def _volume(shape=(4, 12, 10), lo=-1024, hi=3071) -> np.ndarray:
    return RNG.integers(lo, hi + 1, size=shape).astype(np.float32)


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# Attributes of the CT Image IOD (Patient, General Study, General Series, Frame of Reference, General
# Equipment, General Image, Image Plane, Image Pixel, CT Image, SOP Common) of type 1 or 2.
CT_REQUIRED = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "Modality", "SeriesInstanceUID", "SeriesNumber",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Manufacturer",
    "InstanceNumber",
    "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness",
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PixelData",
    "ImageType", "RescaleIntercept", "RescaleSlope", "KVP", "AcquisitionNumber",
    "SOPClassUID", "SOPInstanceUID",
]


def test_offered_transfer_syntaxes_include_the_uncompressed_ones() -> None:
    offered = available_transfer_syntaxes()
    assert {"explicit_le", "implicit_le"} <= set(offered)
    with pytest.raises(DicomWriteError, match="unknown transfer syntax"):
        write_ct_series(_volume(), __import__("pathlib").Path("/nonexistent"), pixel_spacing_mm=(1, 1),
                        slice_thickness_mm=1, transfer_syntax="jpeg_baseline_lossy")


@pytest.mark.parametrize("stored_dtype", ["uint16", "int16"])
@pytest.mark.parametrize("ts", available_transfer_syntaxes())
def test_every_offered_syntax_round_trips_exactly_through_pydicom(tmp_path, ts, stored_dtype) -> None:
    hu = _volume((3, 32, 36))  # JPEG 2000 needs at least 32 pixels per side
    paths = write_ct_series(hu, tmp_path, pixel_spacing_mm=(0.5, 0.7), slice_thickness_mm=2.5,
                            transfer_syntax=ts, stored_dtype=stored_dtype)
    assert len(paths) == hu.shape[0]
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == {
            "explicit_le": "1.2.840.10008.1.2.1", "implicit_le": "1.2.840.10008.1.2",
            "deflated_le": "1.2.840.10008.1.2.1.99", "rle": "1.2.840.10008.1.2.5",
            "jpeg_ls": "1.2.840.10008.1.2.4.80", "jpeg2000_lossless": "1.2.840.10008.1.2.4.90"}[ts]
        assert ds.PixelRepresentation == (1 if stored_dtype == "int16" else 0)
        np.testing.assert_array_equal(_hu(ds), hu[k])


def test_ct_image_iod_attributes_and_identity(tmp_path) -> None:
    acq = AcquisitionInfo(manufacturer="SIEMENS", model="SOMATOM Force", kvp=120.0, convolution_kernel="Qr36",
                          ecg_gated=True)
    paths = write_ct_series(_volume((3, 8, 8)), tmp_path, pixel_spacing_mm=(0.4, 0.4), slice_thickness_mm=3,
                            acquisition=acq, patient_id="P-7", series_description="CaSc 3.0")
    sop_uids, series_uids = set(), set()
    for p in paths:
        ds = pydicom.dcmread(p)
        missing = [k for k in CT_REQUIRED if k not in ds]
        assert not missing, missing
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.preamble is not None and len(ds.preamble) == 128
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
            assert UID(uid).is_valid
        assert ds.PatientID == "P-7" and str(ds.PatientName) == "" and ds.PatientBirthDate == ""
        assert ds.Modality == "CT" and ds.RescaleType == "HU"
        assert ds.Manufacturer == "SIEMENS" and ds.ManufacturerModelName == "SOMATOM Force"
        assert float(ds.KVP) == 120.0 and ds.ConvolutionKernel == "Qr36"
        assert ds.CardiacSynchronizationTechnique == "PROSPECTIVE"
        assert ds.SeriesDescription == "CaSc 3.0"
        assert ds.HighBit == ds.BitsStored - 1
        sop_uids.add(ds.SOPInstanceUID)
        series_uids.add(ds.SeriesInstanceUID)
    assert len(sop_uids) == len(paths) and len(series_uids) == 1


def test_bits_stored_12_when_it_fits_like_siemens(tmp_path) -> None:
    p = write_ct_series(_volume(lo=-1024, hi=3071), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1)[0]
    ds = pydicom.dcmread(p)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert float(ds.RescaleIntercept) == -1024.0


def test_bits_stored_16_when_12_bits_do_not_fit_and_no_clipping(tmp_path) -> None:
    hu = _volume(lo=-1024, hi=6000)
    hu[0, 0, 0] = 6000
    p = write_ct_series(hu, tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1)[0]
    ds = pydicom.dcmread(p)
    assert ds.BitsStored == 16
    np.testing.assert_array_equal(_hu(ds), hu[0])


def test_out_of_range_values_are_clipped_with_a_warning() -> None:
    hu = np.array([[[-3000.0, 0.0, 70000.0]]])
    with pytest.warns(UserWarning, match="2 voxels .* clipped"):
        stored, enc = hu_to_stored(hu, stored_dtype="uint16")
    assert enc.clipped_voxels == 2 and enc.bits_stored == 16
    assert stored.tolist() == [[[0, 1024, 65535]]]


def test_signed_storage_with_12_bits(tmp_path) -> None:
    hu = _volume(lo=-2048, hi=2047)
    p = write_ct_series(hu, tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1, stored_dtype="int16",
                        rescale_intercept=0.0)[0]
    ds = pydicom.dcmread(p)
    assert (ds.BitsStored, ds.PixelRepresentation) == (12, 1)
    np.testing.assert_array_equal(_hu(ds), hu[0])


def test_rescale_slope_and_intercept_are_applied_by_the_writer() -> None:
    stored, enc = hu_to_stored(np.array([[[-1000.0, 0.0, 1000.5]]]), rescale_slope=0.5, rescale_intercept=-1000.0)
    assert stored.tolist() == [[[0, 2000, 4001]]]


def test_geometry_default_and_explicit(tmp_path) -> None:
    hu = _volume((3, 6, 4))
    spacing = (0.5, 0.8)
    paths = write_ct_series(hu, tmp_path / "a", pixel_spacing_mm=spacing, slice_thickness_mm=2.0)
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        # default origin centres the field of view: x0 = -(cols-1)/2 * dx, y0 = -(rows-1)/2 * dy
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([-1.5 * 0.8, -2.5 * 0.5, 2.0 * k])
        assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.8]
        assert float(ds.SliceThickness) == 2.0 and ds.InstanceNumber == k + 1
    z = [10.0, 7.0, 1.5]
    paths = write_ct_series(hu, tmp_path / "b", pixel_spacing_mm=spacing, slice_thickness_mm=3.0, z_positions_mm=z,
                            orientation=(-1, 0, 0, 0, 1, 0), origin_xy_mm=(5.0, -6.0), instance_numbers=[30, 20, 10],
                            file_name="slice_{instance}")
    for k, p in enumerate(paths):
        assert p.name == f"slice_{[30, 20, 10][k]}"
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        # feet-first style orientation: normal = row x col = (-1,0,0) x (0,1,0) = (0,0,-1)
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([5.0, -6.0, -z[k]])
        assert ds.InstanceNumber == [30, 20, 10][k]
    pos = [(1.0, 2.0, 3.0), (1.0, 2.5, 6.0), (1.0, 3.0, 9.0)]
    paths = write_ct_series(hu, tmp_path / "c", pixel_spacing_mm=spacing, slice_thickness_mm=3.0, positions_mm=pos)
    for k, p in enumerate(paths):
        assert [float(v) for v in pydicom.dcmread(p).ImagePositionPatient] == list(pos[k])


def test_extra_hook_sees_every_slice_before_saving(tmp_path) -> None:
    seen = []

    def hook(ds: pydicom.Dataset, k: int) -> None:
        seen.append((k, ds.SOPInstanceUID))
        ds.ImageComments = f"slice {k}"

    paths = write_ct_series(_volume((3, 4, 4)), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1, extra=hook,
                            transfer_syntax="rle" if "rle" in available_transfer_syntaxes() else "explicit_le")
    assert [k for k, _ in seen] == [0, 1, 2]
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        assert ds.ImageComments == f"slice {k}" and ds.SOPInstanceUID == seen[k][1]


def test_bad_inputs_are_refused(tmp_path) -> None:
    with pytest.raises(DicomWriteError, match="NaN"):
        write_ct_series(np.full((2, 3, 3), np.nan), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1)
    with pytest.raises(DicomWriteError, match="shape"):
        write_ct_series(np.zeros((3, 3)), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1)
    with pytest.raises(DicomWriteError, match="parallel"):
        write_ct_series(np.zeros((2, 3, 3)), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1,
                        orientation=(1, 0, 0, 1, 0, 0))
    if "jpeg2000_lossless" in available_transfer_syntaxes():
        with pytest.raises(DicomWriteError, match="at least 32"):
            write_ct_series(np.zeros((2, 8, 8)), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1,
                            transfer_syntax="jpeg2000_lossless")
    with pytest.raises(DicomWriteError, match="z_positions_mm"):
        write_ct_series(np.zeros((2, 3, 3)), tmp_path, pixel_spacing_mm=(1, 1), slice_thickness_mm=1,
                        z_positions_mm=[0.0])


@pytest.mark.parametrize("per_frame_geometry", [True, False])
def test_enhanced_ct_structure_and_pixels(tmp_path, per_frame_geometry) -> None:
    hu = _volume((5, 6, 7))
    z = [0.0, 2.5, 5.0, 7.5, 10.0]
    p = write_enhanced_ct(hu, tmp_path / "e.dcm", pixel_spacing_mm=(0.6, 0.6), slice_thickness_mm=2.5,
                          z_positions_mm=z, rescale_slope=1.0, rescale_intercept=-1024.0,
                          per_frame_geometry=per_frame_geometry)
    ds = pydicom.dcmread(p)
    assert ds.SOPClassUID == EnhancedCTImageStorage and int(ds.NumberOfFrames) == 5
    shared = ds.SharedFunctionalGroupsSequence[0]
    for seq in ("PlaneOrientationSequence", "PixelMeasuresSequence", "PixelValueTransformationSequence"):
        assert seq in shared
    frames = ds.PerFrameFunctionalGroupsSequence
    assert len(frames) == 5
    for k, f in enumerate(frames):
        assert float(f.PlanePositionSequence[0].ImagePositionPatient[2]) == z[k]
        assert ("PixelMeasuresSequence" in f) == per_frame_geometry
        assert f.FrameContentSequence[0].InStackPositionNumber == k + 1
    np.testing.assert_array_equal(ds.pixel_array.astype(np.float64) - 1024.0, hu)


@pytest.mark.parametrize("ts", available_transfer_syntaxes())
def test_enhanced_ct_compressed(tmp_path, ts) -> None:
    hu = _volume((3, 32, 32))
    p = write_enhanced_ct(hu, tmp_path / "e.dcm", pixel_spacing_mm=(1, 1), slice_thickness_mm=1, transfer_syntax=ts)
    ds = pydicom.dcmread(p)
    np.testing.assert_array_equal(ds.pixel_array.astype(np.float64) - 1024.0, hu)


def test_round_trip_through_our_reader(tmp_path) -> None:
    hu = _volume((9, 16, 12))
    write_ct_series(hu, tmp_path / "classic", pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=3.0)
    write_enhanced_ct(hu, tmp_path / "enh" / "e.dcm", pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=3.0)
    for sub in ("classic", "enh"):
        result = scan_path(tmp_path / sub)
        assert not result.rejected and not result.skipped and len(result.series) == 1
        vol = read_volume(result.series[0], threads=1)
        np.testing.assert_array_equal(vol.hu, hu)
        assert vol.geometry.z_mm == pytest.approx([3.0 * k for k in range(9)])
