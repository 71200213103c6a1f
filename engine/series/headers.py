"""Read one file's header (no pixels) into :class:`SliceHeader` objects, or say precisely why not.

Why a hand-held file object instead of plain ``dcmread(stop_before_pixels=True)``: pydicom rewinds the
file to the start of the Pixel Data element when it stops there, so the position we hold afterwards
tells us, for free, whether the file has pixel data at all and where it starts. From that and the file
size we detect truncated files during the header scan without reading any pixel bytes (native data:
offset + length vs size; encapsulated data: walking the fragment item headers with seeks).

Only the attributes the engine uses are parsed (``specific_tags``): elements outside the list are
skipped with a seek when their length is defined, which keeps a header read at a fraction of a
millisecond for classic CT files.
"""

from __future__ import annotations

import functools
import os
import struct
import uuid
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    UID,
)

from cacstream.engine.series import errors as E
from cacstream.engine.series.errors import DicomReadError
from cacstream.engine.series.types import AcquisitionInfo, SliceHeader

# Real exports (COCA among them) carry UIDs that break the UI grammar (a component starting with 0);
# they identify the objects just as well. Silence only that one validation warning.
warnings.filterwarnings("ignore", message=r"Invalid value for VR UI", category=UserWarning)
# A damaged file is reported as a SkippedFile with a reason; pydicom's own warning about it is noise.
warnings.filterwarnings("ignore", message=r"End of file reached before delimiter", category=UserWarning)

#: Attributes parsed from each file (everything else is skipped by seeking).
HEADER_TAGS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "ImageType",
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesDescription",
    "KVP",
    "SliceThickness",
    "ConvolutionKernel",
    "GantryDetectorTilt",
    "CardiacSynchronizationTechnique",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)
_HEADER_TAG_LIST = [Tag(k) for k in HEADER_TAGS]

_DERIVED_NAMESPACE = uuid.UUID("6f0e3c1e-2a41-5d0b-9c0e-cac57ea0de1d")
_PIXEL_TAGS = {0x7FE00010, 0x7FE00009, 0x7FE00008}
_EXPLICIT_32BIT_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".swp", "~")


def _stop_at_pixels(tag: Any, vr: Any, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def classify_name(path: Path) -> tuple[str, str] | None:
    """Reason and message for files that are skipped by name alone (hidden, temporary, DICOMDIR)."""
    name = path.name
    if name.upper() == "DICOMDIR":
        return E.DICOMDIR, _dicomdir_message(path)
    if name.startswith("."):
        return E.HIDDEN, (
            f"{path}: hidden file (name starts with '.'), ignored; rename it if it is an image of the series"
        )
    low = name.lower()
    if low.endswith(_TEMP_SUFFIXES) or name.startswith("~$"):
        return E.TEMPORARY, (
            f"{path}: temporary or partial file (a copy still in progress?), ignored; it will be read once "
            f"it is renamed to its final name"
        )
    return None


def _dicomdir_message(path: Path) -> str:
    return (
        f"{path}: is a DICOMDIR (an index of the media, not an image); ignored, the images it lists are read "
        f"from their own files"
    )


def _float(value: Any, default: float | None = None) -> float | None:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        seq = [float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value])]
    except (TypeError, ValueError):
        return None
    if len(seq) != n or any(v != v for v in seq):  # wrong multiplicity or NaN
        return None
    return tuple(seq)


def _int(value: Any, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return default


def _strings(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(str(v) for v in value)
    except TypeError:
        return (str(value),)


@functools.lru_cache(maxsize=None)
def _tag(keyword: str) -> BaseTag:
    """Keyword → tag, computed once (pydicom's lookup is a measurable part of a header read)."""
    return Tag(keyword)


_INT_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}
_ASCII_VRS = frozenset({"DS", "IS", "CS"})


def _raw(ds: Dataset, keyword: str) -> Any:
    """The value of a numeric or code-string attribute, decoded straight from the raw bytes.

    Why: pydicom's general conversion (hooks, validation) is about half the cost of a header read; the
    attributes the scan needs are US/IS/DS/CS, whose encoding is plain ASCII or fixed-width integers.
    Returns an int / str for one value, a list for several, None when absent or empty. Other VRs (and
    elements pydicom already converted) go through pydicom."""
    tag = _tag(keyword)
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if not isinstance(elem, RawDataElement):
        value = elem.value
        return None if value is None or value == "" else value
    vr = elem.VR or dictionary_VR(tag)
    data = elem.value
    if not data:
        return None
    if vr in _INT_FORMATS:
        fmt = _INT_FORMATS[vr]
        n = len(data) // struct.calcsize(fmt)
        values = struct.unpack(("<" if elem.is_little_endian else ">") + fmt * n, data[: n * struct.calcsize(fmt)])
        return values[0] if n == 1 else list(values)
    if vr in _ASCII_VRS:
        parts = [p.strip(" \x00") for p in data.decode("ascii", errors="replace").split("\\")]
        return parts[0] if len(parts) == 1 else parts
    value = ds[tag].value
    return None if value is None or value == "" else value


def _uid(ds: Dataset, keyword: str) -> str:
    """A UID read from its raw bytes: real exports carry UIDs that break the UI grammar (COCA: components
    with leading zeros); they still identify objects, and converting them through pydicom would log a
    validation warning per file."""
    elem = ds.get_item(_tag(keyword))
    if elem is None:
        return ""
    value = getattr(elem, "value", None)
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip("\x00 ")
    return str(value or "").strip("\x00 ")


def _acquisition(ds: Dataset) -> AcquisitionInfo:
    sync = str(_raw(ds, "CardiacSynchronizationTechnique") or "").upper()
    gated = None if not sync else sync != "NONE"
    kernel = ds.get("ConvolutionKernel", "")
    return AcquisitionInfo(
        manufacturer=str(ds.get("Manufacturer", "") or ""),
        model=str(ds.get("ManufacturerModelName", "") or ""),
        kvp=_float(_raw(ds, "KVP")),
        convolution_kernel="\\".join(_strings(kernel)),
        ecg_gated=gated,
    )


def _item(group: Dataset | None, sequence: str) -> Dataset | None:
    """First item of ``group.<sequence>`` or None."""
    if group is None:
        return None
    seq = group.get(sequence)
    if not seq:
        return None
    return seq[0]


def _frame_value(per_frame: Dataset | None, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    """A functional-group attribute: the per-frame group wins, the shared group is the fallback."""
    for group in (per_frame, shared):
        item = _item(group, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def _expected_native_bytes(rows: int, columns: int, frames: int, bits_allocated: int, samples: int) -> int:
    n = rows * columns * frames * samples
    return (n * bits_allocated + 7) // 8


def _check_pixel_element(fp: Any, path: Path, size: int, ds: Dataset, little_endian: bool, implicit: bool) -> None:
    """Called with ``fp`` at the Pixel Data element's tag: raise if the file is cut short.

    Native data: the element's declared length must cover rows × columns × frames × bytes, and the file
    must hold it. Encapsulated data: every fragment item header must be followed by its full length and
    the sequence delimiter must be present. Only headers are read (seeks), never the pixel bytes."""
    start = fp.tell()
    endian = "<" if little_endian else ">"
    head = fp.read(8)
    if len(head) < 8:
        raise DicomReadError(path, E.TRUNCATED, f"{path}: file ends inside the Pixel Data element header (truncated copy?)")
    if implicit:
        length = struct.unpack(endian + "I", head[4:8])[0]
        value_start = start + 8
    else:
        vr = head[4:6]
        if vr in _EXPLICIT_32BIT_LENGTH_VRS:
            more = fp.read(4)
            if len(more) < 4:
                raise DicomReadError(path, E.TRUNCATED, f"{path}: file ends inside the Pixel Data element header")
            length = struct.unpack(endian + "I", more)[0]
            value_start = start + 12
        else:
            length = struct.unpack(endian + "H", head[6:8])[0]
            value_start = start + 8
    if length == 0xFFFFFFFF:
        _walk_fragments(fp, path, size, value_start, endian)
        return
    if value_start + length > size:
        raise DicomReadError(
            path,
            E.TRUNCATED,
            f"{path}: truncated: Pixel Data declares {length} bytes but the file ends {value_start + length - size} "
            f"bytes short (interrupted copy or transfer?); copy the file again from the source",
        )
    rows, columns = _int(_raw(ds, "Rows"), 0) or 0, _int(_raw(ds, "Columns"), 0) or 0
    bits = _int(_raw(ds, "BitsAllocated"), 0) or 0
    frames = _int(_raw(ds, "NumberOfFrames"), 1) or 1
    samples = _int(_raw(ds, "SamplesPerPixel"), 1) or 1
    expected = _expected_native_bytes(rows, columns, frames, bits, samples)
    if _tag_at(head, endian) == 0x7FE00010 and length < expected:
        raise DicomReadError(
            path,
            E.TRUNCATED,
            f"{path}: truncated: Pixel Data holds {length} bytes but {rows}×{columns}×{frames} pixels of "
            f"{bits} bits need {expected}; the file is incomplete, copy it again from the source",
        )


def _tag_at(head: bytes, endian: str) -> int:
    group, elem = struct.unpack(endian + "HH", head[:4])
    return (group << 16) | elem


def _walk_fragments(fp: Any, path: Path, size: int, pos: int, endian: str) -> None:
    while True:
        if pos + 8 > size:
            raise DicomReadError(
                path,
                E.TRUNCATED,
                f"{path}: truncated: the compressed Pixel Data ends without its sequence delimiter "
                f"(interrupted copy?); copy the file again from the source",
            )
        fp.seek(pos)
        head = fp.read(8)
        tag = _tag_at(head, endian)
        length = struct.unpack(endian + "I", head[4:8])[0]
        if tag == 0xFFFEE0DD:
            return
        if tag != 0xFFFEE000 or length == 0xFFFFFFFF:
            raise DicomReadError(
                path,
                E.TRUNCATED,
                f"{path}: the compressed Pixel Data is corrupt (unexpected element {tag:08X} inside it); "
                f"the file is damaged, copy it again from the source",
            )
        pos += 8 + length
        if pos > size:
            raise DicomReadError(
                path,
                E.TRUNCATED,
                f"{path}: truncated: a compressed Pixel Data fragment runs {pos - size} bytes past the end of the "
                f"file (interrupted copy?); copy the file again from the source",
            )


def _parse(path: Path, fp: Any) -> Dataset:
    """Parse the header, accepting files without the 128-byte preamble only when they look like DICOM."""
    try:
        return read_partial(fp, stop_when=_stop_at_pixels, specific_tags=list(_HEADER_TAG_LIST))
    except InvalidDicomError:
        pass
    fp.seek(0)
    try:
        ds = read_partial(fp, stop_when=_stop_at_pixels, specific_tags=list(_HEADER_TAG_LIST), force=True)
    except Exception as exc:  # garbage bytes make the forced parser fail in many ways
        raise DicomReadError(
            path, E.NOT_DICOM, f"{path}: not a DICOM file (no 'DICM' marker and no readable DICOM header: {exc})"
        ) from None
    if "SOPInstanceUID" not in ds or not ("SOPClassUID" in ds or "Modality" in ds):
        raise DicomReadError(
            path, E.NOT_DICOM, f"{path}: not a DICOM file (no 'DICM' marker and no DICOM object identity in it)"
        )
    return ds


def read_header(path: Path) -> list[SliceHeader]:
    """One :class:`SliceHeader` per image plane in ``path`` (one for classic CT, one per frame for
    enhanced multi-frame), read without pixel data.

    Raises:
        DicomReadError: reason ``not_dicom``, ``dicomdir``, ``no_pixel_data``, ``truncated``,
            ``unreadable``, ``missing_uid`` or ``invalid_image``, with a message naming the file.
    """
    path = Path(path)
    named = classify_name(path)
    if named is not None and named[0] == E.DICOMDIR:
        raise DicomReadError(path, *named)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            ds = _parse_guarded(path, fp)
            ts = UID(ds.file_meta.get("TransferSyntaxUID", "") or "")
            implicit, little = ds.original_encoding[0], ds.original_encoding[1]
            if MediaStorageDirectoryStorage in (_uid(ds.file_meta, "MediaStorageSOPClassUID"), _uid(ds, "SOPClassUID")):
                raise DicomReadError(path, E.DICOMDIR, _dicomdir_message(path))
            at_pixels = False
            header_end = fp.tell()
            if ts != DeflatedExplicitVRLittleEndian:
                here = fp.tell()
                head = fp.read(4)
                at_pixels = len(head) == 4 and _tag_at(head, "<" if little else ">") in _PIXEL_TAGS
                if at_pixels:
                    fp.seek(here)
                    _check_pixel_element(fp, path, size, ds, bool(little), bool(implicit))
            else:
                at_pixels = _deflated_has_pixels(path, fp)
    except DicomReadError:
        raise
    except PermissionError as exc:
        raise DicomReadError(path, E.UNREADABLE, f"{path}: cannot be read (permission denied: {exc.strerror}); "
                             f"check the folder's permissions") from None
    except FileNotFoundError:
        raise DicomReadError(path, E.UNREADABLE, f"{path}: disappeared while being read (moved or deleted)") from None
    except OSError as exc:
        raise DicomReadError(path, E.UNREADABLE, f"{path}: cannot be read (I/O error: {exc})") from None
    kind = str(_raw(ds, "Modality") or "") or "object"
    sop = _uid(ds, "SOPClassUID") or _uid(ds.file_meta, "MediaStorageSOPClassUID")
    sop_name = getattr(UID(str(sop)), "name", str(sop)) if sop else "unknown SOP class"
    if not at_pixels and header_end >= size and ("Rows" in ds or "Image Storage" in sop_name):
        raise DicomReadError(
            path, E.TRUNCATED,
            f"{path}: truncated: a {sop_name} file that ends before its pixel data (interrupted copy?); copy the "
            f"file again from the source")
    if not any(k in ds for k in ("SOPInstanceUID", "SOPClassUID", "Modality")):
        raise DicomReadError(path, E.NOT_DICOM, f"{path}: has a DICOM marker but no SOP instance, SOP class or "
                                                f"modality in it (damaged, or not an image object)")
    if not at_pixels:
        raise DicomReadError(
            path,
            E.NO_PIXEL_DATA,
            f"{path}: a DICOM {kind} ({sop_name}) with no image pixel data (e.g. a report, plan or presentation "
            f"state); ignored",
        )
    if not ts:
        ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return _slice_headers(path, ds, str(ts))


def _parse_guarded(path: Path, fp: Any) -> Dataset:
    try:
        return _parse(path, fp)
    except DicomReadError:
        raise
    except OSError:
        raise
    except zlib.error as exc:
        raise DicomReadError(path, E.TRUNCATED, f"{path}: the deflated data set is cut short or corrupt ({exc}); "
                             f"copy the file again from the source") from None
    except (EOFError, struct.error) as exc:
        raise DicomReadError(path, E.TRUNCATED, f"{path}: truncated: the file ends inside its header ({exc}); "
                             f"copy the file again from the source") from None
    except Exception as exc:  # pydicom raises many types for corrupt headers
        raise DicomReadError(path, E.NOT_DICOM, f"{path}: has a DICOM marker but its header cannot be parsed "
                             f"({type(exc).__name__}: {exc}); the file is damaged") from None


def _deflated_has_pixels(path: Path, fp: Any) -> bool:
    """Deflated files are inflated in memory by pydicom; the pixel check needs the inflated stream."""
    ds = _full_read_for_deflated(path)
    return any(int(t) in _PIXEL_TAGS for t in ds.keys())


def _full_read_for_deflated(path: Path) -> Dataset:
    from pydicom import dcmread

    try:
        return dcmread(path, defer_size=256)
    except zlib.error as exc:
        raise DicomReadError(path, E.TRUNCATED, f"{path}: the deflated data set is cut short or corrupt ({exc})") from None


def derived_series_uid(path: Path, ds: Dataset) -> str:
    """A stand-in SeriesInstanceUID for files that lack one (de-identified exports such as COCA's
    non-gated scans): the same folder, SeriesNumber, StudyInstanceUID and Modality give the same
    deterministic ``2.25.…`` UID, so those files form one series."""
    sources = "\x00".join([
        str(path.resolve().parent),
        str(_raw(ds, "SeriesNumber") or ""),
        _uid(ds, "StudyInstanceUID"),
        str(_raw(ds, "Modality") or ""),
    ])
    return f"2.25.{uuid.uuid5(_DERIVED_NAMESPACE, sources).int}"  # PS3.5 B.2: a UUID as a UID


def _slice_headers(path: Path, ds: Dataset, ts: str) -> list[SliceHeader]:
    sop = _uid(ds, "SOPInstanceUID")
    if not sop:
        raise DicomReadError(path, E.MISSING_UID, f"{path}: has no SOPInstanceUID, so the image cannot be identified")
    series = _uid(ds, "SeriesInstanceUID")
    derived = not series
    if derived:
        series = derived_series_uid(path, ds)
    rows, columns = _int(_raw(ds, "Rows"), 0) or 0, _int(_raw(ds, "Columns"), 0) or 0
    bits_allocated = _int(_raw(ds, "BitsAllocated"), 0) or 0
    if rows <= 0 or columns <= 0 or bits_allocated <= 0:
        raise DicomReadError(
            path, E.INVALID_IMAGE, f"{path}: has pixel data but no valid Rows/Columns/BitsAllocated; cannot be decoded"
        )
    bits_stored = _int(_raw(ds, "BitsStored"), bits_allocated) or bits_allocated
    pixel_rep = _int(_raw(ds, "PixelRepresentation"), 0) or 0
    common = dict(
        path=path,
        sop_instance_uid=sop,
        series_instance_uid=series,
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        modality=str(_raw(ds, "Modality") or "").upper(),
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=pixel_rep,
        instance_number=_int(_raw(ds, "InstanceNumber")),
        transfer_syntax_uid=ts,
        acquisition=_acquisition(ds),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        series_uid_derived=derived,
    )
    image_type = _strings(_raw(ds, "ImageType"))
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence")
    frames = _int(_raw(ds, "NumberOfFrames"), 1) or 1
    if per_frame_seq is None and "NumberOfFrames" not in ds:
        return [
            SliceHeader(
                frame=None,
                image_type=image_type,
                pixel_spacing_mm=_floats(_raw(ds, "PixelSpacing"), 2),  # type: ignore[arg-type]
                position_mm=_floats(_raw(ds, "ImagePositionPatient"), 3),  # type: ignore[arg-type]
                orientation=_floats(_raw(ds, "ImageOrientationPatient"), 6),  # type: ignore[arg-type]
                slice_thickness_mm=_float(_raw(ds, "SliceThickness")),
                rescale_slope=_float(_raw(ds, "RescaleSlope"), 1.0) or 1.0,
                rescale_intercept=_float(_raw(ds, "RescaleIntercept"), 0.0) or 0.0,
                gantry_tilt_deg=_float(_raw(ds, "GantryDetectorTilt")),
                **common,
            )
        ]
    return _frame_headers(path, ds, frames, per_frame_seq, image_type, common)


def _frame_headers(
    path: Path, ds: Dataset, frames: int, per_frame_seq: Any, image_type: tuple[str, ...], common: dict
) -> list[SliceHeader]:
    """Multi-frame objects: per-frame functional groups win, shared groups are the fallback, and the
    top-level attributes are the last resort (legacy multi-frame without functional groups)."""
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    if per_frame_seq is not None and len(per_frame_seq) != frames:
        raise DicomReadError(
            path,
            E.INVALID_IMAGE,
            f"{path}: NumberOfFrames is {frames} but the per-frame functional groups describe {len(per_frame_seq)} "
            f"frames; the multi-frame object is inconsistent",
        )
    top_spacing = _floats(_raw(ds, "PixelSpacing"), 2)
    top_orientation = _floats(_raw(ds, "ImageOrientationPatient"), 6)
    top_position = _floats(_raw(ds, "ImagePositionPatient"), 3)
    headers = []
    for k in range(frames):
        pf = per_frame_seq[k] if per_frame_seq is not None else None
        position = _floats(_frame_value(pf, shared, "PlanePositionSequence", "ImagePositionPatient"), 3)
        if position is None and per_frame_seq is None and frames == 1:
            position = top_position
        orientation = _floats(_frame_value(pf, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        spacing = _floats(_frame_value(pf, shared, "PixelMeasuresSequence", "PixelSpacing"), 2)
        thickness = _float(_frame_value(pf, shared, "PixelMeasuresSequence", "SliceThickness"))
        slope = _float(_frame_value(pf, shared, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(_frame_value(pf, shared, "PixelValueTransformationSequence", "RescaleIntercept"))
        frame_type = _strings(_frame_value(pf, shared, "CTImageFrameTypeSequence", "FrameType"))
        tilt = _float(_frame_value(pf, shared, "CTAcquisitionDetailsSequence", "GantryDetectorTilt"))
        headers.append(
            SliceHeader(
                frame=k,
                image_type=frame_type or image_type,
                pixel_spacing_mm=spacing if spacing is not None else top_spacing,  # type: ignore[arg-type]
                position_mm=position,  # type: ignore[arg-type]
                orientation=orientation if orientation is not None else top_orientation,  # type: ignore[arg-type]
                slice_thickness_mm=thickness if thickness is not None else _float(_raw(ds, "SliceThickness")),
                rescale_slope=slope if slope is not None else (_float(_raw(ds, "RescaleSlope"), 1.0) or 1.0),
                rescale_intercept=(
                    intercept if intercept is not None else (_float(_raw(ds, "RescaleIntercept"), 0.0) or 0.0)
                ),
                gantry_tilt_deg=tilt if tilt is not None else _float(_raw(ds, "GantryDetectorTilt")),
                **common,
            )
        )
    return headers
