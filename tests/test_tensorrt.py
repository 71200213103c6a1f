"""TensorRT engines and backend on a real GPU (marked ``tensorrt`` and ``gpu``: skipped elsewhere).

Builds engines from the session's tiny weights (fp32 export, fp16 graph from calibration/fp16.py,
int8 explicit Q/DQ graph from ONNX Runtime's quantizer with symmetric scales, as TensorRT requires),
runs them through TensorRTBackend and the runtime, and compares with ONNX Runtime on the CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _tiny_weights import MATRIX, tiny_weights_dir

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def weights(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("trt") / "w"
    shutil.copytree(tiny_weights, w)
    return w


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 32, 32), dtype=np.float32) * 2 - 1


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    from cacstream.engine.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, "segmenter", expected_input_shape=(1, 32, 32)).infer(x).logits


def _build(weights: Path, section: str, precision: str, onnx: Path, profile_max: int = 4):
    from cacstream.engine.inference.engines import BatchProfile, ensure_engine

    return ensure_engine(onnx, weights / "engines", section, precision, (1, 32, 32), BatchProfile.for_max(profile_max))


def test_fp32_engine_builds_caches_and_matches_onnxruntime(weights: Path) -> None:
    import tensorrt as trt

    from cacstream.engine.backends.tensorrt_backend import TensorRTBackend
    from cacstream.engine.inference.device_info import gpus

    onnx = weights / "segmenter.onnx"
    first = _build(weights, "segmenter", "fp32", onnx)
    assert first.built and first.status_before.state == "missing" and first.files.plan.stat().st_size > 0
    rec = json.loads(first.files.key.read_text())
    assert rec["key"]["gpu_name"] == gpus()[0].name and rec["key"]["tensorrt_version"] == trt.__version__
    assert list((weights / "engines").glob("timing-*.cache"))
    again = _build(weights, "segmenter", "fp32", onnx)
    assert not again.built and again.status_before.fresh

    be = TensorRTBackend(first.files.plan, "segmenter", precision="fp32", expected_input_shape=(1, 32, 32))
    assert be.engine_max_batch == 4 and be.input_dtype == "float32"
    x = _batch(11)  # > profile max: chunked 4 + 4 + 3
    res = be.infer(x)
    assert res.backend == "tensorrt" and res.batch_size == 11 and res.device.startswith("cuda:0 (")
    np.testing.assert_allclose(res.logits, _ort(onnx, x), atol=1e-3, rtol=1e-3)


def test_device_input_is_bound_without_a_copy_and_output_stays_on_device(weights: Path) -> None:
    import torch

    from cacstream.engine.backends.tensorrt_backend import TensorRTBackend

    done = _build(weights, "segmenter", "fp32", weights / "segmenter.onnx")
    be = TensorRTBackend(done.files.plan, "segmenter", precision="fp32", keep_on_device=True)
    x = _batch(5, seed=1)
    res = be.infer(torch.from_numpy(x).cuda())
    assert res.logits.is_cuda
    host = TensorRTBackend(done.files.plan, "segmenter", precision="fp32").infer(x).logits
    np.testing.assert_allclose(res.logits.cpu().numpy(), host, atol=1e-5)


def test_stale_engine_is_rebuilt_not_loaded(weights: Path, tmp_path: Path) -> None:
    onnx = tmp_path / "segmenter.onnx"
    shutil.copy(weights / "segmenter.onnx", onnx)
    from cacstream.engine.inference.engines import BatchProfile, ensure_engine

    a = ensure_engine(onnx, tmp_path / "e", "segmenter", "fp32", (1, 32, 32), BatchProfile.for_max(4))
    import onnx as onnx_lib

    m = onnx_lib.load(str(onnx))
    m.doc_string = "re-exported"  # same graph, other bytes: another hash
    onnx_lib.save(m, str(onnx))
    b = ensure_engine(onnx, tmp_path / "e", "segmenter", "fp32", (1, 32, 32), BatchProfile.for_max(4))
    assert a.built and b.built and b.status_before.state == "stale"
    assert "onnx_sha256" in b.status_before.reasons[0]


def test_fp16_engine_from_the_converted_graph(weights: Path) -> None:
    from cacstream.calibration.fp16 import convert_onnx_fp16
    from cacstream.engine.backends.tensorrt_backend import TensorRTBackend

    rec = convert_onnx_fp16(weights / "segmenter.onnx", weights / "engines" / "segmenter.fp16.onnx")
    done = _build(weights, "segmenter", "fp16", weights / "engines" / rec.output)
    be = TensorRTBackend(done.files.plan, "segmenter", precision="fp16")
    x = _batch(6, seed=2)
    ref = _ort(weights / "segmenter.onnx", x)
    got = be.infer(x).logits
    assert np.abs(got - ref).max() < 0.05 * max(1.0, np.abs(ref).max())


def test_int8_engine_from_an_explicit_qdq_graph(weights: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from cacstream.engine.backends.tensorrt_backend import TensorRTBackend

    calib = _batch(16, seed=5)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"slices": calib[i:i + 4]} for i in range(0, 16, 4)])

        def get_next(self):
            return next(self.it, None)

    q = tmp_path / "segmenter.int8.onnx"
    quantize_static(str(weights / "segmenter.onnx"), str(q), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    done = _build(weights, "segmenter", "int8", q)
    x = _batch(4, seed=6)
    got = TensorRTBackend(done.files.plan, "segmenter", precision="int8").infer(x).logits
    corr = np.corrcoef(got.ravel(), _ort(weights / "segmenter.onnx", x).ravel())[0, 1]
    assert corr > 0.95, corr


def test_runtime_on_tensorrt_agrees_with_onnxruntime_cpu(weights: Path) -> None:
    from cacstream.engine.inference.runtime import CalciumModels
    from cacstream.training.phantom import PhantomConfig, make_phantom

    hu = make_phantom(9500, PhantomConfig(matrix=MATRIX, z_coverage_mm=24.0, calcium_category="101-400")).hu
    cpu = CalciumModels.load(weights, backend="onnxruntime", device="cpu", batch_size=4)
    gpu = CalciumModels.load(weights, backend="tensorrt", precision="fp32", device="cuda:0", batch_size=4)
    assert gpu.info.backend == "tensorrt" and gpu.info.device.startswith("cuda:0")
    np.testing.assert_allclose(gpu.filter_probabilities(hu), cpu.filter_probabilities(hu), atol=1e-3)
    assert float(np.mean(gpu.segment(hu) != cpu.segment(hu))) < 1e-3
