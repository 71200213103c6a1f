"""Connected components of calcium in axial slices, fused with per-component statistics (Numba).

Agatston scoring needs, per 2D lesion, only a handful of numbers: pixel count, peak HU, HU sum,
centroid and (with a label volume) a vote of artery labels. So the scoring kernels never build a
label image. One pass per slice, row by row:

1. threshold the row into a byte mask (a vectorised loop; an OR over its words skips empty rows);
2. pack the mask 64 pixels to a word and walk it run by run with count-trailing-zeros (a word of
   background, or of foreground inside a run, costs one test); sum each run's statistics in
   registers (count, HU sum, peak, row/column sums, artery votes);
3. join the run to the previous row's runs it touches (run-based labelling, He et al. 2008): the
   first one lends its provisional label, the others are merged in a union-find forest;
4. after the slice, merge the provisional labels' statistics along the forest in O(labels).

Only two rows of runs are kept (reused int32 buffers) and the HU are read exactly once.

Entry points:

* :func:`label_slice` — the classic label image (pixel-based decision tree of Wu, Otoo & Suzuki
  2009), for callers that need one and for the tests.
* :func:`slice_components` — one slice, serial and ``nogil``: the streaming engine scores a slice
  as soon as its mask arrives, possibly from several threads at once.
* :func:`volume_components` — a whole volume, slices in parallel (``prange`` over workers taking
  interleaved slices) with no Python per slice and no allocation per slice. It prefers Numba's
  workqueue threading layer (no spinning threads on a shared 2-core machine, see
  :func:`_prefer_workqueue_layer`) and serialises parallel calls with a lock (that layer aborts on
  concurrent parallel launches).

Ordering: components of a slice come in the raster order of their first pixel (row-major), slices
in increasing index, so results are deterministic and comparable with other labellers.

Foreground: a pixel is calcium when ``hu >= threshold`` (with float64 semantics, see
:func:`threshold_for`; NaN never is) and, when a label image is given, its label is non-zero.
Components are formed over the foreground whatever non-zero label the pixels carry;
``majority_label`` reports the vote.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload
from numba.cpython.unsafe.numbers import trailing_zeros

#: Number of label values a component can vote for (0 = background, 1..4 = arteries).
N_LABEL_VALUES = 5

_PARALLEL_LOCK = threading.Lock()


def _prefer_workqueue_layer() -> None:
    """Use Numba's workqueue threading layer unless the user chose one (``NUMBA_THREADING_LAYER``) or a
    layer is already running.

    Why: GNU OpenMP (Numba's default pick here) keeps its worker threads spinning after each parallel
    region. On a 2-core workstation that spinning steals the CPU from whatever runs next (decoding,
    inference, the next slice), and measured ~1.4x slower medians under load. The workqueue layer
    sleeps instead. Its one limit, no concurrent parallel launches, is met by ``_PARALLEL_LOCK``.
    """
    import os

    from numba.np.ufunc import parallel

    if "NUMBA_THREADING_LAYER" in os.environ or getattr(parallel, "_is_initialized", True):
        return
    numba.config.THREADING_LAYER = "workqueue"


_prefer_workqueue_layer()  # at import: any numba.get_num_threads() call would start the default layer


@dataclass(frozen=True)
class ComponentTable:
    """Per-component statistics, one row per kept component (slice-major, raster order within a slice).

    Sums are kept instead of means so that nothing is lost: the row/column sums are exact integers.
    ``majority_label`` is the most frequent non-zero label of the component's pixels (ties go to the
    lowest label), or 0 when no label image was given.
    """

    slice_index: np.ndarray  # int32
    n_pixels: np.ndarray  # int64
    peak_hu: np.ndarray  # float64 (the HU of the brightest pixel, exactly as stored)
    sum_hu: np.ndarray  # float64
    sum_row: np.ndarray  # int64, sum of row indices (centroid row = sum_row / n_pixels)
    sum_col: np.ndarray  # int64
    majority_label: np.ndarray  # int8

    def __len__(self) -> int:
        return int(self.slice_index.shape[0])

    @property
    def mean_hu(self) -> np.ndarray:
        return self.sum_hu / self.n_pixels

    @property
    def centroid_row(self) -> np.ndarray:
        return self.sum_row / self.n_pixels

    @property
    def centroid_col(self) -> np.ndarray:
        return self.sum_col / self.n_pixels

    @staticmethod
    def empty() -> ComponentTable:
        return ComponentTable(
            np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.float64),
            np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8),
        )


# --------------------------------------------------------------------------------------------------
# Union-find on provisional labels. Invariant: parent[x] <= x, so a root is the smallest provisional
# label of its component, i.e. the one created at the component's first raster pixel.


@njit(cache=True, nogil=True, inline="always")
def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving keeps parent[x] <= x
        x = parent[x]
    return x


@njit(cache=True, nogil=True, inline="always")
def _union(parent: np.ndarray, a: int, b: int) -> None:
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@njit(cache=True, nogil=True, inline="always")
def _neighbour_label(w: int, nw: int, n: int, ne: int, conn8: bool, parent: np.ndarray) -> int:
    """Label for a foreground pixel from its visited neighbours (0: none, start a new one).

    8-connectivity decision tree: if N is set, it touches W, NW and NE already, so no merge is needed;
    otherwise NW (or W) can only be joined to NE, which is two columns away.
    """
    if conn8:
        if n != 0:
            return n
        if nw != 0:
            if ne != 0:
                _union(parent, nw, ne)
            return nw
        if w != 0:
            if ne != 0:
                _union(parent, w, ne)
            return w
        return ne
    if n != 0:
        if w != 0 and w != n:
            _union(parent, n, w)
        return n
    return w


def _sum_zero(v):
    """Zero of the HU-sum accumulator for a pixel value like v: int64 for integer HU, float64 otherwise.

    Plain Python here; inside the kernels Numba uses the typed overload below (decided at compile time)."""
    return np.int64(0) if isinstance(v, (int, np.integer)) else np.float64(0.0)


def _widen(v):
    """v in the accumulator's type (see _sum_zero)."""
    return np.int64(v) if isinstance(v, (int, np.integer)) else np.float64(v)


@overload(_sum_zero, inline="always")
def _ov_sum_zero(v):
    """Integer HU sum in int64, float HU in float64.

    Why: a float64 sum is one dependent add per pixel (4 cycles of latency); an int64 sum is one cycle
    and vectorises. The result is the same number: a run's sum (at most ``cols`` pixels of |HU| < 2**15)
    and the per-component float64 total stay far below 2**53, below which float64 holds every integer.
    """
    if isinstance(v, types.Integer):
        return lambda v: np.int64(0)
    return lambda v: np.float64(0.0)


@overload(_widen, inline="always")
def _ov_widen(v):
    if isinstance(v, types.Integer):
        return lambda v: np.int64(v)
    return lambda v: np.float64(v)


_PACK = np.uint64(0x0102040810204080)  # (8 bytes of 0/1) * _PACK >> 56 = those 8 bits, byte i -> bit i
_U56 = np.uint64(56)
_ZERO = np.uint64(0)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True, nogil=True, inline="always")
def _add_run(lab, r, c0, c1, row, adj, runs, p, npr, j, q, ncr, parent, nlab, cnt, peak, hsum, srow, scol,
             hist, vote):
    """Sum the run [c0, c1) of row r, join it to the previous row's runs it touches (the first lends
    its label, the others are merged) or give it a new label, and record it in this row's runs.
    Returns the updated (j, nlab): j is the first previous-row run that can touch a later run."""
    s = _sum_zero(row[c0])  # int64 for integer HU: exact, and no float-add latency chain per pixel
    mx = row[c0]
    if lab is None:
        for cc in range(c0, c1):
            v = row[cc]
            s += _widen(v)
            mx = max(mx, v)
    else:
        for t in range(N_LABEL_VALUES):
            vote[t] = 0
        for cc in range(c0, c1):
            v = row[cc]
            s += _widen(v)
            mx = max(mx, v)
            vote[lab[r, cc]] += 1
    while j < npr and runs[p, 1, j] + adj <= c0:
        j += 1
    lbl = 0
    k = j
    while k < npr and runs[p, 0, k] < c1 + adj:
        other = runs[p, 2, k]
        if lbl == 0:
            lbl = other
        elif other != lbl:
            _union(parent, lbl, other)
        k += 1
    if lbl == 0:
        nlab += 1
        lbl = nlab
        parent[lbl] = lbl
        cnt[lbl] = 0
        peak[lbl] = -np.inf
        hsum[lbl] = 0.0
        srow[lbl] = 0
        scol[lbl] = 0
        if lab is not None:
            for t in range(N_LABEL_VALUES):
                hist[lbl, t] = 0
    n = c1 - c0
    cnt[lbl] += n
    fm = np.float64(mx)
    peak[lbl] = max(peak[lbl], fm)
    hsum[lbl] += np.float64(s)
    srow[lbl] += r * n
    scol[lbl] += (c0 + c1 - 1) * n // 2  # exact: one factor is even
    if lab is not None:
        for t in range(N_LABEL_VALUES):
            hist[lbl, t] += vote[t]
    runs[q, 0, ncr] = c0
    runs[q, 1, ncr] = c1
    runs[q, 2, ncr] = lbl
    return j, nlab


@njit(cache=True, nogil=True)
def _scan_slice(hu, lab, thr, conn8, mb, runs, parent, cnt, peak, hsum, srow, scol, hist, vote):
    """Threshold + label + accumulate statistics of one slice; merge them along the forest.

    Run-based: each row is thresholded into a byte mask (a vectorised loop; an OR over its words
    skips an empty row); the bytes are packed 64 to a word (one multiply per 8 bytes) and runs are
    found with count-trailing-zeros, a word of 64 background (or, inside a run, foreground) pixels
    at a time. Each run is joined to the previous row's runs it touches
    (columns [c0 - 1, c1] for 8-connectivity, [c0, c1 - 1] for 4), its statistics summed in registers
    and added to its provisional label once.

    ``lab`` is a uint8 label image or None (threshold mode; the branch is pruned at compile time).
    ``thr`` has the dtype of ``hu`` (see :func:`threshold_for`), so the comparison is exact.
    Buffers: ``mb`` one row of :func:`_row_mask_buffer` (zero past ``cols``); ``runs`` int32
    (2, 3, cols // 2 + 2) for the previous/current row's (start, end, label); ``vote`` int64 (5,);
    the per-label arrays at least rows * ceil(cols / 2) + 1 slots (a run needs a gap before it).
    Returns k: the compacted statistics of the components are in slots 1..k, raster order.
    """
    rows, cols = hu.shape
    n_words = (cols + 63) // 64
    n_bytewords = (cols + 7) // 8
    mw = mb.view(np.uint64)
    p = 0  # runs[p]: previous row's runs; runs[1 - p]: this row's
    npr = 0
    nlab = 0
    adj = 1 if conn8 else 0
    for r in range(rows):
        row = hu[r]
        if lab is None:
            for c in range(cols):
                mb[c] = row[c] >= thr
        else:
            lrow = lab[r]
            for c in range(cols):
                mb[c] = (row[c] >= thr) & (lrow[c] != 0)
        anyfg = _ZERO  # OR of the mask's words (vectorised): an empty row costs nothing more
        for wi in range(n_bytewords):
            anyfg |= mw[wi]
        q = 1 - p
        ncr = 0
        if anyfg != _ZERO:
            j = 0
            in_run = False
            c0 = 0
            for wi in range(n_words):
                if not in_run:  # 64 background pixels: an OR of 8 words, no packing
                    any8 = _ZERO
                    for b in range(8):
                        any8 |= mw[8 * wi + b]
                    if any8 == _ZERO:
                        continue
                bits = _ZERO
                for b in range(8):
                    bits |= ((mw[8 * wi + b] * _PACK) >> _U56) << np.uint64(8 * b)
                if in_run and bits == _ALL:
                    continue
                base = 64 * wi
                pos = 0
                while pos < 64:
                    if not in_run:
                        rest = bits >> np.uint64(pos)
                        if rest == _ZERO:
                            break
                        pos += int(trailing_zeros(rest))
                        c0 = base + pos
                        in_run = True
                    rest = (~bits) >> np.uint64(pos)
                    if rest == _ZERO:
                        break  # the run goes on in the next word
                    pos += int(trailing_zeros(rest))
                    in_run = False
                    j, nlab = _add_run(lab, r, c0, base + pos, row, adj, runs, p, npr, j, q, ncr, parent,
                                       nlab, cnt, peak, hsum, srow, scol, hist, vote)
                    ncr += 1
            if in_run:  # only when cols is a multiple of 64 (the bytes past cols are 0)
                j, nlab = _add_run(lab, r, c0, cols, row, adj, runs, p, npr, j, q, ncr, parent, nlab,
                                   cnt, peak, hsum, srow, scol, hist, vote)
                ncr += 1
        p = q
        npr = ncr

    # Flatten the forest in increasing order (parent[i] < i for non-roots, already final) and move or
    # merge each provisional label's statistics into its final slot, in place (final <= provisional).
    k = 0
    for i in range(1, nlab + 1):
        pa = parent[i]
        if pa == i:
            k += 1
            parent[i] = k
            cnt[k] = cnt[i]
            peak[k] = peak[i]
            hsum[k] = hsum[i]
            srow[k] = srow[i]
            scol[k] = scol[i]
            if lab is not None:
                for t in range(N_LABEL_VALUES):
                    hist[k, t] = hist[i, t]
        else:
            f = parent[pa]
            parent[i] = f
            cnt[f] += cnt[i]
            peak[f] = max(peak[f], peak[i])
            hsum[f] += hsum[i]
            srow[f] += srow[i]
            scol[f] += scol[i]
            if lab is not None:
                for t in range(N_LABEL_VALUES):
                    hist[f, t] += hist[i, t]
    return k


@njit(cache=True, nogil=True, inline="always")
def _majority(hist, f) -> int:
    """Most frequent label 1..4 of component f; ties go to the lowest label; 0 if none."""
    best = 0
    best_n = 0
    for j in range(1, N_LABEL_VALUES):
        if hist[f, j] > best_n:
            best_n = hist[f, j]
            best = j
    return best


@njit(cache=True, nogil=True)
def _row_mask_buffer(n, cols):
    """Row masks for n workers: cols bytes, then zeros up to whole 64-byte words."""
    return np.zeros((n, 64 * ((cols + 63) // 64) + 8), np.uint8)


@njit(cache=True, nogil=True)
def _scratch(rows, cols, with_labels):
    """Scratch buffers of one worker (np.empty: pages are only touched for labels actually used)."""
    bound = rows * ((cols + 1) // 2) + 1
    mb = _row_mask_buffer(1, cols)[0]
    runs = np.empty((2, 3, cols // 2 + 2), np.int32)
    parent = np.empty(bound, np.int32)
    cnt = np.empty(bound, np.int64)
    peak = np.empty(bound, np.float64)
    hsum = np.empty(bound, np.float64)
    srow = np.empty(bound, np.int64)
    scol = np.empty(bound, np.int64)
    hist = np.empty((bound if with_labels else 1, N_LABEL_VALUES), np.int32)
    vote = np.empty(N_LABEL_VALUES, np.int64)
    return mb, runs, parent, cnt, peak, hsum, srow, scol, hist, vote


@njit(cache=True, nogil=True)
def _slice_kernel(hu, lab, thr, conn8, pixel_area, min_area):
    rows, cols = hu.shape
    mb, runs, parent, cnt, peak, hsum, srow, scol, hist, vote = _scratch(rows, cols, lab is not None)
    k = _scan_slice(hu, lab, thr, conn8, mb, runs, parent, cnt, peak, hsum, srow, scol, hist, vote)
    m = 0
    for f in range(1, k + 1):
        if cnt[f] * pixel_area >= min_area:
            m += 1
    o_n = np.empty(m, np.int64)
    o_peak = np.empty(m, np.float64)
    o_sum = np.empty(m, np.float64)
    o_sr = np.empty(m, np.int64)
    o_sc = np.empty(m, np.int64)
    o_lab = np.zeros(m, np.int8)
    m = 0
    for f in range(1, k + 1):
        if cnt[f] * pixel_area >= min_area:
            o_n[m] = cnt[f]
            o_peak[m] = peak[f]
            o_sum[m] = hsum[f]
            o_sr[m] = srow[f]
            o_sc[m] = scol[f]
            if lab is not None:
                o_lab[m] = _majority(hist, f)
            m += 1
    return o_n, o_peak, o_sum, o_sr, o_sc, o_lab


@njit(cache=True, nogil=True, parallel=True)
def _volume_kernel(hu, lab, thr, conn8, pixel_area, min_area, n_workers, cap,
                   o_slice, o_n, o_peak, o_sum, o_sr, o_sc, o_lab, o_count):
    """Slices in parallel: worker w scores slices w, w + n_workers, ... (interleaved, so that Numba's
    static schedule balances the load however the calcium is spread along z) with its own scratch
    buffers, allocated once per call, and writes its kept components to row w of the outputs, tagged
    with the slice index (the caller restores slice order). A worker that finds more than ``cap``
    components keeps counting without writing: the caller reruns with room for all of them."""
    n_slices, rows, cols = hu.shape
    bound = rows * ((cols + 1) // 2) + 1
    nh = bound if lab is not None else 1
    mb = _row_mask_buffer(n_workers, cols)
    runs = np.empty((n_workers, 2, 3, cols // 2 + 2), np.int32)
    parent = np.empty((n_workers, bound), np.int32)
    cnt = np.empty((n_workers, bound), np.int64)
    peak = np.empty((n_workers, bound), np.float64)
    hsum = np.empty((n_workers, bound), np.float64)
    srow = np.empty((n_workers, bound), np.int64)
    scol = np.empty((n_workers, bound), np.int64)
    hist = np.empty((n_workers, nh, N_LABEL_VALUES), np.int32)
    vote = np.empty((n_workers, N_LABEL_VALUES), np.int64)
    for t in prange(n_workers):
        m = 0
        for s in range(t, n_slices, n_workers):
            if lab is not None:
                k = _scan_slice(hu[s], lab[s], thr, conn8, mb[t], runs[t], parent[t], cnt[t], peak[t],
                                hsum[t], srow[t], scol[t], hist[t], vote[t])
            else:
                k = _scan_slice(hu[s], None, thr, conn8, mb[t], runs[t], parent[t], cnt[t], peak[t],
                                hsum[t], srow[t], scol[t], hist[t], vote[t])
            for f in range(1, k + 1):
                if cnt[t, f] * pixel_area >= min_area:
                    if m < cap:
                        o_slice[t, m] = s
                        o_n[t, m] = cnt[t, f]
                        o_peak[t, m] = peak[t, f]
                        o_sum[t, m] = hsum[t, f]
                        o_sr[t, m] = srow[t, f]
                        o_sc[t, m] = scol[t, f]
                        if lab is not None:
                            o_lab[t, m] = _majority(hist[t], f)
                        else:
                            o_lab[t, m] = 0
                    m += 1
        o_count[t] = m


@njit(cache=True, nogil=True)
def _label_image_kernel(mask, conn8):
    rows, cols = mask.shape
    out = np.zeros((rows, cols), np.int32)
    bound = rows * ((cols + 1) // 2) + 1
    parent = np.empty(bound, np.int32)
    nlab = 0
    for r in range(rows):
        for c in range(cols):
            if not mask[r, c]:
                continue
            w = out[r, c - 1] if c > 0 else 0
            nw = out[r - 1, c - 1] if (r > 0 and c > 0) else 0
            n = out[r - 1, c] if r > 0 else 0
            ne = out[r - 1, c + 1] if (r > 0 and c + 1 < cols) else 0
            lbl = _neighbour_label(w, nw, n, ne, conn8, parent)
            if lbl == 0:
                nlab += 1
                lbl = nlab
                parent[lbl] = lbl
            out[r, c] = lbl
    k = 0
    for i in range(1, nlab + 1):
        p = parent[i]
        if p == i:
            k += 1
            parent[i] = k
        else:
            parent[i] = parent[p]
    for r in range(rows):
        for c in range(cols):
            if out[r, c] != 0:
                out[r, c] = parent[out[r, c]]
    return out, k


# --------------------------------------------------------------------------------------------------
# Python entry points: validate, normalise dtypes/layout, call the kernels.


def _check_connectivity(connectivity: int) -> bool:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    return connectivity == 8


def _as_hu(hu: np.ndarray, ndim: int, threshold_hu: float) -> tuple[np.ndarray, np.number]:
    """HU as a C-contiguous array the kernels take, and the threshold in its dtype (see threshold_for).

    float32/float64 pass through; int16 HU (exact CT HU when RescaleSlope is 1 and the intercept an
    integer: half the bytes of float32, so half the memory traffic) passes through when the threshold is
    inside its range; other numeric dtypes become float32 (exact below 2**24) or float64.
    """
    hu = np.asarray(hu)
    if hu.ndim != ndim:
        raise ValueError(f"HU array must be {ndim}D, got shape {hu.shape}")
    if hu.dtype == np.int16 and _int_threshold(threshold_hu, np.int16) is not None:
        return np.ascontiguousarray(hu), _int_threshold(threshold_hu, np.int16)
    if hu.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(hu.dtype, np.integer) or hu.dtype == np.float16):
            raise ValueError(f"HU array must be numeric, got dtype {hu.dtype}")
        if np.issubdtype(hu.dtype, np.integer) and hu.dtype.itemsize > 2:
            hu = hu.astype(np.float64)
        else:
            hu = hu.astype(np.float32)
    return np.ascontiguousarray(hu), threshold_for(hu.dtype, threshold_hu)


def _int_threshold(threshold_hu: float, dtype: type[np.integer]) -> np.integer | None:
    """For integer HU, ``v >= ceil(threshold)`` equals ``float64(v) >= threshold``; None when out of range."""
    thr = float(threshold_hu)
    if not np.isfinite(thr):
        raise ValueError(f"threshold must be a finite HU value, got {threshold_hu!r}")
    t = int(np.ceil(thr))
    info = np.iinfo(dtype)
    return dtype(t) if info.min <= t <= info.max else None


def threshold_for(dtype: np.dtype, threshold_hu: float) -> np.floating:
    """The threshold in the HU array's own dtype such that ``v >= t`` equals ``float64(v) >= threshold``.

    For float32 HU that is the smallest float32 not below the threshold, so the kernels compare in
    float32 (no conversion per pixel) with exactly the float64 semantics. (Integer HU: see _int_threshold.)
    """
    thr = float(threshold_hu)
    if not np.isfinite(thr):
        raise ValueError(f"threshold must be a finite HU value, got {threshold_hu!r}")
    if dtype == np.float64:
        return np.float64(thr)
    t32 = np.float32(thr)
    if float(t32) < thr:
        t32 = np.nextafter(t32, np.float32(np.inf))
    return t32


def _as_labels(labels: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Label image as C-contiguous uint8 with values 0..4 (anything else is rejected, not guessed)."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != shape:
        raise ValueError(f"label array shape {labels.shape} differs from the HU array shape {shape}")
    if labels.dtype == np.bool_:  # True would silently become label 1 (LM): refuse rather than guess
        raise ValueError("labels must be integer artery labels (0 background, 1..4 arteries), got a boolean "
                         "mask; use labels.astype(np.uint8) * ARTERY_LABEL[artery] to give it an artery")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array (0 background, 1..4 arteries), got {labels.dtype}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= N_LABEL_VALUES:
            raise ValueError(f"labels must lie in 0..{N_LABEL_VALUES - 1} (0 background, 1..4 arteries), "
                             f"found values in [{lo}, {hi}]")
    return np.ascontiguousarray(labels, dtype=np.uint8)


def label_slice(mask2d: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label the connected components of a 2D boolean mask.

    Returns ``(labels, n)``: int32 labels 1..n in the raster order of each component's first pixel,
    0 for background.
    """
    conn8 = _check_connectivity(connectivity)
    mask = np.asarray(mask2d)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {mask.shape}")
    mask = np.ascontiguousarray(mask != 0)
    out, n = _label_image_kernel(mask, conn8)
    return out, int(n)


def slice_components(
    hu2d: np.ndarray,
    labels2d: np.ndarray | None,
    threshold_hu: float,
    connectivity: int,
    pixel_area_mm2: float,
    min_area_mm2: float,
    slice_index: int = 0,
) -> ComponentTable:
    """Components of one slice whose area ``n_pixels * pixel_area_mm2 >= min_area_mm2`` (float64).

    Serial and GIL-free: safe to call from several threads at once (the streaming engine does).
    """
    conn8 = _check_connectivity(connectivity)
    hu, thr = _as_hu(hu2d, 2, threshold_hu)
    lab = _as_labels(labels2d, hu.shape)
    n, peak, hsum, sr, sc, maj = _slice_kernel(hu, lab, thr, conn8,
                                               float(pixel_area_mm2), float(min_area_mm2))
    return ComponentTable(np.full(n.shape[0], slice_index, np.int32), n, peak, hsum, sr, sc, maj)


def volume_components(
    hu: np.ndarray,
    labels: np.ndarray | None,
    threshold_hu: float,
    connectivity: int,
    pixel_area_mm2: float,
    min_area_mm2: float,
    n_threads: int | None = None,
) -> ComponentTable:
    """Components of every slice of a (slices, rows, cols) volume, slices scored in parallel.

    ``n_threads``: Numba threads to use (default: all of Numba's threads).
    """
    conn8 = _check_connectivity(connectivity)
    hu, thr = _as_hu(hu, 3, threshold_hu)
    lab = _as_labels(labels, hu.shape)
    n_slices = hu.shape[0]
    if n_slices == 0 or hu.shape[1] == 0 or hu.shape[2] == 0:
        return ComponentTable.empty()
    threads = numba.get_num_threads() if n_threads is None else int(n_threads)
    threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    n_workers = min(threads, n_slices)
    cap = 64 * -(-n_slices // n_workers) + 256  # kept components per worker, first guess
    with _PARALLEL_LOCK:
        old_threads = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            while True:
                out = _alloc_outputs(n_workers, cap)
                _volume_kernel(hu, lab, thr, conn8, float(pixel_area_mm2), float(min_area_mm2), n_workers,
                               cap, *out)
                needed = int(out[-1].max())
                if needed <= cap:
                    break
                cap = needed  # rare: more kept components than guessed; rerun with the exact room
        finally:
            numba.set_num_threads(old_threads)
    return _gather(out, n_workers)


def _alloc_outputs(n_workers: int, cap: int) -> tuple[np.ndarray, ...]:
    return (
        np.empty((n_workers, cap), np.int32), np.empty((n_workers, cap), np.int64),
        np.empty((n_workers, cap), np.float64), np.empty((n_workers, cap), np.float64),
        np.empty((n_workers, cap), np.int64), np.empty((n_workers, cap), np.int64),
        np.empty((n_workers, cap), np.int8), np.zeros(n_workers, np.int64),
    )


def _gather(out: tuple[np.ndarray, ...], n_workers: int) -> ComponentTable:
    """Concatenate the workers' rows and restore slice order (stable: a slice is scored by one worker,
    so its components stay in raster order)."""
    counts = out[-1]
    cols = [np.concatenate([a[w, : counts[w]] for w in range(n_workers)]) for a in out[:-1]]
    order = np.argsort(cols[0], kind="stable")
    cols = [c[order] for c in cols]
    return ComponentTable(*cols)


def warmup() -> float:
    """Compile (or load from Numba's on-disk cache) the kernels the engine uses: float32 and int16 HU
    (what ``read_volume`` returns), with and without labels. Other dtypes (float64) compile on first use.

    Returns the seconds it took, so that benchmarks report first-call compilation separately.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    hu = (rng.random((2, 5, 6)) * 400).astype(np.float32)
    lab = rng.integers(0, N_LABEL_VALUES, size=hu.shape).astype(np.uint8)
    for h in (hu, np.rint(hu).astype(np.int16)):  # float32 and exact-integer int16 HU (read_volume)
        volume_components(h, None, 130.0, 8, 1.0, 0.0)
        volume_components(h, lab, 130.0, 8, 1.0, 0.0)
        slice_components(h[0], None, 130.0, 8, 1.0, 0.0)
        slice_components(h[0], lab[0], 130.0, 8, 1.0, 0.0)
    label_slice(np.ones((3, 3), bool), 8)
    return time.perf_counter() - t0
