"""numpy arrays -> the C++ twins in ``cacstream.kernels._cpu`` (OpenMP over slices, GIL released).

Inputs are passed to C++ as they are when C-contiguous with a native int16/uint16/float32 dtype;
otherwise one contiguous native copy is made here (documented, counted in :data:`copies_made`
for tests). Outputs are allocated here unless the caller hands one in (``out=``), e.g. a pinned
host buffer or a torch tensor's memory.
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np

from .config import PreprocessConfig
from .reference import PreprocessResult, norm_params, per_slice, stored_format

_STORED_DTYPES = (np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.float32))

#: How many defensive input copies this process made (non-contiguous or foreign byte order).
copies_made = 0


@functools.lru_cache(maxsize=1)
def extension() -> ModuleType:
    """The compiled extension, or an ImportError that says how to build it."""
    try:
        from . import _cpu
    except ImportError as exc:  # pragma: no cover - only on a broken install
        raise ImportError(
            "the C++ extension cacstream.kernels._cpu is not built or does not load "
            f"({exc}); rebuild with `pip install --no-build-isolation -e .`"
        ) from exc
    return _cpu


def _contiguous_native(a: np.ndarray, name: str) -> np.ndarray:
    global copies_made
    if not a.dtype.isnative:
        copies_made += 1
        a = a.astype(a.dtype.newbyteorder("="))
    if not a.flags.c_contiguous:
        copies_made += 1
        a = np.ascontiguousarray(a)
    return a


def _batch(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (rows, columns) or (slices, rows, columns), got shape {a.shape}")
    if a.shape[1] < 1 or a.shape[2] < 1:
        raise ValueError(f"{name} has an empty slice: shape {a.shape}")
    return a


def stored_batch(stored: np.ndarray) -> np.ndarray:
    """Validate dtype/shape and return a C-contiguous native (N, H, W) view (a copy only if needed)."""
    if stored.dtype.newbyteorder("=") not in _STORED_DTYPES:
        raise TypeError(
            f"stored values must be int16, uint16 or float32 (HU), got {stored.dtype}; "
            "convert first, e.g. .astype(np.float32) for HU"
        )
    return _contiguous_native(_batch(stored, "stored"), "stored")


def float_batch(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype.newbyteorder("=") != np.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype}")
    return _contiguous_native(_batch(a, name), name)


def _format_args(batch: np.ndarray, bits_stored: int | None, signed: bool | None) -> tuple[int, bool]:
    if batch.dtype == np.float32:
        if bits_stored is not None or signed is not None:
            raise ValueError("bits_stored/signed apply to integer stored values, not float32 input")
        return 16, True
    return stored_format(batch.dtype, bits_stored, signed)


def raise_if_nonfinite(nonfinite: np.ndarray) -> None:
    bad = np.flatnonzero(nonfinite)
    if bad.size:
        shown = bad[:10].tolist()
        more = f" and {bad.size - 10} more" if bad.size > 10 else ""
        raise ValueError(f"slices {shown}{more} hold non-finite HU values (NaN or inf)")


def to_hu(
    stored: np.ndarray,
    slope: float | np.ndarray = 1.0,
    intercept: float | np.ndarray = 0.0,
    bits_stored: int | None = None,
    signed: bool | None = None,
    threads: int = 0,
) -> np.ndarray:
    batch = stored_batch(stored)
    bits, sgn = _format_args(batch, bits_stored, signed)
    n = batch.shape[0]
    out = np.empty(batch.shape, np.float32)
    if n:
        extension().to_hu(batch, per_slice(slope, n, "slope"), per_slice(intercept, n, "intercept"),
                          bits, sgn, out, threads)
    return out.reshape(stored.shape)


def stats(hu: np.ndarray, config: PreprocessConfig, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(minmax (N, 2) float32, calcium counts (N,) int32); raises on non-finite HU."""
    batch = float_batch(hu, "hu")
    n = batch.shape[0]
    mm = np.empty((n, 2), np.float32)
    counts = np.empty(n, np.int32)
    bad = np.zeros(n, np.int32)
    if n:
        extension().stats(batch, float(config.calcium_threshold_hu), float(config.body_threshold_hu),
                          mm, counts, bad, threads)
    raise_if_nonfinite(bad)
    return mm, counts


def normalise(hu: np.ndarray, lo: np.ndarray, hi: np.ndarray, inv: np.ndarray, threads: int = 0) -> np.ndarray:
    batch = float_batch(hu, "hu")
    out = np.empty(batch.shape, np.float32)
    if batch.shape[0]:
        extension().normalise(batch, *(np.ascontiguousarray(v, np.float32) for v in (lo, hi, inv)), out, threads)
    return out.reshape(hu.shape)


def normalise_config(hu: np.ndarray, config: PreprocessConfig, threads: int = 0) -> np.ndarray:
    """Normalise per ``config`` (per-slice min-max from the slice's own HU, or the fixed window)."""
    mm, _ = stats(hu, config, threads)
    lo, hi, inv = norm_params(mm, config)
    return normalise(hu, lo, hi, inv, threads)


def resize(image: np.ndarray, size: tuple[int, int], antialias: bool, threads: int = 0) -> np.ndarray:
    batch = float_batch(image, "image")
    out = np.empty((batch.shape[0], size[0], size[1]), np.float32)
    if batch.shape[0]:
        extension().resize(batch, out, bool(antialias), threads)
    return out if image.ndim == 3 else out[0]


def preprocess(
    stored: np.ndarray,
    slope: float | np.ndarray,
    intercept: float | np.ndarray,
    config: PreprocessConfig,
    bits_stored: int | None = None,
    signed: bool | None = None,
    threads: int = 0,
    out: np.ndarray | None = None,
) -> PreprocessResult:
    batch = stored_batch(stored)
    bits, sgn = _format_args(batch, bits_stored, signed)
    n = batch.shape[0]
    size = config.input_size
    if out is None:
        out = np.empty((n, 1, size, size), np.dtype(config.output_dtype))
    elif out.dtype != np.dtype(config.output_dtype) or out.shape != (n, 1, size, size):
        raise ValueError(
            f"out must be {config.output_dtype} with shape {(n, 1, size, size)} (config.output_dtype, "
            f"input_size), got {out.dtype} {out.shape}"
        )
    mm = np.empty((n, 2), np.float32)
    counts = np.empty(n, np.int32)
    bad = np.zeros(n, np.int32)
    if n:
        mode = 0 if config.normalisation == "minmax" else 1
        extension().preprocess(
            batch, per_slice(slope, n, "slope"), per_slice(intercept, n, "intercept"), bits, sgn,
            mode, float(config.window_hu[0]), float(config.window_hu[1]),
            float(config.calcium_threshold_hu), float(config.body_threshold_hu), bool(config.antialias),
            out, mm, counts, bad, threads,
        )
    raise_if_nonfinite(bad)
    return PreprocessResult(out, mm, counts)
