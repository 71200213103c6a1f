"""Inference backends (engine/backends): one protocol, same answers, chunking, precision rules, selection.

References are computed here independently: the PyTorch modules of the weights folder called
directly, one slice at a time, and ONNX Runtime sessions built by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cacstream.engine.backends import select as sel
from cacstream.engine.backends.base import Backend, BackendUnavailable, InferenceResult, chunk_bounds
from cacstream.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
from cacstream.engine.backends.torch_backend import TorchBackend, bucket_for, graph_buckets
from cacstream.engine.inference.weights_spec import read_weights_spec

from _tiny_weights import tiny_weights_dir


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def models(tiny_weights: Path) -> dict:
    import torch

    from cacstream.training.weights import load_weights

    from cacstream.training.models.classifier import served_filter

    torch.manual_seed(0)
    bundle = load_weights(tiny_weights)
    spec = read_weights_spec(tiny_weights)
    # the served filter: slice logit + its patch logits, (N, 1 + G²) with G = 2 for the tiny ViT
    return {"filter": (served_filter(bundle.slice_filter.model), spec.filter),
            "segmenter": (bundle.segmenter.model, spec.segmenter)}


FILTER_TAIL = (1 + 2 * 2,)


def _batch(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *shape), dtype=np.float32) * 2 - 1)


def _reference(module, x: np.ndarray) -> np.ndarray:
    """The module called on one slice at a time (no batching effects at all)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared test machine: see torch_backend's docstring
    try:
        with torch.no_grad():
            return np.concatenate([module(torch.from_numpy(x[i:i + 1])).float().numpy() for i in range(len(x))])
    finally:
        torch.set_num_threads(threads)


def _backends(role: str, models: dict, max_batch: int) -> dict[str, Backend]:
    module, spec = models[role]
    return {
        "torch": TorchBackend(module, role, spec.input_shape, max_batch_size=max_batch, threads=1),
        "onnxruntime": OnnxRuntimeBackend(spec.onnx_path("fp32"), role, max_batch_size=max_batch, threads=1,
                                          expected_input_shape=spec.input_shape),
    }


# ------------------------------------------------------------------------------------- protocol


@pytest.mark.parametrize("role", ["filter", "segmenter"])
def test_every_backend_returns_the_same_result_fields(role: str, models: dict) -> None:
    module, spec = models[role]
    x = _batch(3, spec.input_shape)
    ref = _reference(module, x)
    for name, be in _backends(role, models, 16).items():
        assert isinstance(be, Backend)
        assert be.input_shape == spec.input_shape and be.input_dtype == "float32"
        res = be.infer(x)
        assert isinstance(res, InferenceResult)
        assert res.backend == name and res.batch_size == 3 and res.precision == "fp32" and res.device == "cpu"
        assert res.elapsed_ms > 0
        assert isinstance(res.logits, np.ndarray) and res.logits.dtype == np.float32
        expected_shape = (3, *FILTER_TAIL) if role == "filter" else (3, 5, *spec.input_shape[1:])
        assert res.logits.shape == expected_shape == ref.shape
        np.testing.assert_allclose(res.logits, ref, atol=2e-5, rtol=1e-4, err_msg=name)
        be.close()


@pytest.mark.parametrize("n", [0, 1, 5, 11])
@pytest.mark.parametrize("role", ["filter", "segmenter"])
def test_batches_of_any_size_are_chunked_to_the_max_batch(role: str, n: int, models: dict) -> None:
    """1, odd, and more than max_batch (4) slices: the logits equal the slice-by-slice reference."""
    module, spec = models[role]
    x = _batch(n, spec.input_shape, seed=n)
    ref = _reference(module, x) if n else None
    for name, be in _backends(role, models, 4).items():
        res = be.infer(x)
        assert res.batch_size == n
        tail = FILTER_TAIL if role == "filter" else (5, *spec.input_shape[1:])
        assert res.logits.shape == (n, *tail), name
        if n:
            np.testing.assert_allclose(res.logits, ref, atol=2e-5, rtol=1e-4, err_msg=f"{name} n={n}")


def test_torch_thread_setting_applies_to_its_calls_only(models: dict) -> None:
    import torch

    module, spec = models["filter"]
    before = torch.get_num_threads()
    be = TorchBackend(module, "filter", spec.input_shape, threads=1)
    seen = []
    handle = module.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        be.infer(_batch(1, spec.input_shape))
    finally:
        handle.remove()
    assert seen == [1] and torch.get_num_threads() == before


def test_torch_tensor_input_is_accepted(models: dict) -> None:
    import torch

    _, spec = models["filter"]
    x = _batch(2, spec.input_shape)
    for be in _backends("filter", models, 8).values():
        a = be.infer(x).logits
        b = be.infer(torch.from_numpy(x)).logits
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [(2, 1, 16, 16), (2, 3, 32, 32), (1, 32, 32)])
def test_wrong_input_shape_names_the_expected_shape(bad: tuple[int, ...], models: dict) -> None:
    for be in _backends("segmenter", models, 4).values():
        with pytest.raises(ValueError, match=r"expected a batch of shape \(N, 1, 32, 32\)"):
            be.infer(np.zeros(bad, np.float32))


def test_chunk_bounds() -> None:
    assert list(chunk_bounds(0, 4)) == []
    assert list(chunk_bounds(11, 4)) == [(0, 4), (4, 8), (8, 11)]
    assert list(chunk_bounds(4, 4)) == [(0, 4)]
    with pytest.raises(ValueError):
        list(chunk_bounds(3, 0))


# ----------------------------------------------------------------------------------- torch rules


def test_cuda_graph_buckets_cover_every_chunk_with_the_smallest_padding() -> None:
    assert graph_buckets(16) == (1, 2, 4, 8, 16)
    assert graph_buckets(12) == (1, 2, 4, 8, 12)
    assert graph_buckets(1) == (1,)
    b = graph_buckets(12)
    assert [bucket_for(n, b) for n in range(1, 13)] == [1, 2, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12]
    with pytest.raises(ValueError):
        bucket_for(13, b)


def test_torch_cpu_bf16_runs_and_stays_close_to_fp32(models: dict) -> None:
    module, spec = models["segmenter"]
    x = _batch(2, spec.input_shape)
    fp32 = TorchBackend(module, "segmenter", spec.input_shape, threads=1).infer(x).logits
    res = TorchBackend(module, "segmenter", spec.input_shape, precision="bf16", threads=1).infer(x)
    assert res.precision == "bf16" and res.logits.dtype == np.float32
    scale = np.abs(fp32).max()
    assert np.abs(res.logits - fp32).max() < 0.05 * scale  # bf16 keeps 8 significand bits


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_torch_cpu_refuses_precisions_it_cannot_run(precision: str, models: dict) -> None:
    module, spec = models["filter"]
    with pytest.raises(BackendUnavailable, match=precision):
        TorchBackend(module, "filter", spec.input_shape, precision=precision)


def test_torch_cuda_device_without_gpu_is_unavailable(models: dict) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    module, spec = models["filter"]
    with pytest.raises(BackendUnavailable, match="no CUDA"):
        TorchBackend(module, "filter", spec.input_shape, device="cuda:0")


# ------------------------------------------------------------------------------- ONNX Runtime rules


def test_onnxruntime_io_binding_by_pointer_matches_session_run(models: dict) -> None:
    """The pointer-binding path the CUDA EP uses, exercised with host pointers on the CPU EP."""
    _, spec = models["segmenter"]
    be = OnnxRuntimeBackend(spec.onnx_path("fp32"), "segmenter", expected_input_shape=spec.input_shape)
    x = np.ascontiguousarray(_batch(3, spec.input_shape))
    out = np.empty((3, *be.output_tail), np.float32)
    be.bind_and_run(x.ctypes.data, x.shape, out.ctypes.data, device_type="cpu")
    np.testing.assert_allclose(out, be.infer(x).logits, atol=1e-6)


def test_onnxruntime_int8_requires_a_quantized_graph(models: dict) -> None:
    _, spec = models["filter"]
    with pytest.raises(ValueError, match="no quantize/dequantize nodes"):
        OnnxRuntimeBackend(spec.onnx_path("fp32"), "filter", precision="int8")


def test_onnxruntime_runs_an_int8_qdq_graph(models: dict, tmp_path: Path) -> None:
    """An explicit Q/DQ graph (as the calibration tooling writes) loads, reports int8 and tracks FP32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    module, spec = models["segmenter"]
    calib = _batch(8, spec.input_shape, seed=3)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"slices": calib[i:i + 2]} for i in range(0, 8, 2)])

        def get_next(self):
            return next(self.it, None)

    q = tmp_path / "segmenter.int8.onnx"
    quantize_static(str(spec.onnx_path("fp32")), str(q), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    be = OnnxRuntimeBackend(q, "segmenter", precision="int8", expected_input_shape=spec.input_shape)
    assert be.facts["qdq_nodes"] > 0
    x = _batch(2, spec.input_shape, seed=4)
    res = be.infer(x)
    ref = _reference(module, x)
    assert res.precision == "int8" and res.logits.shape == ref.shape
    corr = np.corrcoef(res.logits.ravel(), ref.ravel())[0, 1]
    assert corr > 0.95, corr


def test_onnxruntime_rejects_a_graph_of_another_input_size(models: dict) -> None:
    _, spec = models["filter"]
    with pytest.raises(ValueError, match=r"slice_filter\.onnx.*\(batch, 1, 64, 64\).*\(batch, 1, 48, 48\)"):
        OnnxRuntimeBackend(spec.onnx_path("fp32"), "filter", expected_input_shape=(1, 48, 48))


def test_onnxruntime_names_a_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nothing\.onnx: ONNX file not found"):
        OnnxRuntimeBackend(tmp_path / "nothing.onnx", "filter")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match=r"broken\.onnx: not a readable ONNX model"):
        OnnxRuntimeBackend(bad, "filter")


def test_onnxruntime_cuda_without_the_provider_is_unavailable(models: dict) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA EP")
    _, spec = models["filter"]
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        OnnxRuntimeBackend(spec.onnx_path("fp32"), "filter", device="cuda:0")


# ------------------------------------------------------------------------------------- selection


def test_auto_on_this_cpu_picks_the_measured_winner_per_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sel, "gpu_present", lambda: False)
    assert sel.select_backend("auto", "fp32").name == sel.CPU_FP32_ORDER[0] == "onnxruntime"
    assert sel.select_backend("auto", "int8").name == "onnxruntime"
    assert sel.select_backend("auto", "bf16").name == "torch"
    assert sel.select_backend("auto", "fp16").name == "onnxruntime"
    assert sel.select_backend("torch", "fp32").device == "cpu"


def test_gpu_order_is_tensorrt_then_onnxruntime_then_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    present = {"tensorrt": True, "onnxruntime": True, "torch": True}
    monkeypatch.setattr(sel, "gpu_present", lambda: True)
    monkeypatch.setattr(sel, "backend_present", lambda name, kind: (present[name], "" if present[name] else "absent"))
    assert sel.select_backend("auto", "fp16").name == "tensorrt"
    present["tensorrt"] = False
    assert sel.select_backend("auto", "fp16").name == "onnxruntime"
    present["onnxruntime"] = False
    choice = sel.select_backend("auto", "fp16")
    assert (choice.name, choice.device) == ("torch", "cuda:0")
    with pytest.raises(BackendUnavailable, match="int8"):
        sel.select_backend("auto", "int8")  # only TensorRT / ORT run Q/DQ, both absent
    present.update(tensorrt=True)
    assert sel.select_backend("auto", "bf16").name == "torch"  # TensorRT/ORT offer no bf16


def test_explicit_backend_that_cannot_run_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sel, "gpu_present", lambda: False)
    with pytest.raises(BackendUnavailable, match="TensorRT runs on CUDA GPUs only"):
        sel.select_backend("tensorrt", "fp16")
    with pytest.raises(BackendUnavailable, match="offers fp32, bf16 on cpu, not int8"):
        sel.select_backend("torch", "int8")
    with pytest.raises(ValueError, match="unknown backend"):
        sel.select_backend("openvino")
    with pytest.raises(ValueError, match="precision"):
        sel.select_backend("auto", "fp64")
    with pytest.raises(ValueError, match="device"):
        sel.resolve_device("tpu")


def test_cpu_measurement_helper_times_both_runtimes(tiny_weights: Path) -> None:
    rows = sel.measure_cpu_backends(tiny_weights, batch_sizes=(2,), repeats=2, threads=1)
    assert [(r["model"], r["batch"]) for r in rows] == [("filter", 2), ("segmenter", 2)]
    for r in rows:
        assert r["torch_ms"] > 0 and r["onnxruntime_ms"] > 0
        assert r["torch_over_ort"] == pytest.approx(r["torch_ms"] / r["onnxruntime_ms"])


# ----------------------------------------------------------------------------------- device info


def test_device_info_is_complete_and_serialisable() -> None:
    import onnxruntime
    import torch

    from cacstream.engine.inference.device_info import collect_device_info

    info = collect_device_info()
    d = json.loads(json.dumps(info.to_dict()))
    assert d["cpu_model"] and d["cpu_cores_usable"] >= 1 and d["cpu_cores_logical"] >= d["cpu_cores_usable"]
    assert d["torch"] == torch.__version__ and d["onnxruntime"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in d["onnxruntime_providers"]
    assert isinstance(d["gpus"], list)
    if not torch.cuda.is_available():
        assert info.gpu is None and "no GPU" in info.summary()
    assert info.cpu_model in info.summary()


# ------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_graphs_match_eager(precision: str, models: dict) -> None:
    import torch

    module, spec = models["segmenter"]
    x = _batch(7, spec.input_shape)
    eager = TorchBackend(module, "segmenter", spec.input_shape, device="cuda:0", precision=precision,
                         max_batch_size=4, cuda_graphs=False).infer(x).logits
    graphs = TorchBackend(module, "segmenter", spec.input_shape, device="cuda:0", precision=precision,
                          max_batch_size=4, cuda_graphs=True)
    a = graphs.infer(x).logits
    b = graphs.infer(x).logits  # replay
    np.testing.assert_allclose(a, eager, atol=1e-3 if precision == "fp16" else 1e-5)
    np.testing.assert_array_equal(a, b)
    on_dev = TorchBackend(module, "segmenter", spec.input_shape, device="cuda:0", keep_on_device=True)
    res = on_dev.infer(torch.from_numpy(x).cuda())
    assert res.logits.is_cuda and res.device.startswith("cuda:0 (")


@pytest.mark.gpu
def test_onnxruntime_cuda_io_binding_matches_cpu(models: dict) -> None:
    import onnxruntime as ort
    import torch

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA EP here (install onnxruntime-gpu)")
    _, spec = models["segmenter"]
    x = _batch(5, spec.input_shape)
    cpu = OnnxRuntimeBackend(spec.onnx_path("fp32"), "segmenter", max_batch_size=2).infer(x).logits
    gpu = OnnxRuntimeBackend(spec.onnx_path("fp32"), "segmenter", device="cuda:0", max_batch_size=2,
                             keep_on_device=True)
    res = gpu.infer(torch.from_numpy(x).cuda())
    assert res.logits.is_cuda
    np.testing.assert_allclose(res.logits.cpu().numpy(), cpu, atol=1e-4)
