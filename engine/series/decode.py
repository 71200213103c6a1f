"""Decode pixels: stored values per slice, HU per slice, and whole volumes.

Decoding is pydicom's: its pixel plugins handle native data (including big endian, BitsStored < 16 with
masking of unused high bits and sign extension of signed values) and the compressed transfer syntaxes
(RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 via pylibjpeg). We do not duplicate that
work; we check its result against the header and map every failure to a :class:`DicomReadError`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.pixels import iter_pixels, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cacstream.engine.series import errors as E
from cacstream.engine.series.errors import DicomReadError
from cacstream.engine.series.types import Series, SliceHeader, Volume


def _map_error(path: Path, exc: BaseException) -> DicomReadError:
    """Turn whatever pydicom or the OS raised into a reasoned, user-facing error.

    The file is first re-checked the way the scan checks it (cheap, header only): a file truncated or
    replaced since the scan gets that precise reason rather than the decoder's symptom."""
    if isinstance(exc, DicomReadError):
        return exc
    from cacstream.engine.series.headers import read_header

    try:
        read_header(path)
    except DicomReadError as diagnosed:
        return diagnosed
    except Exception:  # noqa: BLE001 - diagnosis is best effort; fall through to the symptom
        pass
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, PermissionError):
        return DicomReadError(path, E.UNREADABLE, f"{path}: cannot be read (permission denied)")
    if isinstance(exc, FileNotFoundError):
        return DicomReadError(path, E.UNREADABLE, f"{path}: disappeared before its pixels were read (moved or deleted)")
    if isinstance(exc, (EOFError,)) or "less than expected" in str(exc) or "truncat" in str(exc).lower() \
            or "insufficient" in str(exc).lower() or "end of the" in str(exc).lower():
        return DicomReadError(path, E.TRUNCATED, f"{path}: truncated: the pixel data is cut short ({text}); copy the "
                                                 f"file again from the source")
    if isinstance(exc, OSError):
        return DicomReadError(path, E.UNREADABLE, f"{path}: cannot be read (I/O error: {exc})")
    if isinstance(exc, (NotImplementedError, RuntimeError)) and ("plugin" in str(exc).lower()
                                                                 or "no pixel data decoders" in str(exc).lower()
                                                                 or "unable to decode" in str(exc).lower()):
        return DicomReadError(path, E.UNSUPPORTED_TRANSFER_SYNTAX,
                              f"{path}: its compression cannot be decoded here ({text}); export uncompressed or "
                              f"install the matching pydicom pixel plugin")
    return DicomReadError(path, E.DECODE_FAILED, f"{path}: pixel data could not be decoded ({text}); the file may be "
                                                 f"damaged")


def _needs_dataset_route(header: SliceHeader) -> bool:
    """pydicom's path-based decoding needs File Meta with a transfer syntax and a non-deflated body;
    other files are read whole into a dataset first (rare: no-meta and deflated files)."""
    return header.transfer_syntax_uid == DeflatedExplicitVRLittleEndian or _lacks_meta(header.path)


def _lacks_meta(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) != b"DICM"
    except OSError:
        return False  # the decode itself reports the I/O error


def _check_frame(header: SliceHeader, arr: np.ndarray) -> np.ndarray:
    """Verify the decoded plane matches its header; return it in native byte order."""
    where = f"{header.path}{'' if header.frame is None else f' frame {header.frame}'}"
    if arr.ndim == 3 and arr.shape[:2] == (header.rows, header.columns):
        raise DicomReadError(header.path, E.INVALID_IMAGE,
                             f"{where}: is a colour image ({arr.shape[2]} samples per pixel), not a CT slice")
    if arr.shape != (header.rows, header.columns):
        raise DicomReadError(
            header.path, E.CHANGED_ON_DISK,
            f"{where}: decoded image is "
            f"{'×'.join(map(str, arr.shape))} but its header said {header.rows}×{header.columns} "
            f"(file replaced since the scan, or colour data)")
    if arr.dtype.kind not in "iu":
        raise DicomReadError(header.path, E.INVALID_IMAGE,
                             f"{header.path}: pixel data is {arr.dtype} (float pixel data is not a CT image)")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _decode_via_dataset(header: SliceHeader, index: int | None) -> np.ndarray:
    """Read the whole file into a dataset (supplying the inferred transfer syntax when File Meta lacks it)."""
    ds = dcmread(header.path, force=True)
    ds.file_meta.TransferSyntaxUID = header.transfer_syntax_uid
    return pixel_array(ds, index=index)


def decode_stored(header: SliceHeader) -> np.ndarray:
    """The stored values of one slice (2D, the file's integer dtype, native byte order), unscaled.

    Raises:
        DicomReadError: ``truncated``, ``unreadable``, ``unsupported_transfer_syntax``, ``decode_failed``,
            ``changed_on_disk`` or ``invalid_image``, naming the file.
    """
    try:
        if _needs_dataset_route(header):
            arr = _decode_via_dataset(header, header.frame)
        else:
            arr = pixel_array(header.path, index=header.frame)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reasoned DicomReadError
        raise _map_error(header.path, exc) from None
    return _check_frame(header, arr)


def to_hu(stored: np.ndarray, header: SliceHeader) -> np.ndarray:
    """HU = stored × RescaleSlope + RescaleIntercept, as float32.

    The reference the kernels' C++/CUDA twins are tested against: the product and sum are taken in
    float64 (slope and intercept as float64) and the result is rounded once to float32. For integer
    intercepts and slope 1 (nearly all CT) every HU is an exact integer."""
    return (np.asarray(stored).astype(np.float64) * float(header.rescale_slope)
            + float(header.rescale_intercept)).astype(np.float32)


def _hu_into(out: np.ndarray, stored: np.ndarray, header: SliceHeader) -> None:
    """Write :func:`to_hu` of ``stored`` into ``out`` (a float32 slice of the volume) without temporaries.

    Slope 1 with an integer intercept (nearly all CT) is done in float32, which is exact there (integers
    below 2**24) and therefore bit-identical to :func:`to_hu`; any other rescale goes through it."""
    slope, intercept = float(header.rescale_slope), float(header.rescale_intercept)
    if slope == 1.0 and intercept.is_integer() and abs(intercept) < 2**23 and stored.dtype.itemsize <= 2:
        np.add(stored, np.float32(intercept), out=out, dtype=np.float32)
    else:
        out[...] = to_hu(stored, header)


def _decode_file(path: Path, items: list[tuple[int, SliceHeader]]) -> list[tuple[int, np.ndarray]]:
    """Stored values of every needed plane of one file as ``(volume index, plane)`` (a multi-frame file is
    parsed once). A plain function of picklable arguments, so it runs in threads or worker processes."""
    if len(items) == 1 and items[0][1].frame is None:
        index, header = items[0]
        return [(index, decode_stored(header))]
    wanted = sorted(items, key=lambda it: it[1].frame or 0)
    frames = [h.frame or 0 for _, h in wanted]
    try:
        if _needs_dataset_route(wanted[0][1]):
            ds = dcmread(path, force=True)
            ds.file_meta.TransferSyntaxUID = wanted[0][1].transfer_syntax_uid
            decoded = list(iter_pixels(ds, indices=frames))
        else:
            decoded = list(iter_pixels(path, indices=frames))
    except Exception as exc:  # noqa: BLE001
        raise _map_error(path, exc) from None
    if len(decoded) != len(wanted):
        raise DicomReadError(path, E.TRUNCATED, f"{path}: holds fewer frames than its header declares")
    return [(index, _check_frame(header, arr)) for (index, header), arr in zip(wanted, decoded)]


def _by_file(slices: Iterable[SliceHeader]) -> dict[Path, list[tuple[int, SliceHeader]]]:
    groups: dict[Path, list[tuple[int, SliceHeader]]] = defaultdict(list)
    for i, h in enumerate(slices):
        groups[h.path].append((i, h))
    return groups


#: Transfer syntaxes whose installed decoders hold the GIL for the whole decode (measured: a Python
#: thread runs at ~0.3 of its idle speed while another thread decodes JPEG-LS, JPEG 2000 or JPEG
#: lossless CT slices, against ~0.9 for native 512×512 data). Threads cannot overlap them, so such series are decoded serially. (Worker
#: processes could, but a library that spawns processes forces every caller's script to guard its
#: ``__main__``; that choice belongs to the application, not to this reader.)
GIL_BOUND_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
})


def decode_plan(series: Series, threads: int = 0) -> tuple[str, int]:
    """How :func:`read_volume` decodes ``series``: ``("serial" | "threads", workers)``.

    Native (and RLE) data decode in a thread pool: file reads and numpy release the GIL. Series mostly in
    JPEG / JPEG-LS / JPEG 2000 decode serially (see GIL_BOUND_SYNTAXES)."""
    n_files = len({h.path for h in series.slices})
    workers = min((os.cpu_count() or 1) if threads <= 0 else threads, n_files)
    gil_bound = sum(h.transfer_syntax_uid in GIL_BOUND_SYNTAXES for h in series.slices)
    if workers <= 1 or gil_bound * 2 > len(series.slices):
        return "serial", 1
    return "threads", workers


def int16_hu_is_exact(series: Series) -> bool:
    """True when every plane's HU are integers that int16 holds for ANY stored value its header allows:
    RescaleSlope 1, an integer RescaleIntercept, and the BitsStored range shifted by it inside int16
    (nearly all CT: 12 bits unsigned, intercept −1024 → [−1024, 3071])."""
    lo_i16, hi_i16 = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    for h in series.slices:
        intercept = float(h.rescale_intercept)
        if float(h.rescale_slope) != 1.0 or not intercept.is_integer():
            return False
        bits = int(h.bits_stored)
        lo, hi = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if h.pixel_representation == 1
                  else (0, (1 << bits) - 1))
        if lo + intercept < lo_i16 or hi + intercept > hi_i16:
            return False
    return True


def _hu_into_int16(out: np.ndarray, stored: np.ndarray, header: SliceHeader) -> None:
    """Exact int16 HU (callers checked :func:`int16_hu_is_exact`): stored + intercept, no rounding."""
    np.add(stored, np.int32(int(header.rescale_intercept)), out=out, dtype=np.int32, casting="unsafe")


def read_volume(series: Series, threads: int = 0, hu_dtype: str = "float32") -> Volume:
    """Decode a series into one HU array (slices, rows, columns), allocated once, in series order.

    ``threads``: number of parallel decoders; 0 = one per CPU core, 1 = serial. See :func:`decode_plan`
    for when the thread pool is used (and why not always).
    ``hu_dtype``: "float32" (default; every consumer accepts it), "int16" (exact CT HU in half the
    memory — raises ValueError when the rescale makes that inexact), or "auto" (int16 when exact, else
    float32). The values are the same either way; int16 halves memory traffic for Agatston.

    Raises:
        DicomReadError: for the first file that fails (naming it).
        ValueError: ``hu_dtype="int16"`` for a series whose HU int16 cannot hold exactly.
    """
    if hu_dtype not in ("float32", "int16", "auto"):
        raise ValueError(f"hu_dtype must be 'float32', 'int16' or 'auto', got {hu_dtype!r}")
    as_int16 = hu_dtype != "float32" and int16_hu_is_exact(series)
    if hu_dtype == "int16" and not as_int16:
        raise ValueError(f"series {series.uid}: HU are not exact integers within int16 (rescale slope, "
                         "intercept or BitsStored); read it as float32")
    g = series.geometry
    hu = np.empty((len(series.slices), g.rows, g.columns), dtype=np.int16 if as_int16 else np.float32)
    into = _hu_into_int16 if as_int16 else _hu_into
    groups = _by_file(series.slices)
    mode, workers = decode_plan(series, threads)

    def store(results: list[tuple[int, np.ndarray]]) -> None:
        for index, stored in results:
            into(hu[index], stored, series.slices[index])

    if mode == "serial":
        for path, items in groups.items():
            store(_decode_file(path, items))
        return Volume(series=series, hu=hu)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicom-decode") as pool:
        futures = [pool.submit(_decode_file, path, items) for path, items in groups.items()]
        try:
            for f in futures:
                store(f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return Volume(series=series, hu=hu)
