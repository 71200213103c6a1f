"""The numpy reference (cacstream.kernels.reference) against independent expectations.

Hand-computed stored-value decodes, float64 formulas of the paper's normalisation, scipy's binary
erosion for the calcium-candidate rule, and torch's F.interpolate for the resampling convention.
The C++ and CUDA kernels are then tested against this reference (test_kernels_cpu/gpu.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from cacstream.kernels import PreprocessConfig, reference

torch = pytest.importorskip("torch")
F = torch.nn.functional


# ------------------------------------------------------------------------------------------------
# stored value -> HU
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("word", "dtype", "bits", "signed", "expected"),
    [
        (0x0123, np.uint16, 12, False, 0x123),
        (0xF123, np.uint16, 12, False, 0x123),  # garbage above BitsStored is ignored
        (0x0FFF, np.uint16, 12, True, -1),  # 12-bit two's complement
        (0x0800, np.uint16, 12, True, -2048),
        (0x07FF, np.uint16, 12, True, 2047),
        (0xA800, np.uint16, 12, True, -2048),  # garbage + sign bit
        (0xFFFF, np.uint16, 16, False, 65535),
        (0x8000, np.uint16, 16, True, -32768),
        (-32768, np.int16, 16, True, -32768),
        (32767, np.int16, 16, True, 32767),
        (-1, np.int16, 16, False, 65535),  # an int16 array read as unsigned words
        (-1, np.int16, 12, True, -1),
        (0x7000, np.int16, 12, True, 0),  # high garbage, low 12 bits zero
    ],
)
def test_decode_stored_hand_cases(word: int, dtype: type, bits: int, signed: bool, expected: int) -> None:
    stored = np.array([[word]], dtype=np.int64).astype(dtype)
    assert reference.decode_stored(stored, bits, signed)[0, 0] == expected


def test_decode_defaults_follow_the_dtype() -> None:
    assert reference.decode_stored(np.array([[-5]], np.int16))[0, 0] == -5
    assert reference.decode_stored(np.array([[65531]], np.uint16))[0, 0] == 65531


def test_to_hu_matches_float64_formula() -> None:
    rng = np.random.default_rng(1)
    stored = rng.integers(-2000, 3000, (3, 17, 19)).astype(np.int16)
    # slope 1 and integer intercept (every CT scanner): exact
    hu = reference.to_hu(stored, 1.0, -1024.0)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, (stored.astype(np.float64) - 1024.0).astype(np.float32))
    # per-slice, non-trivial slopes: float32 slope/intercept and two float32 roundings, so the
    # error is within a few float32 epsilons of the operands' magnitudes
    slopes, intercepts = np.array([0.5, 1.25, 0.3701]), np.array([-1024.0, -1000.5, 7.3])
    hu = reference.to_hu(stored, slopes, intercepts)
    prod = stored * slopes[:, None, None]
    exact = prod + intercepts[:, None, None]
    bound = 3 * np.finfo(np.float32).eps * (np.abs(prod) + np.abs(intercepts[:, None, None]))
    assert np.all(np.abs(hu - exact) <= bound)


def test_to_hu_rejects_bad_rescale_and_float_bits() -> None:
    stored = np.zeros((2, 4, 4), np.int16)
    with pytest.raises(ValueError, match="slope"):
        reference.to_hu(stored, [1.0, 2.0, 3.0], 0.0)
    with pytest.raises(ValueError, match="finite"):
        reference.to_hu(stored, float("nan"), 0.0)
    with pytest.raises(ValueError, match="overflows"):
        reference.to_hu(stored, 1e38, 0.0)
    with pytest.raises(ValueError, match="bits_stored"):
        reference.to_hu(np.zeros((4, 4), np.float32), 1.0, 0.0, bits_stored=12)


def test_reference_to_hu_agrees_with_series_reader(coca_root) -> None:
    """The series engineer's numpy to_hu (engine.series) and this one must agree on real files."""
    series = pytest.importorskip("cacstream.engine.series")
    if not hasattr(series, "to_hu") or not hasattr(series, "read_header"):
        pytest.skip("cacstream.engine.series.to_hu / read_header not written yet (issue 2)")
    files = sorted((coca_root / "Gated_release_final" / "patient" / "0").rglob("*.dcm"))[:3]
    assert files, "no COCA DICOM files found"
    for path in files:
        header = series.read_header(path)[0]
        stored = series.decode_stored(header)
        ours = reference.to_hu(stored, header.rescale_slope, header.rescale_intercept,
                               bits_stored=header.bits_stored, signed=bool(header.pixel_representation))
        theirs = series.to_hu(stored, header)
        np.testing.assert_array_equal(ours, np.asarray(theirs, np.float32))  # slope 1: exact


# ------------------------------------------------------------------------------------------------
# statistics and calcium candidates
# ------------------------------------------------------------------------------------------------
def test_hu_minmax() -> None:
    rng = np.random.default_rng(2)
    hu = rng.normal(0, 500, (4, 9, 11)).astype(np.float32)
    mm = reference.hu_minmax(hu)
    np.testing.assert_array_equal(mm[:, 0], [s.min() for s in hu])
    np.testing.assert_array_equal(mm[:, 1], [s.max() for s in hu])


def _counts_scipy(hu: np.ndarray, ct: float, bt: float) -> np.ndarray:
    cross = ndi.generate_binary_structure(2, 1)
    out = []
    for s in hu:
        inside = ndi.binary_erosion(s > bt, structure=cross, border_value=0)  # all 4 neighbours + self
        out.append(int(np.count_nonzero((s >= ct) & inside)))
    return np.array(out)


def test_calcium_counts_match_scipy_erosion() -> None:
    rng = np.random.default_rng(3)
    hu = rng.choice(np.array([-1000, -800, -100, 40, 129.9, 130, 131, 400, 1200], np.float32), (5, 23, 31))
    np.testing.assert_array_equal(reference.calcium_counts(hu, 130.0, -500.0), _counts_scipy(hu, 130.0, -500.0))


def test_calcium_counts_hand_cases() -> None:
    s = np.full((7, 7), 40.0, np.float32)  # soft tissue
    s[3, 3] = 400.0  # a calcification inside tissue: counts
    s[0, 2] = 400.0  # on the border: never counts
    s[5, 5] = 400.0
    s[5, 6] = -1000.0  # next to air: dropped
    s[1, 5] = 130.0  # exactly at threshold: counts
    assert reference.calcium_counts(s[None], 130.0, -500.0).tolist() == [2]
    assert reference.calcium_counts(np.full((1, 2, 9), 500.0, np.float32)).tolist() == [0]  # no interior


# ------------------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------------------
def test_minmax_normalisation_is_the_paper_formula() -> None:
    rng = np.random.default_rng(4)
    hu = rng.uniform(-1024, 3000, (3, 32, 32)).astype(np.float32)
    cfg = PreprocessConfig()
    lo, hi, inv = reference.norm_params(reference.hu_minmax(hu), cfg)
    got = reference.normalise(hu, lo, hi, inv)
    h64 = hu.astype(np.float64)
    mn, mx = h64.min(axis=(1, 2), keepdims=True), h64.max(axis=(1, 2), keepdims=True)
    paper = (h64 - mn) / (mx - mn + 1e-7) * 2 - 1  # DINO-LG §4.1
    np.testing.assert_allclose(got, paper, atol=1e-6, rtol=0)
    assert got.min() == -1.0 and 0.9999 < got.max() <= 1.0


def test_window_normalisation_and_constant_slice() -> None:
    hu = np.array([[[-3000.0, -1024.0, 0.0, 3071.0, 5000.0]]], np.float32)
    cfg = PreprocessConfig(normalisation="window", window_hu=(-1024.0, 3071.0))
    lo, hi, inv = reference.norm_params(reference.hu_minmax(hu), cfg)
    expected = (np.clip(hu.astype(np.float64), -1024, 3071) + 1024) / 4095 * 2 - 1
    np.testing.assert_allclose(reference.normalise(hu, lo, hi, inv), expected, atol=1e-6)
    const = np.full((1, 5, 5), 37.0, np.float32)
    lo, hi, inv = reference.norm_params(reference.hu_minmax(const), PreprocessConfig())
    assert np.all(reference.normalise(const, lo, hi, inv) == -1.0)  # (I - min) / eps * 2 - 1


# ------------------------------------------------------------------------------------------------
# resampling convention
# ------------------------------------------------------------------------------------------------
def test_bilinear_taps_hand_computed() -> None:
    idx, w = reference.resample_taps(4, 2, antialias=False)  # half-pixel centres: s = 2 (i + .5) - .5
    np.testing.assert_array_equal(idx, [[0, 1], [2, 3]])
    np.testing.assert_array_equal(w, [[0.5, 0.5], [0.5, 0.5]])
    idx, w = reference.resample_taps(5, 5, antialias=False)  # identity: weight 1 on the pixel itself
    np.testing.assert_array_equal(idx[:, 0], np.arange(5))
    np.testing.assert_array_equal(w[:, 0], np.ones(5))
    idx, w = reference.resample_taps(2, 4, antialias=False)  # upsampling clamps at both edges
    np.testing.assert_array_equal(idx, [[0, 1], [0, 1], [0, 1], [1, 1]])
    np.testing.assert_allclose(w, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0.75, 0.25]])


@pytest.mark.parametrize(("n_in", "n_out"), [(512, 224), (333, 224), (100, 224), (224, 224), (7, 3), (1, 5)])
@pytest.mark.parametrize("antialias", [True, False])
def test_taps_are_normalised_and_in_range(n_in: int, n_out: int, antialias: bool) -> None:
    idx, w = reference.resample_taps(n_in, n_out, antialias)
    assert idx.min() >= 0 and idx.max() < n_in
    assert w.min() >= 0
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=2e-7 * w.shape[1])


@pytest.mark.parametrize(
    ("shape", "size"),
    [((512, 512), (224, 224)), ((333, 300), (224, 224)), ((100, 80), (224, 224)), ((300, 200), (224, 160)),
     ((31, 17), (8, 9))],
)
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_matches_torch_interpolate(shape: tuple[int, int], size: tuple[int, int], antialias: bool) -> None:
    """The stated convention is torch's: F.interpolate(mode="bilinear", align_corners=False)."""
    rng = np.random.default_rng(5)
    img = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    ours = reference.resize(img, size, antialias)
    theirs = F.interpolate(torch.from_numpy(img)[:, None], size=size, mode="bilinear", align_corners=False,
                           antialias=antialias)[:, 0].numpy()
    # torch's CPU kernel evaluates the source coordinate scale * (i + .5) - .5 with a fused
    # multiply-add, ours with two roundings (so CPU, GPU and numpy agree bit for bit): the weight
    # can differ by one ulp of the coordinate, i.e. the value by ulp(size) per axis (values in [-1, 1]).
    tol = 2e-6 if antialias else 2e-6 + 4 * float(np.spacing(np.float32(max(shape))))
    np.testing.assert_allclose(ours, theirs, atol=tol, rtol=0)


def test_preprocess_matches_an_independent_torch_pipeline() -> None:
    rng = np.random.default_rng(6)
    stored = rng.integers(0, 4096, (3, 128, 96)).astype(np.uint16)
    for cfg in (PreprocessConfig(input_size=64), PreprocessConfig(input_size=64, normalisation="window",
                                                                   antialias=False, output_dtype="float16")):
        res = reference.preprocess(stored, 1.0, -1024.0, cfg)
        hu = torch.from_numpy(stored.astype(np.float64) - 1024.0)
        if cfg.normalisation == "minmax":
            mn, mx = hu.amin(dim=(1, 2), keepdim=True), hu.amax(dim=(1, 2), keepdim=True)
            norm = (hu - mn) / (mx - mn + 1e-7) * 2 - 1
        else:
            lo, hi = cfg.window_hu
            norm = (hu.clamp(lo, hi) - lo) / (hi - lo) * 2 - 1
        want = F.interpolate(norm[:, None], size=(64, 64), mode="bilinear", align_corners=False,
                             antialias=cfg.antialias).clamp(-1, 1).numpy()
        tol = 1e-3 if cfg.output_dtype == "float16" else 1e-5  # float16 half-ulp near 1 is 2.4e-4
        assert res.model_input.dtype == np.dtype(cfg.output_dtype) and res.model_input.shape == (3, 1, 64, 64)
        np.testing.assert_allclose(res.model_input.astype(np.float64), want, atol=tol, rtol=0)
        np.testing.assert_array_equal(res.hu_minmax, np.stack([hu.amin(dim=(1, 2)), hu.amax(dim=(1, 2))], 1))


def test_antialias_keeps_every_one_pixel_calcification() -> None:
    """Why antialias is the default: at 512→224 a 1-pixel bright spot reaches the model input
    wherever it falls with antialiasing, and vanishes for some positions without it."""
    peaks = {True: [], False: []}
    for y in range(200, 205):
        for x in range(300, 305):
            img = np.zeros((1, 512, 512), np.float32)
            img[0, y, x] = 1.0
            for aa in (True, False):
                peaks[aa].append(float(reference.resize(img, 224, aa).max()))
    assert min(peaks[True]) > 0.04
    assert min(peaks[False]) == 0.0
