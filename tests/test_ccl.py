"""Numba connected components (engine/scoring/ccl.py) against scipy.ndimage written here.

The reference labels with ``scipy.ndimage.label`` (structure for 4/8) and computes every per-component
statistic with numpy over the label image, so it shares nothing with the Numba run-based scan.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cacstream.engine.scoring import ccl

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def structure(connectivity: int) -> np.ndarray:
    return ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)


def reference_components(hu2d, labels2d, threshold, connectivity, pixel_area, min_area):
    """Rows (n, peak, sum_hu, sum_row, sum_col, majority, first_pixel) of kept components, raster order."""
    h = np.asarray(hu2d, dtype=np.float64)
    mask = h >= threshold
    if labels2d is not None:
        mask &= np.asarray(labels2d) > 0
    lab, n = ndimage.label(mask, structure=structure(connectivity))
    rows = []
    rr, cc = np.indices(h.shape)
    for i in range(1, n + 1):
        sel = lab == i
        k = int(sel.sum())
        if not k * pixel_area >= min_area:
            continue
        if labels2d is None:
            maj = 0
        else:
            votes = [int(((np.asarray(labels2d) == a) & sel).sum()) for a in range(1, 5)]
            maj = 1 + int(np.argmax(votes))  # first maximum = lowest label
        first = int(np.flatnonzero(sel.ravel())[0])
        rows.append((k, float(h[sel].max()), float(h[sel].sum()), int(rr[sel].sum()), int(cc[sel].sum()), maj,
                     first))
    rows.sort(key=lambda t: t[-1])
    return rows


def assert_table_matches(table: ccl.ComponentTable, ref, slice_index=None):
    assert len(table) == len(ref)
    for i, (k, peak, hsum, sr, sc, maj, _first) in enumerate(ref):
        if slice_index is not None:
            assert table.slice_index[i] == slice_index
        assert table.n_pixels[i] == k
        assert table.peak_hu[i] == peak
        assert table.sum_hu[i] == pytest.approx(hsum, rel=1e-12, abs=1e-9)
        assert table.sum_row[i] == sr
        assert table.sum_col[i] == sc
        assert table.majority_label[i] == maj


# ------------------------------------------------------------------------------------------------
# strategies: random masks plus adversarial shapes


def _pattern(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    r, c = np.indices((h, w))
    if kind == "checker":
        return (r + c) % 2 == 0
    if kind == "diagonal":  # 8-connected chains that are 4-disconnected
        return (r - c) % 3 == 0
    if kind == "antidiagonal":
        return (r + c) % 4 == 0
    if kind == "full":
        return np.ones((h, w), bool)
    if kind == "border":
        m = np.zeros((h, w), bool)
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
        return m
    if kind == "comb":  # U-shapes / combs: teeth joined only at the bottom, labels must merge late
        m = np.zeros((h, w), bool)
        m[:, ::2] = True
        m[-1, :] = True
        return m
    if kind == "spiral":
        m = np.zeros((h, w), bool)
        top, left, bottom, right = 0, 0, h - 1, w - 1
        while top <= bottom and left <= right:
            m[top, left:right + 1] = True
            m[top:bottom + 1, right] = True
            if bottom - top >= 2:
                m[bottom, left:right + 1] = True
            if right - left >= 2:
                m[top + 2:bottom + 1, left] = True
            top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        return m
    if kind == "w_merge":  # many runs that join on the next row, right to left
        m = np.zeros((h, w), bool)
        m[::2, ::2] = True
        m[1::2, :] = rng.random((m[1::2].shape[0], w)) < 0.7
        return m
    return rng.random((h, w)) < rng.uniform(0.05, 0.95)


KINDS = ["random", "checker", "diagonal", "antidiagonal", "full", "border", "comb", "spiral", "w_merge"]
HU_VALUES = np.array([-1000, 0, 129, 129.5, 130, 131, 199, 199.5, 200, 250, 299, 300, 399, 400, 1500],
                     np.float32)


@st.composite
def slices(draw):
    h = draw(st.integers(1, 24))
    w = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(KINDS))
    rng = np.random.default_rng(seed)
    mask = _pattern(kind, h, w, rng)
    hu = rng.choice(HU_VALUES[HU_VALUES >= 130], size=(h, w))
    hu = np.where(mask, hu, rng.choice(HU_VALUES[HU_VALUES < 130], size=(h, w))).astype(np.float32)
    labels = None
    if draw(st.booleans()):
        labels = rng.integers(0, 5, size=(h, w)).astype(np.uint8)
        if draw(st.booleans()):  # mostly-labelled: big lesions with mixed arteries
            labels = np.where(rng.random((h, w)) < 0.9, rng.integers(1, 5, size=(h, w)), 0).astype(np.uint8)
    return hu, labels


# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(data=slices(), connectivity=st.sampled_from([4, 8]))
def test_label_slice_equals_scipy(data, connectivity):
    hu, _ = data
    mask = hu >= 130
    ours, n = ccl.label_slice(mask, connectivity)
    ref, n_ref = ndimage.label(mask, structure=structure(connectivity))
    assert n == n_ref
    # same partition, numbered in the raster order of each component's first pixel
    _, first = np.unique(ref.ravel(), return_index=True)
    order = ref.ravel()[np.sort(first)]
    order = order[order > 0]
    remap = np.zeros(n_ref + 1, np.int64)
    remap[order] = np.arange(1, n_ref + 1)
    assert np.array_equal(ours, remap[ref])
    assert ours.dtype == np.int32


@SETTINGS
@given(data=slices(), connectivity=st.sampled_from([4, 8]),
       min_pixels=st.sampled_from([0, 1, 2, 3, 5]),
       spacing=st.sampled_from([(0.5, 0.5), (0.3, 0.7), (1.0, 1.0)]))
def test_slice_components_equal_reference(data, connectivity, min_pixels, spacing):
    hu, labels = data
    pixel_area = spacing[0] * spacing[1]
    min_area = min_pixels * pixel_area  # exactly at a pixel count: the inclusive bound is exercised
    table = ccl.slice_components(hu, labels, 130.0, connectivity, pixel_area, min_area, slice_index=7)
    ref = reference_components(hu, labels, 130.0, connectivity, pixel_area, min_area)
    assert_table_matches(table, ref, slice_index=7)


@settings(max_examples=60, deadline=None)
@given(n_slices=st.integers(1, 7), data=st.data(), connectivity=st.sampled_from([4, 8]),
       n_threads=st.sampled_from([1, 2, 3]))
def test_volume_components_equal_per_slice_reference(n_slices, data, connectivity, n_threads):
    first_hu, first_lab = data.draw(slices())
    h, w = first_hu.shape
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    more = [rng.choice(HU_VALUES, size=(h, w)).astype(np.float32) for _ in range(n_slices - 1)]
    hu = np.stack([first_hu] + more)
    labels = None if first_lab is None else rng.integers(0, 5, size=hu.shape).astype(np.uint8)
    if labels is not None:
        labels[0] = first_lab
    table = ccl.volume_components(hu, labels, 130.0, connectivity, 0.25, 0.5, n_threads=n_threads)
    ref = []
    for s in range(n_slices):
        ref += [(s,) + row for row in reference_components(hu[s], None if labels is None else labels[s],
                                                          130.0, connectivity, 0.25, 0.5)]
    assert len(table) == len(ref)
    assert table.slice_index.tolist() == [r[0] for r in ref]
    assert table.n_pixels.tolist() == [r[1] for r in ref]
    assert table.peak_hu.tolist() == [r[2] for r in ref]
    assert table.sum_row.tolist() == [r[4] for r in ref]
    assert table.sum_col.tolist() == [r[5] for r in ref]
    assert table.majority_label.tolist() == [r[6] for r in ref]
    np.testing.assert_allclose(table.sum_hu, [r[3] for r in ref], rtol=1e-12)


@pytest.mark.parametrize("cols", [63, 64, 65, 127, 128, 129, 200])
@pytest.mark.parametrize("connectivity", [4, 8])
def test_wide_rows_with_runs_across_64_pixel_words(cols, connectivity):
    """The kernel packs each row 64 pixels to a word: runs that cross, fill or end at word borders."""
    rng = np.random.default_rng(cols * 10 + connectivity)
    rows = 12
    mask = rng.random((rows, cols)) < 0.5
    mask[0, :] = True  # a full row
    mask[1, 60:70] = True  # a run across the first border
    mask[2, cols - 1] = True  # the last pixel alone
    mask[3, : cols // 2] = False
    mask[3, cols // 2:] = True  # a run to the end of the row
    mask[4] = np.arange(cols) % 64 == 63  # word-final pixels
    mask[5] = np.arange(cols) % 64 == 0  # word-initial pixels
    hu = np.where(mask, rng.choice(HU_VALUES[HU_VALUES >= 130], size=mask.shape), -10).astype(np.float32)
    labels = rng.integers(1, 5, size=mask.shape).astype(np.uint8)
    for lab in (None, labels):
        table = ccl.slice_components(hu, lab, 130.0, connectivity, 1.0, 0.0)
        assert_table_matches(table, reference_components(hu, lab, 130.0, connectivity, 1.0, 0.0))
        lab2 = None if lab is None else np.stack([lab, lab[::-1]])
        vol = ccl.volume_components(np.stack([hu, hu[::-1]]), lab2, 130.0, connectivity, 1.0, 0.0)
        assert len(vol) == 2 * len(table)


def test_volume_overflowing_the_first_guess_is_rerun_exactly():
    """4-connected checkerboards with no minimum area: 2,048 components per slice, far above the
    kernel's first output guess, so the exact-size rerun path runs."""
    r, c = np.indices((64, 64))
    hu = np.where((r + c) % 2 == 0, 300.0, 0.0).astype(np.float32)
    vol = np.stack([hu, np.roll(hu, 1, axis=1), hu])
    table = ccl.volume_components(vol, None, 130.0, 4, 1.0, 0.0)
    assert len(table) == 3 * 2048
    assert np.all(table.n_pixels == 1)
    assert np.array_equal(np.bincount(table.slice_index), [2048, 2048, 2048])
    # 8-connectivity: the diagonal neighbours join the whole checkerboard into one component per slice
    table8 = ccl.volume_components(vol, None, 130.0, 8, 1.0, 0.0)
    assert len(table8) == 3


def test_threshold_compares_exactly_in_float64():
    """float32 HU against thresholds that are not float32 numbers: v >= t must be exact."""
    v = np.float32(130.0)
    below = np.nextafter(v, np.float32(0))
    hu = np.array([[v, 0, below]], np.float32)
    assert len(ccl.slice_components(hu, None, 130.0, 8, 1.0, 0.0)) == 1
    assert float(below) < 129.99999999  # float32 spacing near 130 is ~1.5e-5
    assert len(ccl.slice_components(hu, None, 129.99999999, 8, 1.0, 0.0)) == 1
    assert len(ccl.slice_components(hu, None, float(below), 8, 1.0, 0.0)) == 2
    assert len(ccl.slice_components(hu, None, 130.00000001, 8, 1.0, 0.0)) == 0
    assert len(ccl.slice_components(hu.astype(np.float64), None, 130.00000001, 8, 1.0, 0.0)) == 0


def test_nan_is_never_calcium_and_int16_is_accepted():
    hu = np.array([[np.nan, 500, np.nan], [0, 500, 0]], np.float32)
    t = ccl.slice_components(hu, None, 130.0, 8, 1.0, 0.0)
    assert t.n_pixels.tolist() == [2]
    t16 = ccl.slice_components(np.array([[300, -1000], [131, 129]], np.int16), None, 130.0, 4, 1.0, 0.0)
    assert t16.n_pixels.tolist() == [2] and t16.peak_hu.tolist() == [300.0]


def test_bad_inputs_are_rejected_with_a_message():
    hu = np.zeros((2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="connectivity"):
        ccl.volume_components(hu, None, 130.0, 6, 1.0, 0.0)
    with pytest.raises(ValueError, match="0..4"):
        ccl.volume_components(hu, np.full(hu.shape, 7, np.uint8), 130.0, 8, 1.0, 0.0)
    with pytest.raises(ValueError, match="boolean"):
        ccl.volume_components(hu, np.ones(hu.shape, bool), 130.0, 8, 1.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        ccl.volume_components(hu, np.zeros((2, 3, 4), np.uint8), 130.0, 8, 1.0, 0.0)
    with pytest.raises(ValueError, match="3D"):
        ccl.volume_components(hu[0], None, 130.0, 8, 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        ccl.slice_components(hu[0], None, float("nan"), 8, 1.0, 0.0)
    with pytest.raises(ValueError, match="numeric"):
        ccl.slice_components(np.zeros((2, 2), dtype="U3"), None, 130.0, 8, 1.0, 0.0)
    assert len(ccl.volume_components(np.zeros((0, 4, 4), np.float32), None, 130.0, 8, 1.0, 0.0)) == 0


def test_slice_components_are_thread_safe():
    """The streaming engine scores slices from several threads at once (nogil kernels)."""
    rng = np.random.default_rng(3)
    vol = rng.choice(HU_VALUES, size=(16, 48, 48)).astype(np.float32)
    expected = [ccl.slice_components(vol[s], None, 130.0, 8, 0.25, 1.0) for s in range(16)]
    results: dict[int, ccl.ComponentTable] = {}

    def work(s: int) -> None:
        for _ in range(20):
            results[s] = ccl.slice_components(vol[s], None, 130.0, 8, 0.25, 1.0)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in range(16):
        assert np.array_equal(results[s].n_pixels, expected[s].n_pixels)
        assert np.array_equal(results[s].sum_hu, expected[s].sum_hu)


def test_warmup_reports_seconds():
    assert ccl.warmup() >= 0.0
