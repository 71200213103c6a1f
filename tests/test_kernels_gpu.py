"""CUDA kernels (CuPy) against the C++ twins, bit for bit. Needs CuPy and a CUDA GPU.

The GPU and CPU paths share kernels/common/preprocess_math.h and perform the same float32
operations in the same order without FMA, so the comparison is exact (``array_equal``): random
slices, edge cases, real COCA slices, torch CUDA tensors through DLPack, and the pinned staging ring.
"""

from __future__ import annotations

import numpy as np
import pytest

from cacstream.kernels import PreprocessConfig, preprocess, reference

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")

CONFIGS = [
    PreprocessConfig(),
    PreprocessConfig(antialias=False, output_dtype="float16"),
    PreprocessConfig(normalisation="window", output_dtype="float16"),
    PreprocessConfig(input_size=600),  # upsampling
]


def _same(gpu_result, cpu_result) -> None:
    for name, g, c in zip(("model_input", "hu_minmax", "calcium_counts"), gpu_result, cpu_result):
        g = cupy.asnumpy(g) if isinstance(g, cupy.ndarray) else np.asarray(g)
        assert g.dtype == c.dtype and g.shape == c.shape, name
        assert np.array_equal(g, c), f"{name}: max |diff| {np.abs(g.astype(np.float64) - c).max()}"


def _ct_like(rng, shape, dtype):
    base = rng.choice(np.array([0, 200, 1000, 1064, 1100, 1500, 2500]), shape)
    vals = base + rng.integers(-30, 30, shape)
    return vals.astype(dtype) if dtype != np.float32 else (vals - 1024.0).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.normalisation}-{c.input_size}-aa{int(c.antialias)}-{c.output_dtype}")
def test_cupy_equals_cpp_random(dtype, cfg) -> None:
    rng = np.random.default_rng(0)
    stored = _ct_like(rng, (5, 512, 384), dtype)
    slope, intercept = (1.0, -1024.0) if dtype != np.float32 else (1.0, 0.0)
    _same(preprocess(cupy.asarray(stored), slope, intercept, config=cfg),
          preprocess(stored, slope, intercept, config=cfg))


def test_cupy_edge_cases_equal_cpp() -> None:
    cfg = PreprocessConfig(input_size=32, output_dtype="float16")
    rng = np.random.default_rng(1)
    cases = [
        (np.full((2, 20, 20), 1064, np.int16), 1.0, -1024.0, None, None),
        (np.zeros((1, 30, 25), np.uint16), 1.0, -1024.0, None, None),
        (np.array([[[-32768, 32767] * 8] * 9]).astype(np.int16), 1.0, 0.0, None, None),
        (np.array([[[1200]]], np.int16), 1.0, -1024.0, None, None),
        (rng.integers(0, 3000, (2, 33, 7)).astype(np.int16), 1.0, -1024.0, None, None),
        (rng.integers(0, 3000, (3, 16, 16)).astype(np.int16), np.array([1.0, 0.5, 2.0]), np.array([-1024.0, -1000.0, -2048.0]), None, None),
        (rng.integers(0, 3000, (2, 16, 16)).astype(np.uint16), -1.0, 1000.0, None, None),
        (rng.integers(0, 65536, (2, 16, 16)).astype(np.uint16), 1.0, 0.0, 12, True),
        (rng.integers(0, 65536, (2, 16, 16)).astype(np.uint16), 0.37, -1000.3, 12, False),
    ]
    for stored, slope, intercept, bits, signed in cases:
        _same(preprocess(cupy.asarray(stored), slope, intercept, config=cfg, bits_stored=bits, signed=signed),
              preprocess(stored, slope, intercept, config=cfg, bits_stored=bits, signed=signed))


def test_single_operations_and_taps_equal_cpp() -> None:
    from cacstream.kernels import calcium_counts, cpu_backend, cupy_backend, hu_minmax, normalise, resize, to_hu

    rng = np.random.default_rng(2)
    stored = _ct_like(rng, (3, 97, 131), np.int16)
    d = cupy.asarray(stored)
    hu_c, hu_g = to_hu(stored, 1.0, -1024.0), to_hu(d, 1.0, -1024.0)
    np.testing.assert_array_equal(cupy.asnumpy(hu_g), hu_c)
    np.testing.assert_array_equal(cupy.asnumpy(hu_minmax(hu_g)), hu_minmax(hu_c))
    np.testing.assert_array_equal(cupy.asnumpy(calcium_counts(hu_g)), calcium_counts(hu_c))
    for cfg in (PreprocessConfig(), PreprocessConfig(normalisation="window")):
        np.testing.assert_array_equal(cupy.asnumpy(normalise(hu_g, cfg)), normalise(hu_c, cfg))
    for aa in (True, False):
        np.testing.assert_array_equal(cupy.asnumpy(resize(hu_g, (50, 70), antialias=aa)), resize(hu_c, (50, 70), antialias=aa))
        for n_in, n_out in ((512, 224), (333, 224), (100, 224)):
            gi, gw = cupy_backend.resample_taps(n_in, n_out, aa)
            ci, cw = cpu_backend.extension().resample_taps(n_in, n_out, aa)
            np.testing.assert_array_equal(cupy.asnumpy(gi), ci)
            np.testing.assert_array_equal(cupy.asnumpy(gw), cw)


def test_nonfinite_float_input_raises_on_gpu() -> None:
    bad = np.zeros((2, 8, 8), np.float32)
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"slices \[1\]"):
        preprocess(cupy.asarray(bad))


def test_coca_slices_cupy_equals_cpp(coca_root) -> None:
    pydicom = pytest.importorskip("pydicom")
    for folder in ("Gated_release_final/patient/0", "Gated_release_final/patient/2", "deidentified_nongated/1"):
        files = sorted((coca_root / folder).rglob("*.dcm"))
        if not files:
            continue
        vol = np.stack([pydicom.dcmread(f).pixel_array for f in files])
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        args = (float(ds.RescaleSlope), float(ds.RescaleIntercept))
        for cfg in (PreprocessConfig(output_dtype="float16"), PreprocessConfig(normalisation="window", antialias=False)):
            _same(preprocess(cupy.asarray(vol), *args, config=cfg, bits_stored=int(ds.BitsStored)),
                  preprocess(vol, *args, config=cfg, bits_stored=int(ds.BitsStored)))


def test_torch_cuda_tensors_go_through_dlpack() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    rng = np.random.default_rng(3)
    stored = _ct_like(rng, (4, 128, 128), np.int16)
    t = torch.from_numpy(stored).cuda()
    assert cupy.from_dlpack(t).data.ptr == t.data_ptr()  # zero-copy view
    cfg = PreprocessConfig(input_size=64, output_dtype="float16")
    res = preprocess(t, 1.0, -1024.0, config=cfg)
    assert all(isinstance(x, torch.Tensor) and x.is_cuda for x in res)
    assert res.model_input.dtype == torch.float16
    _same(tuple(cupy.from_dlpack(x) for x in res), preprocess(stored, 1.0, -1024.0, config=cfg))


def test_staging_ring_overlaps_and_stays_correct() -> None:
    from cacstream.kernels import StagingRing

    rng = np.random.default_rng(4)
    cfg = PreprocessConfig(output_dtype="float16")
    ring = StagingRing(cfg, slots=2)
    batches = [_ct_like(rng, (8, 512, 512), np.int16) for _ in range(5)]
    handles = [ring.submit(b, 1.0, -1024.0) for b in batches]
    assert len({id(h.stream) for h in handles}) == 2  # two streams alternate
    for b, h in zip(batches, handles):
        _same(h.synchronize(), preprocess(b, 1.0, -1024.0, config=cfg))


def test_gpu_bench_reports_fraction_of_copy(tmp_path) -> None:
    from cacstream.kernels import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--slices", "8", "--size", "256", "--repeats", "2", "--json", str(out)]) == 0
    import json

    data = json.loads(out.read_text())
    assert data["cupy_ms"] > 0 and data["d2d_copy_ms"] > 0 and 0 < data["gpu_fraction_of_d2d"]
