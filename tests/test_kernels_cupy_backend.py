"""The CuPy backend and the real CUDA sources, run on a CPU emulator (no GPU needed).

tests/cuda_emulator/emulator.cpp compiles kernels/cuda/*.cu as C++ (threads of a block are fibers
with real barriers for __syncthreads and warp shuffles) and tests/cuda_emulator/fake_cupy.py stands
in for ``cupy``: RawModule launches go to the emulator after checking every argument against the
kernel's C signature. So this file runs cacstream.kernels.cupy_backend end to end — launch shapes,
argument order and types, the stats → finalize → resample sequence, multi-block atomics, the
staging ring — and compares with the C++ twins bit for bit. What it cannot show (real GPU memory
model, scheduling, the PTX float16 instruction, NVRTC linking on a device) is left to
test_kernels_gpu.py on a machine with a GPU.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cacstream.kernels import PreprocessConfig, cuda_sources, reference

EMU_DIR = Path(__file__).resolve().parent / "cuda_emulator"


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    """(fake cupy module, cacstream.kernels.cupy_backend bound to it); undone after the module."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA emulator")
    lib = tmp_path_factory.mktemp("cuda_emulator") / "libcacemu.so"
    r = subprocess.run([cxx, "-std=c++20", "-O2", "-shared", "-fPIC", "-ffp-contract=off",
                        f"-I{cuda_sources.COMMON_DIR}", f"-I{cuda_sources.CUDA_DIR}",
                        str(EMU_DIR / "emulator.cpp"), "-o", str(lib)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"the CUDA emulator does not build (the .cu sources as C++):\n{r.stderr[-4000:]}")
    sys.path.insert(0, str(EMU_DIR))
    saved = {name: sys.modules.get(name) for name in ("cupy", "fake_cupy", "cacstream.kernels.cupy_backend")}
    try:
        fake = importlib.import_module("fake_cupy")
        fake.load(lib)
        sys.modules["cupy"] = fake
        sys.modules.pop("cacstream.kernels.cupy_backend", None)
        backend = importlib.import_module("cacstream.kernels.cupy_backend")
        yield fake, backend
    finally:
        sys.path.remove(str(EMU_DIR))
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _same(gpu_result, cpu_result, fake) -> None:
    for name, g, c in zip(("model_input", "hu_minmax", "calcium_counts"), gpu_result, cpu_result):
        assert isinstance(g, fake.ndarray), f"{name} did not stay on the (emulated) device"
        g = fake.asnumpy(g)
        assert g.dtype == c.dtype and g.shape == c.shape, name
        assert np.array_equal(g, c), f"{name}: max |diff| {np.abs(g.astype(np.float64) - c).max()}"


def _ct_like(rng, shape, dtype):
    base = rng.choice(np.array([0, 200, 1000, 1064, 1100, 1500, 2500]), shape)
    vals = base + rng.integers(-30, 30, shape)
    return vals.astype(dtype) if dtype != np.float32 else (vals - 1024.0).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32])
def test_cuda_preprocess_equals_cpp(gpu, dtype) -> None:
    fake, _ = gpu
    from cacstream.kernels import preprocess

    rng = np.random.default_rng(0)
    stored = _ct_like(rng, (2, 45, 58), dtype)
    slope, intercept = (1.0, -1024.0) if dtype != np.float32 else (1.0, 0.0)
    for cfg in (PreprocessConfig(input_size=40), PreprocessConfig(input_size=36, antialias=False, output_dtype="float16"),
                PreprocessConfig(input_size=32, normalisation="window", output_dtype="float16"),
                PreprocessConfig(input_size=90)):
        _same(preprocess(fake.asarray(stored), slope, intercept, config=cfg),
              preprocess(stored, slope, intercept, config=cfg), fake)


def test_cuda_edge_cases_equal_cpp(gpu) -> None:
    fake, _ = gpu
    from cacstream.kernels import preprocess

    cfg = PreprocessConfig(input_size=24, output_dtype="float16")
    rng = np.random.default_rng(1)
    cases = {
        "constant": (np.full((2, 20, 20), 1064, np.int16), 1.0, -1024.0, None, None),
        "int16 extremes": (np.array([[[-32768, 32767] * 8] * 9]).astype(np.int16), 1.0, 0.0, None, None),
        "1x1": (np.array([[[1200]]], np.int16), 1.0, -1024.0, None, None),
        "narrow": (rng.integers(0, 3000, (2, 33, 7)).astype(np.int16), 1.0, -1024.0, None, None),
        "per-slice rescale": (rng.integers(0, 3000, (3, 16, 16)).astype(np.int16), np.array([1.0, 0.5, 2.0]),
                              np.array([-1024.0, -1000.0, -2048.0]), None, None),
        "negative slope": (rng.integers(0, 3000, (2, 16, 16)).astype(np.uint16), -1.0, 1000.0, None, None),
        "signed 12 bits": (rng.integers(0, 65536, (2, 16, 16)).astype(np.uint16), 1.0, 0.0, 12, True),
        "one slice, many blocks": (_ct_like(rng, (1, 96, 100), np.int16), 1.0, -1024.0, None, None),
        "many slices, one block": (_ct_like(rng, (40, 9, 8), np.uint16), 1.0, -1024.0, None, None),
    }
    for name, (stored, slope, intercept, bits, signed) in cases.items():
        try:
            _same(preprocess(fake.asarray(stored), slope, intercept, config=cfg, bits_stored=bits, signed=signed),
                  preprocess(stored, slope, intercept, config=cfg, bits_stored=bits, signed=signed), fake)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def test_cuda_single_operations_equal_cpp(gpu) -> None:
    fake, backend = gpu
    from cacstream.kernels import calcium_counts, cpu_backend, hu_minmax, normalise, resize, to_hu

    rng = np.random.default_rng(2)
    stored = _ct_like(rng, (2, 45, 52), np.int16)
    hu_c, hu_g = to_hu(stored, 1.0, -1024.0), to_hu(fake.asarray(stored), 1.0, -1024.0)
    np.testing.assert_array_equal(fake.asnumpy(hu_g), hu_c)
    np.testing.assert_array_equal(fake.asnumpy(hu_minmax(hu_g)), hu_minmax(hu_c))
    np.testing.assert_array_equal(fake.asnumpy(calcium_counts(hu_g)), calcium_counts(hu_c))
    for cfg in (PreprocessConfig(), PreprocessConfig(normalisation="window")):
        np.testing.assert_array_equal(fake.asnumpy(normalise(hu_g, cfg)), normalise(hu_c, cfg))
    for aa in (True, False):
        np.testing.assert_array_equal(fake.asnumpy(resize(hu_g, (20, 30), antialias=aa)), resize(hu_c, (20, 30), antialias=aa))
        for n_in, n_out in ((512, 224), (333, 224), (100, 224), (1, 5)):
            gi, gw = backend.resample_taps(n_in, n_out, aa)
            ci, cw = cpu_backend.extension().resample_taps(n_in, n_out, aa)
            np.testing.assert_array_equal(fake.asnumpy(gi), ci)
            np.testing.assert_array_equal(fake.asnumpy(gw), cw)


def test_cuda_nonfinite_float_input_raises(gpu) -> None:
    fake, _ = gpu
    from cacstream.kernels import preprocess

    bad = np.zeros((3, 8, 8), np.float32)
    bad[2, 1, 1] = np.inf
    with pytest.raises(ValueError, match=r"slices \[2\]"):
        preprocess(fake.asarray(bad))


def test_nvrtc_gets_the_tested_text_and_options(gpu) -> None:
    _, backend = gpu
    for name in cuda_sources.KERNELS:
        module = backend._module(name, 0)
        assert module.code == cuda_sources.source_text(name)
        assert tuple(module.options) == cuda_sources.NVRTC_OPTIONS
    with pytest.raises(ValueError, match="not listed"):
        backend.kernel("stats.cu", "cac_unknown")


def test_emulator_rejects_a_wrong_launch(gpu) -> None:
    """The signature check is what makes the launch tests meaningful: show it bites."""
    fake, backend = gpu
    acc = fake.empty((2, 4), np.uint32)
    with pytest.raises(TypeError, match="expected int32"):
        backend.kernel("stats.cu", "cac_stats_init")((1,), (256,), (acc, 2))  # Python int: wrong width
    with pytest.raises(TypeError, match="p:u4 parameter given a int32"):
        backend.kernel("stats.cu", "cac_stats_init")((1,), (256,), (fake.empty((2, 4), np.int32), np.int32(2)))
    with pytest.raises(TypeError, match="arguments"):
        backend.kernel("stats.cu", "cac_stats_init")((1,), (256,), (acc,))


def test_staging_ring_round_trip(gpu) -> None:
    fake, backend = gpu
    from cacstream.kernels import preprocess

    rng = np.random.default_rng(3)
    cfg = PreprocessConfig(input_size=32, output_dtype="float16")
    ring = backend.StagingRing(cfg, slots=2)
    batches = [_ct_like(rng, shape, np.int16) for shape in ((2, 40, 40), (3, 40, 40), (4, 48, 40), (1, 40, 40))]
    handles = [ring.submit(b, 1.0, -1024.0) for b in batches]
    assert handles[0].stream is handles[2].stream and handles[0].stream is not handles[1].stream
    for b, h in zip(batches, handles):
        _same(h.synchronize(), preprocess(b, 1.0, -1024.0, config=cfg), fake)
    big_endian = batches[0].astype(">i2")
    _same(ring.submit(big_endian, 1.0, -1024.0).wait(), preprocess(batches[0], 1.0, -1024.0, config=cfg), fake)
    with pytest.raises(TypeError, match="numpy array"):
        ring.submit(fake.asarray(batches[0]))
    with pytest.raises(TypeError, match="int16, uint16 or float32"):
        ring.submit(batches[0].astype(np.int32))


def test_reference_agrees_on_the_emulated_gpu(gpu) -> None:
    """Same check the bench runs before timing: CUDA == numpy reference."""
    fake, backend = gpu
    from cacstream.kernels import bench

    vol = bench.synthetic_volume(2, 64, seed=3)
    cfg = PreprocessConfig(input_size=48, output_dtype="float16")
    _same(backend.preprocess(fake.asarray(vol), 1.0, -1024.0, cfg), reference.preprocess(vol, 1.0, -1024.0, cfg), fake)
