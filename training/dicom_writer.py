"""Write HU volumes as valid CT DICOM: classic single-frame series and Enhanced CT multi-frame files.

Why this exists: the phantom generator, the tests of the series reader and the streaming tests all
need DICOM series with a *known* geometry and *known* HU, written the way real scanners write them
(Siemens-like unsigned 16-bit with BitsStored 12 and intercept -1024, or signed storage; several
transfer syntaxes). Only transfer syntaxes that pydicom can actually encode with the installed plugins
are offered (:func:`available_transfer_syntaxes`).

Geometry convention: ``orientation`` is ImageOrientationPatient (row direction cosines, then column
direction cosines); the slice normal is their cross product. Slice ``k`` is written at
``ImagePositionPatient = origin + z_positions_mm[k] * normal`` where ``origin = (x0, y0, 0)`` from
``origin_xy_mm``, unless ``positions_mm`` gives every ImagePositionPatient explicitly (e.g. to write
a gantry-tilted series, whose positions step along the table rather than along the normal).
``hu[k]`` is the slice written at the k-th position; rows run along the column direction cosines.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

from cacstream.engine.series.types import AcquisitionInfo

StoredDType = Literal["uint16", "int16"]

#: Short names of transfer syntaxes → UIDs. Compressed ones are offered only if an encoder is installed.
_TRANSFER_SYNTAX_UIDS: dict[str, UID] = {
    "explicit_le": ExplicitVRLittleEndian,
    "implicit_le": ImplicitVRLittleEndian,
    "deflated_le": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg_ls": JPEGLSLossless,
    "jpeg2000_lossless": JPEG2000Lossless,
}
_UNCOMPRESSED = {"explicit_le", "implicit_le", "deflated_le"}


class DicomWriteError(ValueError):
    """The requested series cannot be written (bad shape, bad geometry, unavailable transfer syntax)."""


def available_transfer_syntaxes() -> tuple[str, ...]:
    """Short names accepted by ``transfer_syntax``: the uncompressed ones plus every compressed one whose
    pydicom encoder has its plugin installed (checked now, not assumed)."""
    from pydicom.pixels import get_encoder

    names = []
    for name, uid in _TRANSFER_SYNTAX_UIDS.items():
        if name in _UNCOMPRESSED:
            names.append(name)
            continue
        try:
            if get_encoder(uid).is_available:
                names.append(name)
        except (NotImplementedError, ValueError):
            pass
    return tuple(names)


def transfer_syntax_uid(name: str) -> UID:
    """UID of a short transfer syntax name (raises :class:`DicomWriteError` if it cannot be written here)."""
    if name not in _TRANSFER_SYNTAX_UIDS:
        raise DicomWriteError(
            f"unknown transfer syntax {name!r}; choose one of {', '.join(available_transfer_syntaxes())}"
        )
    if name not in available_transfer_syntaxes():
        raise DicomWriteError(f"transfer syntax {name!r} has no installed encoder in this environment")
    return _TRANSFER_SYNTAX_UIDS[name]


@dataclass(frozen=True)
class StoredEncoding:
    """How HU were turned into stored values for one series (all slices share it)."""

    dtype: StoredDType
    bits_stored: int
    rescale_slope: float
    rescale_intercept: float
    clipped_voxels: int


def hu_to_stored(
    hu: np.ndarray,
    *,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    stored_dtype: StoredDType = "uint16",
    bits_stored: int | None = None,
) -> tuple[np.ndarray, StoredEncoding]:
    """Stored values ``round((hu - intercept) / slope)`` in the stored dtype.

    ``bits_stored=None`` picks 12 bits when every value fits (like real Siemens data), else 16. Values
    outside the representable range are clipped, with a warning naming how many voxels were clipped.
    """
    if rescale_slope == 0:
        raise DicomWriteError("rescale_slope must not be 0")
    if stored_dtype not in ("uint16", "int16"):
        raise DicomWriteError(f"stored_dtype must be 'uint16' or 'int16', got {stored_dtype!r}")
    signed = stored_dtype == "int16"
    values = np.rint((np.asarray(hu, dtype=np.float64) - rescale_intercept) / rescale_slope)
    if not np.all(np.isfinite(values)):
        raise DicomWriteError("HU volume contains NaN or infinite values")

    def limits(bits: int) -> tuple[int, int]:
        return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)

    if bits_stored is None:
        lo12, hi12 = limits(12)
        bits_stored = 12 if values.size == 0 or (values.min() >= lo12 and values.max() <= hi12) else 16
    if not 1 <= bits_stored <= 16:
        raise DicomWriteError(f"bits_stored must be within 1..16, got {bits_stored}")
    lo, hi = limits(bits_stored)
    clipped = int(np.count_nonzero((values < lo) | (values > hi)))
    if clipped:
        warnings.warn(
            f"{clipped} voxels fall outside the {bits_stored}-bit {stored_dtype} range [{lo}, {hi}] of stored "
            f"values (slope {rescale_slope}, intercept {rescale_intercept}) and were clipped",
            stacklevel=3,
        )
        values = np.clip(values, lo, hi)
    stored = values.astype(np.int16 if signed else np.uint16)
    return stored, StoredEncoding(stored_dtype, bits_stored, float(rescale_slope), float(rescale_intercept), clipped)


def _normal(orientation: Sequence[float]) -> np.ndarray:
    if len(orientation) != 6:
        raise DicomWriteError(f"orientation needs 6 direction cosines, got {len(orientation)}")
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise DicomWriteError(f"orientation {tuple(orientation)} has parallel row and column directions")
    return n / norm


def _ds(value: float) -> str:
    """A DS string (≤ 16 chars) that keeps as much precision as fits."""
    for digits in range(12, 2, -1):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{value:.3g}"


def _positions(
    n_slices: int,
    orientation: Sequence[float],
    slice_thickness_mm: float,
    z_positions_mm: Sequence[float] | None,
    positions_mm: Sequence[Sequence[float]] | None,
    origin_xy_mm: tuple[float, float],
) -> np.ndarray:
    if positions_mm is not None:
        pos = np.asarray(positions_mm, dtype=np.float64)
        if pos.shape != (n_slices, 3):
            raise DicomWriteError(f"positions_mm must have shape ({n_slices}, 3), got {pos.shape}")
        return pos
    if z_positions_mm is None:
        z = np.arange(n_slices, dtype=np.float64) * float(slice_thickness_mm)
    else:
        z = np.asarray(z_positions_mm, dtype=np.float64)
        if z.shape != (n_slices,):
            raise DicomWriteError(f"z_positions_mm must have {n_slices} values, got {z.shape}")
    origin = np.array([origin_xy_mm[0], origin_xy_mm[1], 0.0])
    return origin[None, :] + z[:, None] * _normal(orientation)[None, :]


def _check_volume(hu: np.ndarray) -> np.ndarray:
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise DicomWriteError(f"hu must be a non-empty (slices, rows, columns) array, got shape {hu.shape}")
    if hu.shape[1] > 65535 or hu.shape[2] > 65535:
        raise DicomWriteError(f"rows/columns must fit in 16 bits, got {hu.shape[1:]}")
    return hu


def _default_origin(shape: tuple[int, ...], spacing: tuple[float, float]) -> tuple[float, float]:
    """Centre the field of view on the patient axis (as scanners do for a centred reconstruction)."""
    return (-(shape[2] - 1) / 2.0 * spacing[1], -(shape[1] - 1) / 2.0 * spacing[0])


def _file_meta(sop_class: UID, sop_instance: str, ts: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CACSTREAM_0_1"
    return meta


def _patient_study_series(
    ds: Dataset,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    series_description: str,
    series_number: int,
    acquisition: AcquisitionInfo,
    date: str,
    time: str,
    patient_position: str,
) -> None:
    """Patient, General Study, General Series, Frame of Reference, General Equipment modules.

    Only the patient ID given is written; name, birth date and sex are empty (type 2)."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = ""
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = series_description
    ds.PatientPosition = patient_position
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = acquisition.manufacturer
    if acquisition.model:
        ds.ManufacturerModelName = acquisition.model
    ds.BodyPartExamined = "CHEST"


def _pixel_module(ds: Dataset, rows: int, columns: int, enc: StoredEncoding) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = enc.bits_stored
    ds.HighBit = enc.bits_stored - 1
    ds.PixelRepresentation = 1 if enc.dtype == "int16" else 0


#: pylibjpeg-openjpeg always encodes 6 wavelet resolutions, which needs at least 2**5 pixels per side.
JPEG2000_MIN_SIZE = 32


def _check_encodable(ts_name: str, rows: int, columns: int) -> None:
    transfer_syntax_uid(ts_name)
    if ts_name == "jpeg2000_lossless" and min(rows, columns) < JPEG2000_MIN_SIZE:
        raise DicomWriteError(
            f"jpeg2000_lossless needs images of at least {JPEG2000_MIN_SIZE}×{JPEG2000_MIN_SIZE} pixels "
            f"(the installed encoder uses 6 wavelet resolutions); got {rows}×{columns}"
        )


def _set_pixel_data(ds: Dataset, stored: np.ndarray) -> None:
    """Native little-endian 16-bit PixelData (OW)."""
    ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW"


def _encode_pixels(ds: Dataset, ts_name: str) -> None:
    """Set the transfer syntax; for a compressed one, compress the (possibly hook-altered) native PixelData
    with pydicom's encoder. The raw 16-bit words are passed as they are, high bits included."""
    ts = transfer_syntax_uid(ts_name)
    ds.file_meta.TransferSyntaxUID = ts if ts_name in _UNCOMPRESSED else ExplicitVRLittleEndian
    if ts_name in _UNCOMPRESSED:
        return
    dtype = np.dtype("<i2") if ds.PixelRepresentation == 1 else np.dtype("<u2")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    shape = (frames, ds.Rows, ds.Columns) if frames > 1 else (ds.Rows, ds.Columns)
    arr = np.frombuffer(ds.PixelData, dtype=dtype).reshape(shape)
    # generate_instance_uid=False: a lossless encoding keeps the instance's identity.
    ds.compress(ts, arr, generate_instance_uid=False)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _save(ds: Dataset, path: Path) -> None:
    ts = UID(ds.file_meta.TransferSyntaxUID)
    ds.save_as(path, implicit_vr=ts.is_implicit_VR, little_endian=True, enforce_file_format=True)


def write_ct_series(
    hu: np.ndarray,
    out_dir: Path,
    *,
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float,
    z_positions_mm: Sequence[float] | None = None,
    positions_mm: Sequence[Sequence[float]] | None = None,
    orientation: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin_xy_mm: tuple[float, float] | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    acquisition: AcquisitionInfo = AcquisitionInfo(),
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    stored_dtype: StoredDType = "uint16",
    bits_stored: int | None = None,
    transfer_syntax: str = "explicit_le",
    file_name: str = "IM-{index:04d}.dcm",
    instance_numbers: Sequence[int] | None = None,
    series_description: str = "",
    series_number: int = 1,
    patient_id: str = "ANON",
    patient_position: str = "HFS",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    gantry_tilt_deg: float = 0.0,
    extra: Callable[[Dataset, int], None] | None = None,
) -> list[Path]:
    """Write ``hu`` (slices, rows, columns) as one CT Image Storage series, one file per slice.

    Args:
        hu: HU values; ``hu[k]`` is written at the k-th position (see module docstring).
        out_dir: created if missing; files are named ``file_name.format(index=k, instance=n)`` with
            ``k`` the 0-based slice index and ``n`` its InstanceNumber.
        pixel_spacing_mm: PixelSpacing (between rows, between columns).
        slice_thickness_mm: SliceThickness; also the default slice increment.
        z_positions_mm: each slice's position along the normal (default ``k × thickness``).
        positions_mm: explicit ImagePositionPatient per slice (overrides ``z_positions_mm``).
        stored_dtype / bits_stored / rescale_*: storage of the HU (see :func:`hu_to_stored`).
        transfer_syntax: one of :func:`available_transfer_syntaxes` (all lossless; jpeg2000_lossless needs
            at least 32×32 pixels).
        image_type / gantry_tilt_deg / patient_id / series_description / series_number: written as given
            (the tests use them to make localizers and tilted series).
        instance_numbers: InstanceNumber per slice (default 1..N in slice order).
        patient_position: PatientPosition (HFS, FFS, ...); informative only, geometry comes from
            ``orientation`` and the positions.
        extra: called as ``extra(dataset, k)`` after every attribute (and the uncompressed PixelData)
            is set and before compression and saving: the hook for tests that need odd tags.

    Returns:
        The written paths, in slice order.
    """
    hu = _check_volume(hu)
    n, rows, columns = hu.shape
    if slice_thickness_mm <= 0:
        raise DicomWriteError(f"slice_thickness_mm must be > 0, got {slice_thickness_mm}")
    if min(pixel_spacing_mm) <= 0:
        raise DicomWriteError(f"pixel spacing must be > 0, got {pixel_spacing_mm}")
    if instance_numbers is not None and len(instance_numbers) != n:
        raise DicomWriteError(f"instance_numbers must have {n} values, got {len(instance_numbers)}")
    _check_encodable(transfer_syntax, rows, columns)  # fail before writing anything
    origin = origin_xy_mm if origin_xy_mm is not None else _default_origin(hu.shape, pixel_spacing_mm)
    positions = _positions(n, orientation, slice_thickness_mm, z_positions_mm, positions_mm, origin)
    normal = _normal(orientation)
    stored, enc = hu_to_stored(
        hu,
        rescale_slope=rescale_slope,
        rescale_intercept=rescale_intercept,
        stored_dtype=stored_dtype,
        bits_stored=bits_stored,
    )
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    paths: list[Path] = []
    for k in range(n):
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = _file_meta(CTImageStorage, sop_uid, ExplicitVRLittleEndian)
        _patient_study_series(
            ds,
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=frame_of_reference_uid,
            series_description=series_description,
            series_number=series_number,
            acquisition=acquisition,
            date=date,
            time=time,
            patient_position=patient_position,
        )
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        instance = int(instance_numbers[k]) if instance_numbers is not None else k + 1
        # General Image
        ds.ImageType = list(image_type)
        ds.InstanceNumber = instance
        ds.PatientOrientation = ""
        ds.ContentDate = date
        ds.ContentTime = time
        ds.AcquisitionNumber = 1
        # Image Plane
        ds.PixelSpacing = [_ds(pixel_spacing_mm[0]), _ds(pixel_spacing_mm[1])]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.SliceThickness = _ds(slice_thickness_mm)
        ds.SliceLocation = _ds(float(positions[k] @ normal))
        # Image Pixel + CT Image
        _pixel_module(ds, rows, columns, enc)
        ds.RescaleIntercept = _ds(rescale_intercept)
        ds.RescaleSlope = _ds(rescale_slope)
        ds.RescaleType = "HU"
        ds.KVP = _ds(acquisition.kvp) if acquisition.kvp is not None else ""
        if acquisition.convolution_kernel:
            ds.ConvolutionKernel = acquisition.convolution_kernel
        ds.GantryDetectorTilt = _ds(gantry_tilt_deg)
        if acquisition.ecg_gated is not None:
            ds.CardiacSynchronizationTechnique = "PROSPECTIVE" if acquisition.ecg_gated else "NONE"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        _set_pixel_data(ds, stored[k])
        if extra is not None:
            extra(ds, k)
        _encode_pixels(ds, transfer_syntax)
        path = out_dir / file_name.format(index=k, instance=instance)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(ds, path)
        paths.append(path)
    return paths


def write_enhanced_ct(
    hu: np.ndarray,
    path: Path,
    *,
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float,
    z_positions_mm: Sequence[float] | None = None,
    positions_mm: Sequence[Sequence[float]] | None = None,
    orientation: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin_xy_mm: tuple[float, float] | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    acquisition: AcquisitionInfo = AcquisitionInfo(),
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    stored_dtype: StoredDType = "uint16",
    bits_stored: int | None = None,
    transfer_syntax: str = "explicit_le",
    series_description: str = "",
    series_number: int = 1,
    patient_id: str = "ANON",
    patient_position: str = "HFS",
    per_frame_geometry: bool = True,
    extra: Callable[[Dataset], None] | None = None,
) -> Path:
    """Write ``hu`` as one Enhanced CT Image Storage multi-frame file.

    The object carries what readers of multi-frame CT rely on (Image Pixel, Multi-frame Functional
    Groups, Multi-frame Dimension, Enhanced CT Image, Frame Content, Plane Position / Orientation, Pixel
    Measures, Pixel Value Transformation, CT Image Frame Type). The CT acquisition/reconstruction macros
    (CT Acquisition Details, CT Exposure, ...) that a scanner would fill are not written: this is a
    test and phantom object, not a claim about an acquisition.

    Orientation, pixel measures and the rescale (PixelValueTransformationSequence) are placed in the
    Shared Functional Groups; each frame's PlanePositionSequence and FrameContentSequence are in the
    Per-Frame Functional Groups. ``per_frame_geometry=True`` additionally repeats orientation, pixel
    measures and rescale per frame (both layouts are legal, and readers must handle both: per-frame
    values win over shared ones). ``extra(dataset)`` runs before compression and saving.
    """
    hu = _check_volume(hu)
    n, rows, columns = hu.shape
    if slice_thickness_mm <= 0 or min(pixel_spacing_mm) <= 0:
        raise DicomWriteError("slice thickness and pixel spacing must be > 0")
    _check_encodable(transfer_syntax, rows, columns)
    origin = origin_xy_mm if origin_xy_mm is not None else _default_origin(hu.shape, pixel_spacing_mm)
    positions = _positions(n, orientation, slice_thickness_mm, z_positions_mm, positions_mm, origin)
    stored, enc = hu_to_stored(
        hu,
        rescale_slope=rescale_slope,
        rescale_intercept=rescale_intercept,
        stored_dtype=stored_dtype,
        bits_stored=bits_stored,
    )
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    acq_dt = now.strftime("%Y%m%d%H%M%S")
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(EnhancedCTImageStorage, sop_uid, ExplicitVRLittleEndian)
    _patient_study_series(
        ds,
        patient_id=patient_id,
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        frame_of_reference_uid=frame_of_reference_uid or generate_uid(),
        series_description=series_description,
        series_number=series_number,
        acquisition=acquisition,
        date=date,
        time=time,
        patient_position=patient_position,
    )
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop_uid
    # Enhanced General Equipment (type 1 in Enhanced CT)
    ds.ManufacturerModelName = acquisition.model or "cacstream"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "cacstream 0.1"
    # Image Pixel + Enhanced CT Image + Multi-frame
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentDate = date
    ds.ContentTime = time
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = acq_dt
    ds.AcquisitionDuration = 0.0
    ds.ContentQualification = "PRODUCT"
    ds.ImageComments = ""
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.AcquisitionContextSequence = DicomSequence([])  # type 2: present, empty
    _pixel_module(ds, rows, columns, enc)
    ds.NumberOfFrames = n
    ds.ContentDate = date
    ds.ContentTime = time
    if acquisition.kvp is not None:
        ds.KVP = _ds(acquisition.kvp)

    def plane_orientation() -> DicomSequence:
        item = Dataset()
        item.ImageOrientationPatient = [_ds(v) for v in orientation]
        return DicomSequence([item])

    def pixel_measures() -> DicomSequence:
        item = Dataset()
        item.PixelSpacing = [_ds(pixel_spacing_mm[0]), _ds(pixel_spacing_mm[1])]
        item.SliceThickness = _ds(slice_thickness_mm)
        return DicomSequence([item])

    def pixel_transform() -> DicomSequence:
        item = Dataset()
        item.RescaleIntercept = _ds(rescale_intercept)
        item.RescaleSlope = _ds(rescale_slope)
        item.RescaleType = "HU"
        return DicomSequence([item])

    def frame_type() -> DicomSequence:
        item = Dataset()
        item.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
        item.PixelPresentation = "MONOCHROME"
        item.VolumetricProperties = "VOLUME"
        item.VolumeBasedCalculationTechnique = "NONE"
        return DicomSequence([item])

    shared = Dataset()
    shared.PlaneOrientationSequence = plane_orientation()
    shared.PixelMeasuresSequence = pixel_measures()
    shared.PixelValueTransformationSequence = pixel_transform()
    shared.CTImageFrameTypeSequence = frame_type()
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    # Multi-frame Dimension module: frames indexed by in-stack position along one stack.
    dim_org = generate_uid()
    org = Dataset()
    org.DimensionOrganizationUID = dim_org
    ds.DimensionOrganizationSequence = DicomSequence([org])
    dims = []
    for pointer, group in ((0x00209056, 0x00209111), (0x00209057, 0x00209111)):  # StackID, InStackPositionNumber
        d = Dataset()
        d.DimensionOrganizationUID = dim_org
        d.DimensionIndexPointer = pointer
        d.FunctionalGroupPointer = group
        dims.append(d)
    ds.DimensionIndexSequence = DicomSequence(dims)

    frames = []
    for k in range(n):
        f = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        content.DimensionIndexValues = [1, k + 1]
        content.FrameAcquisitionDateTime = acq_dt
        content.FrameReferenceDateTime = acq_dt
        content.FrameAcquisitionDuration = 0.0
        f.FrameContentSequence = DicomSequence([content])
        pos = Dataset()
        pos.ImagePositionPatient = [_ds(v) for v in positions[k]]
        f.PlanePositionSequence = DicomSequence([pos])
        if per_frame_geometry:
            f.PlaneOrientationSequence = plane_orientation()
            f.PixelMeasuresSequence = pixel_measures()
            f.PixelValueTransformationSequence = pixel_transform()
        frames.append(f)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    _set_pixel_data(ds, stored)
    if extra is not None:
        extra(ds)
    _encode_pixels(ds, transfer_syntax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, path)
    return path

