"""Finding, grouping, ordering and decoding CT series (header-first, pixels on demand).

Public API (docs/CONTRACTS.md, "Series reading API")::

    scan_path(path, eligibility=EligibilityConfig(), progress=False) -> ScanResult
    read_header(path) -> list[SliceHeader]          # raises DicomReadError
    decode_stored(header) -> np.ndarray             # stored values, 2D, the file's dtype
    to_hu(stored, header) -> np.ndarray             # float32 HU (numpy reference)
    read_volume(series, threads=0) -> Volume        # float32 HU (slices, rows, cols)
"""

from cacstream.engine.series.decode import decode_stored, read_volume, to_hu
from cacstream.engine.series.eligibility import check_series
from cacstream.engine.series.errors import FILE_REASONS, SERIES_REASONS, DicomReadError
from cacstream.engine.series.grouping import derive_geometry, group_by_series, order_along_normal, slice_normal
from cacstream.engine.series.headers import read_header
from cacstream.engine.series.scan import collect, find_files, scan_path
from cacstream.engine.series.types import (
    AcquisitionInfo,
    Geometry,
    RejectedSeries,
    ScanResult,
    Series,
    SkippedFile,
    SliceHeader,
    Volume,
)

__all__ = [
    "AcquisitionInfo",
    "DicomReadError",
    "FILE_REASONS",
    "Geometry",
    "RejectedSeries",
    "SERIES_REASONS",
    "ScanResult",
    "Series",
    "SkippedFile",
    "SliceHeader",
    "Volume",
    "check_series",
    "collect",
    "decode_stored",
    "derive_geometry",
    "find_files",
    "group_by_series",
    "order_along_normal",
    "read_header",
    "read_volume",
    "scan_path",
    "slice_normal",
    "to_hu",
]
