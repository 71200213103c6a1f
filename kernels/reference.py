"""Plain numpy reference of every preprocessing operation: the semantics, written to be read.

The C++ twins (kernels/cpu) and the CUDA kernels (kernels/cuda) must equal these functions bit for
bit: every float operation below is one float32 operation (numpy rounds each ufunc result once and
never fuses a multiply-add), in the same order as kernels/common/preprocess_math.h. The tests and
the ``cacstream bench kernels`` benchmark use this module as the baseline; it is not fast.

Pipeline of :func:`preprocess` for a batch of stored slices (N, H, W):

1. stored word -> value: low ``bits_stored`` bits, sign-extended when signed (garbage in the high
   bits is ignored), then HU = float32(value) * slope + intercept (two float32 roundings).
2. per slice, at full resolution: HU min/max and the calcium-candidate count (HU >= calcium
   threshold with the 4 edge neighbours > body threshold; border pixels never count).
3. normalise each pixel: n = (clip(HU, lo, hi) - lo) * inv - 1, with (lo, hi) = the slice min/max
   and inv = 2 / ((max - min) + 1e-7) (DINO-LG §4.1), or a fixed HU window and inv = 2 / (hi - lo).
4. resize the normalised slice: separable, vertical taps first, then horizontal; half-pixel
   centres (torch ``F.interpolate(..., mode="bilinear", align_corners=False, antialias=...)``).
5. clip to [-1, 1] and cast to float16 (round to nearest even) or keep float32; layout (N,1,S,S).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import PreprocessConfig

F32 = np.float32


class PreprocessResult(NamedTuple):
    """What :func:`preprocess` returns (numpy here; the dispatch returns the input's array type)."""

    model_input: np.ndarray  # (N, 1, S, S) float16 or float32, values in [-1, 1]
    hu_minmax: np.ndarray  # (N, 2) float32: per-slice HU min and max at full resolution
    calcium_counts: np.ndarray  # (N,) int32: calcium candidates per slice


def as_batch(a: np.ndarray) -> np.ndarray:
    """(H, W) -> (1, H, W); (N, H, W) unchanged."""
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise ValueError(f"expected (rows, columns) or (slices, rows, columns), got shape {a.shape}")
    return a


def per_slice(values: float | np.ndarray | list[float], n: int, name: str) -> np.ndarray:
    """A scalar or (n,) sequence -> (n,) float32 (slope/intercept may differ per slice)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one value per slice ({n}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr}")
    if np.any(np.abs(arr) > 1e30):  # 65535 * 1e30 + 1e30 still fits float32: integer input stays finite
        raise ValueError(f"{name} must be within ±1e30 (a larger rescale overflows float32 HU), got {arr}")
    return arr.astype(F32)


def stored_format(dtype: np.dtype, bits_stored: int | None, signed: bool | None) -> tuple[int, bool]:
    """Defaults: all 16 bits, signedness of the dtype."""
    bits = 16 if bits_stored is None else int(bits_stored)
    if not 1 <= bits <= 16:
        raise ValueError(f"bits_stored must be in 1..16, got {bits_stored}")
    sgn = (np.dtype(dtype) == np.int16) if signed is None else bool(signed)
    return bits, sgn


def decode_stored(stored: np.ndarray, bits_stored: int | None = None, signed: bool | None = None) -> np.ndarray:
    """Stored int16/uint16 words -> int32 values: low ``bits_stored`` bits, sign-extended if signed."""
    if stored.dtype not in (np.int16, np.uint16):
        raise TypeError(f"stored values must be int16 or uint16, got {stored.dtype}")
    bits, sgn = stored_format(stored.dtype, bits_stored, signed)
    words = stored.view(np.uint16).astype(np.int32)
    mask = (1 << bits) - 1
    sign_bit = (1 << (bits - 1)) if sgn else 0
    return ((words & mask) ^ sign_bit) - sign_bit


def to_hu(
    stored: np.ndarray,
    slope: float | np.ndarray = 1.0,
    intercept: float | np.ndarray = 0.0,
    bits_stored: int | None = None,
    signed: bool | None = None,
) -> np.ndarray:
    """Stored values (or float32 values) -> float32 HU = float32(value) * slope + intercept."""
    batch = as_batch(stored)
    n = batch.shape[0]
    s = per_slice(slope, n, "slope")[:, None, None]
    b = per_slice(intercept, n, "intercept")[:, None, None]
    if batch.dtype == np.float32:
        if bits_stored is not None or signed is not None:
            raise ValueError("bits_stored/signed apply to integer stored values, not float32 input")
        values = batch
    else:
        values = decode_stored(batch, bits_stored, signed).astype(F32)
    hu = values * s + b
    return hu.reshape(stored.shape)


def hu_minmax(hu: np.ndarray) -> np.ndarray:
    """(N, H, W) float32 HU -> (N, 2) float32 [min, max] per slice."""
    batch = as_batch(hu)
    return np.stack([batch.min(axis=(1, 2)), batch.max(axis=(1, 2))], axis=1).astype(F32)


def calcium_counts(hu: np.ndarray, calcium_threshold_hu: float = 130.0, body_threshold_hu: float = -500.0) -> np.ndarray:
    """Per-slice count of voxels >= calcium threshold whose 4 edge neighbours are > body threshold."""
    batch = as_batch(hu)
    ct, bt = F32(calcium_threshold_hu), F32(body_threshold_hu)
    if batch.shape[1] < 3 or batch.shape[2] < 3:
        return np.zeros(batch.shape[0], np.int32)
    body = batch > bt
    centre = batch[:, 1:-1, 1:-1] >= ct
    cand = centre & body[:, :-2, 1:-1] & body[:, 2:, 1:-1] & body[:, 1:-1, :-2] & body[:, 1:-1, 2:]
    return cand.sum(axis=(1, 2)).astype(np.int32)


def norm_params(minmax: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slice (lo, hi, inv) float32 of the normalisation n = (clip(h, lo, hi) - lo) * inv - 1."""
    n = minmax.shape[0]
    if config.normalisation == "minmax":
        lo = minmax[:, 0].astype(F32)
        hi = minmax[:, 1].astype(F32)
        inv = F32(2.0) / ((hi - lo) + F32(1e-7))
    else:
        wlo, whi = F32(config.window_hu[0]), F32(config.window_hu[1])
        lo = np.full(n, wlo, F32)
        hi = np.full(n, whi, F32)
        inv = np.full(n, F32(2.0) / (whi - wlo), F32)
    return lo, hi, inv.astype(F32)


def normalise(hu: np.ndarray, lo: np.ndarray, hi: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """n = (clip(hu, lo, hi) - lo) * inv - 1 with per-slice float32 lo/hi/inv."""
    batch = as_batch(hu)
    lo3, hi3, inv3 = (np.asarray(v, F32)[:, None, None] for v in (lo, hi, inv))
    t = np.minimum(np.maximum(batch, lo3), hi3)
    return ((t - lo3) * inv3 - F32(1.0)).reshape(hu.shape)


def resample_width(in_size: int, out_size: int, antialias: bool) -> int:
    """Taps per output sample (2 for plain bilinear; 2 * ceil(support) + 1 with antialiasing)."""
    if not antialias:
        return 2
    scale = F32(in_size) / F32(out_size)
    support = scale if scale >= F32(1.0) else F32(1.0)
    return int(np.ceil(support)) * 2 + 1


def resample_taps(in_size: int, out_size: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """(idx int32 (out, width), w float32 (out, width)) of one axis; see preprocess_math.h.

    Half-pixel centres, scale = in / out. Plain bilinear: s = scale * (i + 0.5) - 0.5 clamped at
    0, taps floor(s) and the next pixel (clamped), weights (1 - l, l). Antialiased: triangle of
    half-width max(scale, 1) centred at scale * (i + 0.5), weights normalised to sum 1. Unused taps
    repeat the last index with weight 0.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in={in_size} out={out_size}")
    width = resample_width(in_size, out_size, antialias)
    idx = np.zeros((out_size, width), np.int32)
    w = np.zeros((out_size, width), F32)
    scale = F32(in_size) / F32(out_size)
    one, half = F32(1.0), F32(0.5)
    for i in range(out_size):
        if not antialias:
            src = scale * (F32(i) + half) - half
            if src < 0:
                src = F32(0.0)
            i0 = min(int(np.floor(src)), in_size - 1)
            lam = src - F32(i0)
            lam = min(max(lam, F32(0.0)), one)
            i1 = i0 + (1 if i0 < in_size - 1 else 0)
            idx[i, :] = i1
            idx[i, 0], idx[i, 1] = i0, i1
            w[i, 0], w[i, 1] = one - lam, lam
            continue
        support = scale if scale >= one else one
        invscale = one / scale if scale >= one else one
        center = scale * (F32(i) + half)
        lo = max(int((center - support) + half), 0)
        hi = min(int((center + support) + half), in_size)
        n = min(hi - lo, width)
        if n < 1:
            lo, n = min(int(center), in_size - 1), 1
        total = F32(0.0)
        for j in range(n):
            x = ((F32(lo + j) - center) + half) * invscale
            a = abs(x)
            wj = one - a if a < one else F32(0.0)
            idx[i, j] = lo + j
            w[i, j] = wj
            total = total + wj
        for j in range(n):
            w[i, j] = w[i, j] / total if total != 0 else (one if j == 0 else F32(0.0))
        idx[i, n:] = lo + n - 1
    return idx, w


def resize(image: np.ndarray, size: int | tuple[int, int], antialias: bool = True) -> np.ndarray:
    """(N, H, W) float32 -> (N, oh, ow) float32; separable, vertical taps first, sums in tap order."""
    batch = as_batch(image)
    if batch.dtype != np.float32:
        raise TypeError(f"resize takes float32 images, got {batch.dtype}")
    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    iy, wy = resample_taps(batch.shape[1], oh, antialias)
    ix, wx = resample_taps(batch.shape[2], ow, antialias)
    tmp = wy[None, :, 0, None] * batch[:, iy[:, 0], :]
    for j in range(1, iy.shape[1]):
        tmp = tmp + wy[None, :, j, None] * batch[:, iy[:, j], :]
    out = wx[None, None, :, 0] * tmp[:, :, ix[:, 0]]
    for k in range(1, ix.shape[1]):
        out = out + wx[None, None, :, k] * tmp[:, :, ix[:, k]]
    return out if image.ndim == 3 else out[0]


def preprocess(
    stored: np.ndarray,
    slope: float | np.ndarray = 1.0,
    intercept: float | np.ndarray = 0.0,
    config: PreprocessConfig | None = None,
    bits_stored: int | None = None,
    signed: bool | None = None,
) -> PreprocessResult:
    """Stored slices -> (model input (N,1,S,S), HU min/max (N,2), calcium candidates (N,))."""
    cfg = config or PreprocessConfig()
    batch = as_batch(stored)
    hu = to_hu(batch, slope, intercept, bits_stored, signed)
    nonfinite = ~np.isfinite(hu).all(axis=(1, 2))
    if nonfinite.any():
        raise ValueError(f"slices {np.flatnonzero(nonfinite).tolist()} hold non-finite HU (NaN or inf)")
    mm = hu_minmax(hu)
    counts = calcium_counts(hu, cfg.calcium_threshold_hu, cfg.body_threshold_hu)
    lo, hi, inv = norm_params(mm, cfg)
    normed = normalise(hu, lo, hi, inv)
    resized = resize(normed, cfg.input_size, cfg.antialias)
    resized = np.minimum(np.maximum(resized, F32(-1.0)), F32(1.0))
    model_input = resized.astype(np.dtype(cfg.output_dtype))[:, None]
    return PreprocessResult(model_input, mm, counts)
