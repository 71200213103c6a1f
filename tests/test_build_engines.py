"""TensorRT engine cache logic (engine/inference/engines.py) and `cacstream build-engines`, on any machine.

The cache key and the stale-engine decision have no TensorRT dependency, so they are checked here on
fake plan files: any key component that differs (GPU name, compute capability, TensorRT version,
ONNX bytes, precision, input size) makes the engine stale, as does a plan whose bytes changed after
the build. Building itself needs TensorRT and a GPU: tests/test_tensorrt.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from cacstream.engine.inference.device_info import GpuInfo
from cacstream.engine.inference.engines import (
    BatchProfile,
    EngineBuildError,
    EngineKey,
    check_graph_precision,
    default_engine_dir,
    engine_files,
    engine_key,
    engine_status,
    file_sha256,
    timing_cache_file,
    write_key_file,
)

from _tiny_weights import tiny_weights_dir

H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", "9.0", 79.1)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture()
def onnx_file(tmp_path: Path) -> Path:
    p = tmp_path / "slice_filter.onnx"
    p.write_bytes(b"pretend onnx bytes " * 100)
    return p


PROFILE = BatchProfile(1, 16, 32)


def _built(tmp_path: Path, onnx: Path, key: EngineKey, profile: BatchProfile = PROFILE):
    files = engine_files(tmp_path / "engines", "slice_filter", key.precision)
    files.plan.parent.mkdir(parents=True, exist_ok=True)
    files.plan.write_bytes(b"serialized engine")
    write_key_file(files, key, profile, onnx, 12.5)
    return files


def test_key_holds_gpu_capability_versions_and_the_onnx_hash(onnx_file: Path) -> None:
    import hashlib

    key = engine_key(onnx_file, H100, "11.4.0", "fp16", (1, 224, 224))
    assert key.gpu_name == "NVIDIA H100 80GB HBM3" and key.compute_capability == "9.0"
    assert key.tensorrt_version == "11.4.0" and key.precision == "fp16" and key.input_shape == (1, 224, 224)
    assert key.onnx_sha256 == hashlib.sha256(onnx_file.read_bytes()).hexdigest() == file_sha256(onnx_file)
    assert EngineKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key
    with pytest.raises(ValueError, match="precision"):
        engine_key(onnx_file, H100, "11.4.0", "bf16", (1, 224, 224))


def test_fresh_engine_is_kept(tmp_path: Path, onnx_file: Path) -> None:
    key = engine_key(onnx_file, H100, "11.4.0", "fp16", (1, 224, 224))
    files = _built(tmp_path, onnx_file, key)
    assert files.plan.name == "slice_filter.fp16.plan" and files.key.name == "slice_filter.fp16.json"
    status = engine_status(files, key)
    assert status.fresh and status.describe() == "fresh"
    assert engine_status(files, key, BatchProfile(1, 16, 32)).fresh
    rec = json.loads(files.key.read_text())
    assert rec["plan_sha256"] == file_sha256(files.plan) and rec["profile"] == {"min": 1, "opt": 16, "max": 32}


@pytest.mark.parametrize("field, value", [
    ("gpu_name", "NVIDIA A100-SXM4-80GB"),
    ("compute_capability", "8.0"),
    ("tensorrt_version", "10.13.0"),
    ("onnx_sha256", "0" * 64),
    ("precision", "int8"),
    ("input_shape", (1, 256, 256)),
])
def test_any_key_component_that_differs_makes_the_engine_stale(field: str, value: object, tmp_path: Path,
                                                               onnx_file: Path) -> None:
    built_key = engine_key(onnx_file, H100, "11.4.0", "fp16", (1, 224, 224))
    files = _built(tmp_path, onnx_file, built_key)
    expected = dataclasses.replace(built_key, **{field: value})
    status = engine_status(files, expected)
    assert status.state == "stale" and not status.fresh
    assert len(status.reasons) == 1 and status.reasons[0].startswith(f"{field}: engine has")


def test_changed_onnx_bytes_make_the_engine_stale(tmp_path: Path, onnx_file: Path) -> None:
    files = _built(tmp_path, onnx_file, engine_key(onnx_file, H100, "11.4.0", "fp16", (1, 224, 224)))
    onnx_file.write_bytes(onnx_file.read_bytes() + b"re-exported")
    status = engine_status(files, engine_key(onnx_file, H100, "11.4.0", "fp16", (1, 224, 224)))
    assert status.state == "stale" and "onnx_sha256" in status.reasons[0]


def test_missing_tampered_or_unkeyed_engines_are_never_fresh(tmp_path: Path, onnx_file: Path) -> None:
    key = engine_key(onnx_file, H100, "11.4.0", "fp16", (1, 224, 224))
    files = engine_files(tmp_path / "none", "slice_filter", "fp16")
    assert engine_status(files, key).state == "missing"
    files = _built(tmp_path, onnx_file, key)
    files.plan.write_bytes(b"another engine")  # replaced after the build
    assert "plan bytes differ" in engine_status(files, key).reasons[0]
    files.key.write_text("{ not json")
    assert engine_status(files, key).state == "stale"
    files.key.unlink()
    assert "no key file" in engine_status(files, key).reasons[0]


def test_profile_is_checked_only_when_requested(tmp_path: Path, onnx_file: Path) -> None:
    key = engine_key(onnx_file, H100, "11.4.0", "fp16", (1, 224, 224))
    files = _built(tmp_path, onnx_file, key, BatchProfile(1, 8, 16))
    assert engine_status(files, key).fresh  # the runtime chunks batches to the engine's max
    status = engine_status(files, key, BatchProfile(1, 32, 64))  # build-engines --max-batch 64
    assert status.state == "stale" and status.reasons[0].startswith("profile:")


def test_batch_profile_rules() -> None:
    assert BatchProfile.for_max(32) == BatchProfile(1, 32, 32)
    assert BatchProfile.for_max(24) == BatchProfile(1, 16, 24)
    assert BatchProfile.for_max(24, 8) == BatchProfile(1, 8, 24)
    assert BatchProfile.for_max(1) == BatchProfile(1, 1, 1)
    for bad in [(0, 1, 1), (1, 4, 2), (2, 1, 4)]:
        with pytest.raises(ValueError):
            BatchProfile(*bad)


def test_engine_folder_and_timing_cache_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACSTREAM_ENGINES", raising=False)
    assert default_engine_dir(tmp_path / "default") == tmp_path / "default" / "engines"
    monkeypatch.setenv("CACSTREAM_ENGINES", str(tmp_path / "cache"))
    assert default_engine_dir(tmp_path / "default") == tmp_path / "cache" / "default"
    a = timing_cache_file(tmp_path, H100, "11.4.0")
    assert a.name == "timing-nvidia-h100-80gb-hbm3-sm9.0-trt11.4.0.cache"
    assert timing_cache_file(tmp_path, GpuInfo(0, "NVIDIA L4", "8.9"), "11.4.0") != a
    assert timing_cache_file(tmp_path, H100, "10.13.0") != a


def test_graph_precision_check(tiny_weights: Path, tmp_path: Path) -> None:
    from cacstream.calibration.fp16 import convert_onnx_fp16

    fp32 = tiny_weights / "slice_filter.onnx"
    check_graph_precision(fp32, "fp32")
    with pytest.raises(EngineBuildError, match="no float16 tensors"):
        check_graph_precision(fp32, "fp16")
    with pytest.raises(EngineBuildError, match="no Q/DQ|has none"):
        check_graph_precision(fp32, "int8")
    rec = convert_onnx_fp16(fp32, tmp_path / "slice_filter.fp16.onnx")
    check_graph_precision(tmp_path / rec.output, "fp16")
    with pytest.raises(EngineBuildError, match="not an fp32 graph"):
        check_graph_precision(tmp_path / rec.output, "fp32")


# ----------------------------------------------------------------------------- the command


def _cli(*args: str) -> int:
    from cacstream.engine.cli import main

    return main(["build-engines", *args])


def test_command_is_registered_and_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _cli("--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--precision", "--max-batch", "--opt-batch", "--out", "--rebuild", "--workspace-gb", "--no-convert"):
        assert flag in out


def test_command_checks_inputs_before_needing_tensorrt(tiny_weights: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from cacstream.engine.backends.select import backend_present

    w = tmp_path / "w"
    shutil.copytree(tiny_weights, w)
    out = tmp_path / "engines"
    rc = _cli(str(w), "--precision", "fp32", "fp16", "--out", str(out))
    err = capsys.readouterr()
    # the fp16 graphs were made in the engine folder, checked against FP32 ...
    for name in ("slice_filter.fp16.onnx", "segmenter.fp16.onnx", "slice_filter.fp16.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "segmenter.fp16.json").read_text())["relative_diff"] < 0.05
    if not backend_present("tensorrt", "cuda")[0]:
        # ... and then the command says what is missing on this machine
        assert rc == 4
        # filter, segmenter and the segmenter's region tile (regions.py), at each of the 2 precisions
        assert "TensorRT" in err.err and "6 engine(s) to build" in err.err
        assert (out / "segmenter.fp16.tile64.onnx").is_file()


def test_command_names_a_missing_int8_graph(tiny_weights: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = _cli(str(tiny_weights), "--precision", "int8", "--out", str(tmp_path / "e"))
    assert rc == 3
    assert "slice_filter.int8.onnx" in capsys.readouterr().err


def test_command_refuses_a_broken_weights_folder_and_bad_profile(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("[]")
    assert _cli(str(tmp_path / "w"), "--out", str(tmp_path / "e")) == 2
    assert "config.json" in capsys.readouterr().err
    assert _cli(str(tmp_path / "w"), "--max-batch", "8", "--opt-batch", "16") == 2
    assert "--opt-batch" in capsys.readouterr().err


def test_no_convert_requires_existing_fp16_graphs(tiny_weights: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = _cli(str(tiny_weights), "--precision", "fp16", "--no-convert", "--out", str(tmp_path / "e"))
    assert rc == 3 and "slice_filter.fp16.onnx" in capsys.readouterr().err


# ------------------------------------------------ the TensorRT code paths, on a documented-API double
# tests/_fake_tensorrt.py mirrors the TensorRT 10/11 Python names this code calls and runs the "engine"
# with ONNX Runtime on host pointers: every line of the build and execution paths runs here; whether
# the real library matches its documentation is for tests/test_tensorrt.py on a GPU.


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch):
    import sys

    import cacstream.engine.backends.tensorrt_backend as trt_backend
    from cacstream.engine.inference import engines

    from _fake_tensorrt import FakeTensorRT, NumpyOps

    fake = FakeTensorRT("11.4.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(engines, "_LOGGER", None)
    monkeypatch.setattr(engines, "current_gpu", lambda index=0: H100)
    monkeypatch.setattr(trt_backend, "_device_ops", lambda index: NumpyOps())
    return fake


@pytest.mark.parametrize("version, ok", [("8.6.1", False), ("10.13.0", True), ("11.4.0", True)])
def test_tensorrt_version_gate(version: str, ok: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cacstream.engine.backends.base import BackendUnavailable
    from cacstream.engine.inference.engines import import_tensorrt

    from _fake_tensorrt import FakeTensorRT

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(version))
    if ok:
        assert import_tensorrt().__version__ == version
    else:
        with pytest.raises(BackendUnavailable, match="too old"):
            import_tensorrt()


def test_strongly_typed_flag_is_set_where_it_exists() -> None:
    from cacstream.engine.inference.engines import network_flags

    from _fake_tensorrt import FakeTensorRT

    assert network_flags(FakeTensorRT("10.13.0")) == 1 << 0  # TensorRT 10: opt in
    assert network_flags(FakeTensorRT("11.4.0", strongly_typed_flag=False)) == 0  # always on, flag gone


def test_build_writes_plan_key_and_timing_cache_and_keeps_fresh_engines(fake_trt, tiny_weights: Path,
                                                                        tmp_path: Path) -> None:
    from cacstream.engine.inference.engines import ensure_engine

    onnx = tiny_weights / "segmenter.onnx"
    first = ensure_engine(onnx, tmp_path, "segmenter", "fp32", (1, 32, 32), BatchProfile(1, 2, 4))
    assert first.built and first.status_before.state == "missing"
    assert fake_trt.created_network_flags == [1]
    build = fake_trt.builds[0]
    assert build["profile"]["slices"] == [[1, 1, 32, 32], [2, 1, 32, 32], [4, 1, 32, 32]]
    assert build["cleared"] == ["tf32"]  # an fp32 engine computes in FP32
    rec = json.loads(first.files.key.read_text())
    assert rec["key"]["gpu_name"] == H100.name and rec["key"]["tensorrt_version"] == "11.4.0"
    assert rec["key"]["onnx_sha256"] == file_sha256(onnx) and rec["plan_sha256"] == file_sha256(first.files.plan)
    cache = timing_cache_file(tmp_path, H100, "11.4.0")
    assert cache.read_bytes() == b"timing:+"
    again = ensure_engine(onnx, tmp_path, "segmenter", "fp32", (1, 32, 32), BatchProfile(1, 2, 4))
    assert not again.built and len(fake_trt.builds) == 1
    forced = ensure_engine(onnx, tmp_path, "segmenter", "fp32", (1, 32, 32), BatchProfile(1, 2, 4), rebuild=True)
    assert forced.built and cache.read_bytes() == b"timing:++"  # the cache was loaded, extended, saved
    other = ensure_engine(onnx, tmp_path, "segmenter", "fp32", (1, 32, 32), BatchProfile(1, 4, 8))
    assert other.built and other.status_before.reasons[0].startswith("profile:")


def test_build_refuses_wrong_inputs_before_building(fake_trt, tiny_weights: Path, tmp_path: Path) -> None:
    from cacstream.engine.inference.engines import ensure_engine

    onnx = tiny_weights / "segmenter.onnx"
    with pytest.raises(EngineBuildError, match=r"expected \(batch, 1, 48, 48\)"):
        ensure_engine(onnx, tmp_path, "segmenter", "fp32", (1, 48, 48), BatchProfile(1, 2, 4))
    with pytest.raises(EngineBuildError, match="float16"):
        ensure_engine(onnx, tmp_path, "segmenter", "fp16", (1, 32, 32), BatchProfile(1, 2, 4))
    assert fake_trt.builds == [] and not list(tmp_path.glob("*.plan"))


def test_tensorrt_backend_chunks_to_the_engine_profile(fake_trt, tiny_weights: Path, tmp_path: Path) -> None:
    import numpy as np

    from cacstream.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from cacstream.engine.backends.tensorrt_backend import TensorRTBackend
    from cacstream.engine.inference.engines import ensure_engine

    onnx = tiny_weights / "segmenter.onnx"
    done = ensure_engine(onnx, tmp_path, "segmenter", "fp32", (1, 32, 32), BatchProfile(1, 2, 4))
    be = TensorRTBackend(done.files.plan, "segmenter", precision="fp32", expected_input_shape=(1, 32, 32))
    assert (be.engine_max_batch, be.max_batch_size, be.input_dtype, be.output_tail) == (4, 4, "float32", (5, 32, 32))
    x = np.random.default_rng(0).random((11, 1, 32, 32), dtype=np.float32) * 2 - 1
    res = be.infer(x)
    assert be._engine.calls == [4, 4, 3]
    assert (res.backend, res.batch_size, res.precision) == ("tensorrt", 11, "fp32")
    ref = OnnxRuntimeBackend(onnx, "segmenter").infer(x).logits
    np.testing.assert_allclose(res.logits, ref, atol=1e-6)
    assert be.infer(x[:0]).logits.shape == (0, 5, 32, 32)
    small = TensorRTBackend(done.files.plan, "segmenter", max_batch_size=3, keep_on_device=True)
    np.testing.assert_allclose(small.infer(x).logits, ref, atol=1e-6)
    assert small._engine.calls == [3, 3, 3, 2]
    with pytest.raises(ValueError, match=r"\(batch, 1, 64, 64\)"):
        TensorRTBackend(done.files.plan, "segmenter", expected_input_shape=(1, 64, 64))
    broken = tmp_path / "broken.plan"
    broken.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot deserialise"):
        TensorRTBackend(broken, "segmenter")


def test_runtime_on_tensorrt_builds_missing_engines_and_agrees(fake_trt, tiny_weights: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import cacstream.engine.backends.select as sel
    from cacstream.engine.backends.base import BackendUnavailable
    from cacstream.engine.inference.runtime import CalciumModels
    from cacstream.training.phantom import PhantomConfig, make_phantom

    monkeypatch.setattr(sel, "gpu_present", lambda: True)
    monkeypatch.setattr(sel, "backend_present", lambda name, kind: (True, ""))
    w = tmp_path / "w"
    shutil.copytree(tiny_weights, w)
    with pytest.raises(BackendUnavailable, match="missing.*build-engines"):
        CalciumModels.load(w, backend="tensorrt", device="cuda:0", build_engines=False)
    m = CalciumModels.load(w, backend="tensorrt", precision="fp32", device="cuda:0", batch_size=4)
    assert (m.info.backend, m.info.precision) == ("tensorrt", "fp32") and m.info.device.startswith("cuda:0")
    # the segmenter twice: whole slices and the tiles around flagged filter patches (regions.py)
    assert m.tile_grid is not None
    tile = f"segmenter_tile{m.tile_grid.tile}.fp32.plan"
    assert sorted(p.name for p in (w / "engines").glob("*.plan")) == sorted(
        ["segmenter.fp32.plan", tile, "slice_filter.fp32.plan"])
    auto = CalciumModels.load(w, backend="auto", precision="fp32", device="cuda:0", batch_size=4)
    assert auto.choice.name == "tensorrt" and len(fake_trt.builds) == 3  # fresh engines are reused
    cpu = CalciumModels.load(w, backend="onnxruntime", device="cpu", batch_size=4)
    hu = make_phantom(9600, PhantomConfig(matrix=64, z_coverage_mm=15.0)).hu
    np.testing.assert_allclose(m.filter_probabilities(hu), cpu.filter_probabilities(hu), atol=1e-6)
    np.testing.assert_array_equal(m.segment(hu), cpu.segment(hu))
    _, patches = cpu.filter_decisions(hu)
    np.testing.assert_array_equal(m.segment(hu, patches), cpu.segment(hu, patches))


def test_command_builds_then_keeps_engines(fake_trt, tiny_weights: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e"
    assert _cli(str(tiny_weights), "--precision", "fp32", "--max-batch", "8", "--out", str(out)) == 0
    first = capsys.readouterr().out
    assert "built" in first and (out / "slice_filter.fp32.plan").is_file() and (out / "segmenter.fp32.json").is_file()
    # the tiny filter's 2x2 patch grid is one 2-patch core over the 32² segmenter input: a 64² tile (32 + 2 x 16)
    assert (out / "segmenter_tile64.fp32.plan").is_file() and (out / "segmenter.tile64.onnx").is_file()
    assert _cli(str(tiny_weights), "--precision", "fp32", "--max-batch", "8", "--out", str(out)) == 0
    assert "kept" in capsys.readouterr().out and len(fake_trt.builds) == 3
