"""The one exception series reading raises, and the reason codes it (and :class:`SkippedFile`) use.

Why: the user must never see a bare traceback for a bad file. Every failure is turned into a
machine code (counted, tested) plus a sentence that names the file and says what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: File-level reason codes (SkippedFile.reason / DicomReadError.reason).
NOT_DICOM: Final = "not_dicom"
TRUNCATED: Final = "truncated"
NO_PIXEL_DATA: Final = "no_pixel_data"
DUPLICATE_SOP_INSTANCE: Final = "duplicate_sop_instance"
UNREADABLE: Final = "unreadable"
DICOMDIR: Final = "dicomdir"
HIDDEN: Final = "hidden"
TEMPORARY: Final = "temporary"
MISSING_UID: Final = "missing_uid"
INVALID_IMAGE: Final = "invalid_image"
UNSUPPORTED_TRANSFER_SYNTAX: Final = "unsupported_transfer_syntax"
DECODE_FAILED: Final = "decode_failed"
CHANGED_ON_DISK: Final = "changed_on_disk"

FILE_REASONS: Final[tuple[str, ...]] = (
    NOT_DICOM,
    TRUNCATED,
    NO_PIXEL_DATA,
    DUPLICATE_SOP_INSTANCE,
    UNREADABLE,
    DICOMDIR,
    HIDDEN,
    TEMPORARY,
    MISSING_UID,
    INVALID_IMAGE,
    UNSUPPORTED_TRANSFER_SYNTAX,
    DECODE_FAILED,
    CHANGED_ON_DISK,
)

#: Series-level reason codes (RejectedSeries.reason).
NOT_CT: Final = "not_ct"
LOCALIZER: Final = "localizer"
NOT_AXIAL: Final = "not_axial"
GANTRY_TILT: Final = "gantry_tilt"
MISSING_GEOMETRY: Final = "missing_geometry"
MIXED_SIZES: Final = "mixed_sizes"
INCONSISTENT_GEOMETRY: Final = "inconsistent_geometry"
TOO_FEW_SLICES: Final = "too_few_slices"
SLICE_THICKNESS: Final = "slice_thickness"
DUPLICATE_POSITIONS: Final = "duplicate_positions"
MISSING_SLICES: Final = "missing_slices"
IRREGULAR_SPACING: Final = "irregular_spacing"

SERIES_REASONS: Final[tuple[str, ...]] = (
    NOT_CT,
    LOCALIZER,
    NOT_AXIAL,
    GANTRY_TILT,
    MISSING_GEOMETRY,
    MIXED_SIZES,
    INCONSISTENT_GEOMETRY,
    TOO_FEW_SLICES,
    SLICE_THICKNESS,
    DUPLICATE_POSITIONS,
    MISSING_SLICES,
    IRREGULAR_SPACING,
)


class DicomReadError(Exception):
    """A file could not be read or decoded. ``reason`` is one of :data:`FILE_REASONS`.

    ``str(error)`` is the user-facing message (it names the file)."""

    def __init__(self, path: Path | str, reason: str, message: str) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.reason = reason
        self.message = message

    def __reduce__(self):  # keep it picklable across process pools
        return (DicomReadError, (self.path, self.reason, self.message))
