"""C++ twins (cacstream.kernels._cpu via the dispatch) against the numpy reference.

The stated tolerance is zero: the C++ code performs the reference's float32 operations in the same
order (no FMA, no fast-math), so every output is compared with ``np.array_equal`` (value for value;
the AVX2 resampler skips zero-weight padding taps, which could only flip the sign of an exact 0) — on random
slices, edge cases and real COCA slices, for every kernel build the CPU can run ('base' = any
x86-64, 'avx2' = AVX2 + F16C). float16 rounding is checked bit for bit against numpy's cast.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cacstream.kernels import (
    PreprocessConfig,
    calcium_counts,
    cpu_backend,
    hu_minmax,
    normalise,
    preprocess,
    reference,
    resize,
    to_hu,
)

_cpu = cpu_backend.extension()
ISAS = _cpu.available_isas()

CONFIGS = [
    PreprocessConfig(input_size=48),
    PreprocessConfig(input_size=48, antialias=False, output_dtype="float16"),
    PreprocessConfig(input_size=40, normalisation="window", window_hu=(-200.0, 600.0), output_dtype="float16"),
    PreprocessConfig(input_size=160, calcium_threshold_hu=200.0, body_threshold_hu=-300.0),  # upsampling
]


def _raw_preprocess(stored: np.ndarray, slope, intercept, cfg: PreprocessConfig, isa: str, bits=16, signed=None,
                    threads: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Call the extension directly so that a given kernel build (ISA) is exercised."""
    n = stored.shape[0]
    sgn = stored.dtype == np.int16 if signed is None else signed
    out = np.empty((n, 1, cfg.input_size, cfg.input_size), cfg.output_dtype)
    mm, counts, bad = np.empty((n, 2), np.float32), np.empty(n, np.int32), np.empty(n, np.int32)
    _cpu.preprocess(stored, reference.per_slice(slope, n, "slope"), reference.per_slice(intercept, n, "intercept"),
                    bits, bool(sgn), 0 if cfg.normalisation == "minmax" else 1, cfg.window_hu[0], cfg.window_hu[1],
                    cfg.calcium_threshold_hu, cfg.body_threshold_hu, cfg.antialias, out, mm, counts, bad, threads, isa)
    assert not bad.any()
    return out, mm, counts


def _assert_same(got, want) -> None:
    for name, g, w in zip(("model_input", "hu_minmax", "calcium_counts"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert np.array_equal(g, w), f"{name}: max |diff| {np.abs(g.astype(np.float64) - w).max()}"


def _ct_like(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Random stored values with air, tissue and bright spots (so every branch is taken)."""
    base = rng.choice(np.array([0, 200, 1000, 1064, 1100, 1500, 2500]), shape)
    vals = base + rng.integers(-30, 30, shape)
    return vals.astype(dtype) if dtype != np.float32 else (vals - 1024.0).astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.normalisation}-{c.input_size}-aa{int(c.antialias)}-{c.output_dtype}")
def test_preprocess_equals_reference_random(isa: str, dtype, cfg: PreprocessConfig) -> None:
    rng = np.random.default_rng(hash((isa, np.dtype(dtype).name, cfg.input_size)) % 2**32)
    stored = _ct_like(rng, (3, 67, 91), dtype)
    slope, intercept = (1.0, -1024.0) if dtype != np.float32 else (1.0, 0.0)
    _assert_same(_raw_preprocess(stored, slope, intercept, cfg, isa), reference.preprocess(stored, slope, intercept, cfg))


@pytest.mark.parametrize("isa", ISAS)
def test_preprocess_edge_cases(isa: str) -> None:
    cfg = PreprocessConfig(input_size=32, output_dtype="float16")
    cases: dict[str, tuple] = {
        "constant slice": (np.full((2, 20, 20), 1064, np.int16), 1.0, -1024.0, 16, None),
        "all air": (np.zeros((1, 30, 25), np.uint16), 1.0, -1024.0, 16, None),
        "int16 extremes": (np.array([[[-32768, 32767] * 8] * 9]).astype(np.int16), 1.0, 0.0, 16, None),
        "uint16 extremes": (np.array([[[0, 65535, 1] * 5] * 7]).astype(np.uint16), 1.0, -1024.0, 16, None),
        "1x1 slice": (np.array([[[1200]]], np.int16), 1.0, -1024.0, 16, None),
        "one row": (np.arange(50, dtype=np.int16)[None, None] * 40, 1.0, -1024.0, 16, None),
        "one column": (np.arange(50, dtype=np.int16)[None, :, None] * 40, 1.0, -1024.0, 16, None),
        "odd non-square": (np.random.default_rng(0).integers(0, 3000, (2, 33, 7)).astype(np.int16), 1.0, -1024.0, 16, None),
        "per-slice rescale": (np.random.default_rng(1).integers(0, 3000, (3, 16, 16)).astype(np.int16),
                              np.array([1.0, 0.5, 2.0]), np.array([-1024.0, -1000.0, -2048.0]), 16, None),
        "negative slope": (np.random.default_rng(2).integers(0, 3000, (2, 16, 16)).astype(np.uint16), -1.0, 1000.0, 16, None),
        "zero slope": (np.random.default_rng(3).integers(0, 3000, (1, 16, 16)).astype(np.uint16), 0.0, 150.0, 16, None),
        "fractional slope": (np.random.default_rng(4).integers(0, 3000, (2, 16, 16)).astype(np.int16), 0.37, -1000.3, 16, None),
        "signed 12-bit in uint16": (np.random.default_rng(5).integers(0, 65536, (2, 16, 16)).astype(np.uint16), 1.0, 0.0, 12, True),
        "int16 read as unsigned": (np.random.default_rng(6).integers(-32768, 32767, (1, 16, 16)).astype(np.int16), 1.0, -1024.0, 16, False),
    }
    for name, (stored, slope, intercept, bits, signed) in cases.items():
        want = reference.preprocess(stored, slope, intercept, cfg, bits_stored=bits, signed=signed)
        got = _raw_preprocess(stored, slope, intercept, cfg, isa, bits=bits, signed=signed)
        try:
            _assert_same(got, want)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    const = _raw_preprocess(np.full((1, 20, 20), 1064, np.int16), 1.0, -1024.0, cfg, isa)[0]
    assert np.all(const == -1.0)  # the paper's formula on a constant slice


@pytest.mark.parametrize("isa", ISAS)
def test_bits_stored_12_ignores_garbage_high_bits(isa: str) -> None:
    rng = np.random.default_rng(7)
    clean = rng.integers(0, 4096, (2, 40, 40)).astype(np.uint16)
    dirty = clean | (rng.integers(0, 16, clean.shape).astype(np.uint16) << 12)
    cfg = PreprocessConfig(input_size=24)
    a = _raw_preprocess(clean, 1.0, -1024.0, cfg, isa, bits=12, signed=False)
    b = _raw_preprocess(dirty, 1.0, -1024.0, cfg, isa, bits=12, signed=False)
    _assert_same(a, b)
    _assert_same(b, reference.preprocess(dirty, 1.0, -1024.0, cfg, bits_stored=12, signed=False))


@pytest.mark.parametrize("isa", ISAS)
def test_single_operations_equal_reference(isa: str) -> None:
    rng = np.random.default_rng(8)
    stored = _ct_like(rng, (3, 45, 52), np.int16)
    s, b = reference.per_slice([1.0, 0.5, 1.0], 3, "s"), reference.per_slice(-1024.0, 3, "b")
    hu = np.empty(stored.shape, np.float32)
    _cpu.to_hu(stored, s, b, 16, True, hu, 0, isa)
    np.testing.assert_array_equal(hu, reference.to_hu(stored, s, b))
    mm, counts, bad = np.empty((3, 2), np.float32), np.empty(3, np.int32), np.empty(3, np.int32)
    _cpu.stats(hu, 130.0, -500.0, mm, counts, bad, 0, isa)
    np.testing.assert_array_equal(mm, reference.hu_minmax(hu))
    np.testing.assert_array_equal(counts, reference.calcium_counts(hu))
    lo, hi, inv = reference.norm_params(mm, PreprocessConfig())
    normed = np.empty_like(hu)
    _cpu.normalise(hu, lo, hi, inv, normed, 0, isa)
    np.testing.assert_array_equal(normed, reference.normalise(hu, lo, hi, inv))
    for aa in (True, False):
        for size in ((20, 30), (64, 64), (45, 52)):
            out = np.empty((3, *size), np.float32)
            _cpu.resize(normed, out, aa, 0, isa)
            np.testing.assert_array_equal(out, reference.resize(normed, size, aa))


def test_taps_equal_reference() -> None:
    for n_in, n_out in ((512, 224), (333, 224), (100, 224), (7, 3), (1, 5), (5, 1)):
        for aa in (True, False):
            idx, w = _cpu.resample_taps(n_in, n_out, aa)
            ridx, rw = reference.resample_taps(n_in, n_out, aa)
            np.testing.assert_array_equal(idx, ridx)
            np.testing.assert_array_equal(w, rw)


def _f16_patterns() -> np.ndarray:
    """Every high half-word × the low-bit patterns that decide rounding (lsb, round, sticky), plus
    random words: covers normals, subnormals, overflow, ties to even, inf and NaN."""
    hi = np.arange(65536, dtype=np.uint32) << 16
    lows = []
    for b14_15 in (0, 0x4000, 0x8000, 0xC000):
        for lsb in (0, 0x2000):
            for rnd in (0, 0x1000):
                for sticky in (0, 1, 0x7FF, 0x800, 0xFFF):
                    lows.append(b14_15 | lsb | rnd | sticky)
    words = (hi[:, None] | np.array(lows, np.uint32)[None, :]).ravel()
    rand = np.random.default_rng(9).integers(0, 2**32, 500_000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([words, rand]).view(np.float32)


@pytest.mark.parametrize("isa", ISAS)
def test_float16_rounding_is_bit_exact_with_numpy(isa: str) -> None:
    vals = _f16_patterns()
    got = np.empty(vals.shape, np.uint16)
    _cpu.f32_to_f16(vals, got, isa)
    with np.errstate(over="ignore", invalid="ignore"):
        want = vals.astype(np.float16)
    nan = np.isnan(vals)
    np.testing.assert_array_equal(got[~nan], want[~nan].view(np.uint16))
    assert np.all(np.isnan(got[nan].view(np.float16)))  # NaN stays NaN (payload bits are not compared)


# ------------------------------------------------------------------------------------------------
# real slices
# ------------------------------------------------------------------------------------------------
def _coca_slices(coca_root, per_series: int = 4) -> list[tuple[np.ndarray, float, float, int, bool, str]]:
    pydicom = pytest.importorskip("pydicom")
    series = [coca_root / "Gated_release_final" / "patient" / p for p in ("0", "1", "2")]
    series += [coca_root / "deidentified_nongated" / p for p in ("1", "2")]
    out = []
    for folder in series:
        files = sorted(folder.rglob("*.dcm"))
        if not files:
            continue
        for path in files[:: max(1, len(files) // per_series)][:per_series]:
            ds = pydicom.dcmread(path)
            signed = int(ds.PixelRepresentation) == 1
            raw = np.frombuffer(ds.PixelData, dtype="<i2" if signed else "<u2").reshape(int(ds.Rows), int(ds.Columns))
            out.append((raw.copy(), float(ds.RescaleSlope), float(ds.RescaleIntercept), int(ds.BitsStored), signed,
                        str(path.relative_to(coca_root))))
    if not out:
        pytest.skip(f"no COCA DICOM files under {coca_root}")
    return out


def test_coca_slices_equal_reference(coca_root) -> None:
    slices = _coca_slices(coca_root)
    cfg16 = PreprocessConfig(output_dtype="float16")
    for raw, slope, intercept, bits, signed, name in slices:
        for cfg in (cfg16, PreprocessConfig(normalisation="window", antialias=False)):
            want = reference.preprocess(raw, slope, intercept, cfg, bits_stored=bits, signed=signed)
            got = preprocess(raw, slope, intercept, config=cfg, bits_stored=bits, signed=signed)
            try:
                _assert_same(got, want)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from exc
            assert got.hu_minmax[0, 0] >= -1100 and got.model_input.min() >= -1 and got.model_input.max() <= 1


def test_coca_batch_of_a_series_and_its_counts(coca_root) -> None:
    """A whole gated series as one batch; slices with expert calcium ROIs have candidates."""
    pydicom = pytest.importorskip("pydicom")
    files = sorted((coca_root / "Gated_release_final" / "patient" / "1").rglob("*.dcm"))
    if not files:
        pytest.skip("COCA gated patient 1 not found")
    vol = np.stack([pydicom.dcmread(f).pixel_array for f in files])
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    res = preprocess(vol, float(ds.RescaleSlope), float(ds.RescaleIntercept),
                     config=PreprocessConfig(output_dtype="float16"), bits_stored=int(ds.BitsStored))
    _assert_same(res, reference.preprocess(vol, float(ds.RescaleSlope), float(ds.RescaleIntercept),
                                           PreprocessConfig(output_dtype="float16"), bits_stored=int(ds.BitsStored)))
    assert res.model_input.shape == (len(files), 1, 224, 224)
    assert (res.calcium_counts > 0).any()  # bone and calcium exist in a chest CT
    # agreement with the series reader's HU volume where it exists (issue 2 contract)
    series = pytest.importorskip("cacstream.engine.series")
    if hasattr(series, "to_hu") and hasattr(series, "read_header"):
        h = series.read_header(files[0])[0]
        np.testing.assert_array_equal(to_hu(vol[0], h.rescale_slope, h.rescale_intercept, bits_stored=h.bits_stored),
                                      np.asarray(series.to_hu(series.decode_stored(h), h), np.float32))


# ------------------------------------------------------------------------------------------------
# dispatch: array types, copies, errors, GIL
# ------------------------------------------------------------------------------------------------
def test_public_ops_equal_reference_and_accept_2d() -> None:
    rng = np.random.default_rng(10)
    stored = _ct_like(rng, (50, 60), np.int16)
    hu = to_hu(stored, 1.0, -1024.0)
    assert hu.shape == (50, 60)
    np.testing.assert_array_equal(hu, reference.to_hu(stored, 1.0, -1024.0))
    np.testing.assert_array_equal(hu_minmax(hu), reference.hu_minmax(hu))
    np.testing.assert_array_equal(calcium_counts(hu), reference.calcium_counts(hu))
    cfg = PreprocessConfig(normalisation="window")
    lo, hi, inv = reference.norm_params(reference.hu_minmax(hu), cfg)
    np.testing.assert_array_equal(normalise(hu, cfg), reference.normalise(hu, lo, hi, inv))
    np.testing.assert_array_equal(resize(hu, (20, 31)), reference.resize(hu, (20, 31), True))
    res = preprocess(stored, 1.0, -1024.0)
    assert res.model_input.shape == (1, 1, 224, 224)


def test_torch_cpu_tensors_in_and_out() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    stored = _ct_like(rng, (2, 40, 40), np.int16)
    cfg = PreprocessConfig(input_size=32, output_dtype="float16")
    before = cpu_backend.copies_made
    res = preprocess(torch.from_numpy(stored), 1.0, -1024.0, config=cfg)
    assert cpu_backend.copies_made == before  # the tensor's memory went to C++ as is
    assert all(isinstance(t, torch.Tensor) for t in res)
    assert res.model_input.dtype == torch.float16 and tuple(res.model_input.shape) == (2, 1, 32, 32)
    _assert_same(tuple(t.numpy() for t in res), reference.preprocess(stored, 1.0, -1024.0, cfg))
    out = torch.empty((2, 1, 32, 32), dtype=torch.float16)
    res2 = preprocess(torch.from_numpy(stored), 1.0, -1024.0, config=cfg, out=out)
    assert res2.model_input.data_ptr() == out.data_ptr()  # written in place, no copy
    assert torch.equal(out, res.model_input)


def test_inputs_are_not_copied_unless_they_must_be() -> None:
    rng = np.random.default_rng(12)
    stored = _ct_like(rng, (2, 40, 40), np.int16)
    cfg = PreprocessConfig(input_size=16)
    before = cpu_backend.copies_made
    want = preprocess(stored, 1.0, -1024.0, config=cfg)
    assert cpu_backend.copies_made == before
    strided = np.zeros((2, 40, 80), np.int16)
    strided[:, :, ::2] = stored
    _assert_same(preprocess(strided[:, :, ::2], 1.0, -1024.0, config=cfg), want)  # non-contiguous
    _assert_same(preprocess(stored.astype(">i2"), 1.0, -1024.0, config=cfg), want)  # big-endian
    assert cpu_backend.copies_made == before + 2


def test_bad_input_gets_a_clear_error() -> None:
    ok = np.zeros((2, 8, 8), np.int16)
    with pytest.raises(TypeError, match="int16, uint16 or float32"):
        preprocess(np.zeros((2, 8, 8), np.int32))
    with pytest.raises(TypeError, match="int16, uint16 or float32"):
        preprocess(np.zeros((2, 8, 8), np.float64))
    with pytest.raises(ValueError, match="rows, columns"):
        preprocess(np.zeros((2, 2, 8, 8), np.int16))
    with pytest.raises(ValueError, match="empty slice"):
        preprocess(np.zeros((2, 0, 8), np.int16))
    with pytest.raises(ValueError, match="one value per slice"):
        preprocess(ok, [1.0, 1.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="bits_stored"):
        preprocess(ok, bits_stored=17)
    with pytest.raises(ValueError, match="not float32 input"):
        preprocess(ok.astype(np.float32), bits_stored=12)
    with pytest.raises(ValueError, match="out must be"):
        preprocess(ok, out=np.empty((2, 1, 224, 224), np.float16))  # default output is float32
    bad = np.zeros((3, 8, 8), np.float32)
    bad[1, 2, 3] = np.nan
    bad[2, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"slices \[1, 2\] hold non-finite"):
        preprocess(bad)
    with pytest.raises(ValueError, match="non-finite"):
        hu_minmax(bad)
    with pytest.raises(TypeError, match="float32"):
        resize(np.zeros((4, 4), np.float64), 2)
    with pytest.raises(ValueError, match="isa"):
        _cpu.f32_to_f16(np.zeros(4, np.float32), np.zeros(4, np.uint16), "sse9")
    empty = preprocess(np.zeros((0, 8, 8), np.int16))
    assert empty.model_input.shape == (0, 1, 224, 224) and empty.calcium_counts.shape == (0,)


def test_thread_count_does_not_change_results() -> None:
    rng = np.random.default_rng(13)
    stored = _ct_like(rng, (5, 64, 64), np.uint16)
    cfg = PreprocessConfig(input_size=32)
    _assert_same(preprocess(stored, 1.0, -1024.0, config=cfg, threads=1),
                 preprocess(stored, 1.0, -1024.0, config=cfg, threads=2))


def test_gil_is_released_during_the_computation() -> None:
    """A Python thread keeps running while C++ works: the call must not hold the GIL."""
    # one call, big enough (~0.1-0.3 s) that a held GIL would show as a long gap in the ticks
    stored = np.random.default_rng(14).integers(0, 3000, (192, 512, 512)).astype(np.int16)
    cfg = PreprocessConfig(input_size=448)
    stamps: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())
            for _ in range(200):
                pass

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.02)
    t0 = time.perf_counter()
    preprocess(stored, 1.0, -1024.0, config=cfg, threads=1)
    t1 = time.perf_counter()
    stop.set()
    t.join()
    assert t1 - t0 > 0.06, "the call was too short to tell"
    inside = [s for s in stamps if t0 + 0.02 < s < t1 - 0.02]
    assert len(inside) > 10, f"only {len(inside)} ticks of the Python thread during a {1e3 * (t1 - t0):.0f} ms call"
    longest_gap = max(np.diff(inside)) if len(inside) > 1 else t1 - t0
    assert longest_gap < 0.5 * (t1 - t0), f"the Python thread stalled {1e3 * longest_gap:.0f} ms during the call"
