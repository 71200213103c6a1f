"""ONNX Runtime backend: the CPU workhorse (FP32 and INT8 Q/DQ graphs), and the CUDA EP on a GPU.

The backend loads whatever ONNX file it is given: ``slice_filter.onnx`` (FP32 from ``cacstream
export``), ``*.int8.onnx`` (explicit Q/DQ from the calibration tooling), ``*.fp16.onnx`` (strongly
typed FP16 from ``calibration/fp16.py``). It checks the graph before serving it: one input of shape
(batch, C, H, W) with C, H, W fixed and equal to what the weights' ``config.json`` says, and, for
``precision="int8"``, that the graph really holds quantize/dequantize nodes (so a report never says
"int8" about an FP32 graph). Every problem is a ``ValueError`` naming the file.

Session options (why): full graph optimisation (constant folding, Conv+BN/GELU/LayerNorm/attention
fusions; the optimised graph is what makes ORT beat eager PyTorch on CPUs); sequential execution
with ``intra_op_num_threads`` threads (0 = ORT's default, one per physical core; on a shared
2-core workstation pass the threads you can spare) and one inter-op thread (our graphs are chains,
there is nothing to run in parallel).

CUDA EP: when the batch already lives on the GPU (torch CUDA tensor or CuPy array, e.g. straight
from the kernels' preprocessing), it is bound with IO binding by device pointer, and so is a device
output buffer of the same family: no host round trip. Host batches go through ``session.run``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cacstream.engine.backends.base import (
    BackendUnavailable,
    InferenceResult,
    array_family,
    check_batch_shape,
    chunk_bounds,
)

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                     "ConvInteger", "DynamicQuantizeLinear"})
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}
GRAPH_LEVELS = ("disable", "basic", "extended", "all")


def onnx_graph_facts(path: Path) -> dict[str, Any]:
    """Input/output declarations and op counts of an ONNX file, read without its weights' data.

    Raises ValueError naming the file when it is not a readable ONNX model.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError / ValidationError / OSError
        raise ValueError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None

    def dims(vi: Any) -> list[int | str]:
        return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in vi.type.tensor_type.shape.dim]

    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    initializer_names = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializer_names]
    return {
        "inputs": [(vi.name, dims(vi), vi.type.tensor_type.elem_type) for vi in inputs],
        "outputs": [(vi.name, dims(vi), vi.type.tensor_type.elem_type) for vi in model.graph.output],
        "ops": ops,
        "qdq_nodes": sum(c for op, c in ops.items() if op in QDQ_OPS),
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
    }


def check_onnx_input(path: Path, facts: dict[str, Any], expected: tuple[int, int, int] | None) -> tuple[str, tuple[int, int, int]]:
    """The single input's name and its fixed (C, H, W); ValueError naming the file otherwise."""
    if len(facts["inputs"]) != 1:
        raise ValueError(f"{path}: expected exactly one input (the slice batch), found "
                         f"{[name for name, _, _ in facts['inputs']]}")
    name, shape, _ = facts["inputs"][0]
    fixed = shape[1:]
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in fixed):
        raise ValueError(f"{path}: input {name!r} has shape {shape}; expected (batch, C, H, W) with fixed C, H, W")
    chw = (int(fixed[0]), int(fixed[1]), int(fixed[2]))
    if expected is not None and chw != tuple(expected):
        raise ValueError(f"{path}: input {name!r} is (batch, {chw[0]}, {chw[1]}, {chw[2]}) but the weights' "
                         f"config.json says (batch, {expected[0]}, {expected[1]}, {expected[2]}) — the ONNX file "
                         "was exported for another input size; re-run `cacstream export`")
    return name, chw


def _cuda_index(device: str) -> int:
    _, _, idx = device.partition(":")
    return int(idx) if idx else 0


class OnnxRuntimeBackend:
    """An ``onnxruntime.InferenceSession`` of one model behind the Backend protocol."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, role: str, *, device: str = "cpu", precision: str = "fp32",
                 max_batch_size: int = 16, threads: int = 0, graph_optimization: str = "all",
                 expected_input_shape: tuple[int, int, int] | None = None, keep_on_device: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable(f"onnxruntime is not installed ({e}); pip install onnxruntime") from None
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if graph_optimization not in GRAPH_LEVELS:
            raise ValueError(f"graph_optimization must be one of {GRAPH_LEVELS}, got {graph_optimization!r}")
        self._ort = ort
        self.path = Path(onnx_path)
        facts = onnx_graph_facts(self.path)
        self._input_name, chw = check_onnx_input(self.path, facts, expected_input_shape)
        if precision == "int8" and facts["qdq_nodes"] == 0:
            raise ValueError(f"{self.path}: asked for int8 but the graph holds no quantize/dequantize nodes "
                             "(an FP32 graph); quantize it with the calibration tooling first")
        if precision == "bf16":
            raise BackendUnavailable("onnxruntime backend: bf16 is not offered (use fp32, fp16 or int8 ONNX files)")
        self.facts = facts
        self.role = role
        self.precision = precision
        self.input_shape = chw
        self.max_batch_size = int(max_batch_size)
        self.keep_on_device = bool(keep_on_device)

        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = max(0, int(threads))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only; ORT's warnings about unused initialisers are noise here

        self._on_cuda = device.startswith("cuda")
        if self._on_cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider here "
                                         "(install onnxruntime-gpu matching your CUDA, or use the CPU)")
            self._device_id = _cuda_index(device)
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": self._device_id}), "CPUExecutionProvider"]
        elif device == "cpu":
            self._device_id = 0
            providers = ["CPUExecutionProvider"]
        else:
            raise BackendUnavailable(f"onnxruntime backend: device {device!r} is not supported (cpu or cuda[:N])")
        try:
            self._session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own Fail / InvalidGraph / NoSuchFile types
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from None
        if self._on_cuda and "CUDAExecutionProvider" not in self._session.get_providers():
            raise BackendUnavailable(f"{self.path}: ONNX Runtime fell back to the CPU (CUDA EP failed to initialise)")
        inp = self._session.get_inputs()[0]
        if inp.type not in _ORT_TYPES:
            raise ValueError(f"{self.path}: input {inp.name!r} is {inp.type}; expected float or float16")
        self.input_dtype = _ORT_TYPES[inp.type]
        out = self._session.get_outputs()[0]
        self._output_name = out.name
        self._output_dtype = _ORT_TYPES.get(out.type, "float32")
        tail = out.shape[1:]
        if not all(isinstance(d, int) for d in tail):
            raise ValueError(f"{self.path}: output {out.name!r} has shape {out.shape}; only the batch axis may be dynamic")
        self.output_tail = tuple(int(d) for d in tail)
        self.device = (f"cuda:{self._device_id} ({self._gpu_name()})" if self._on_cuda else "cpu")
        self._lock = threading.Lock()

    def _gpu_name(self) -> str:
        try:
            from cacstream.engine.inference.device_info import gpu_name

            return gpu_name(self._device_id) or "CUDA GPU"
        except Exception:  # noqa: BLE001 - probe/wrap: the message carries the cause
            return "CUDA GPU"

    # ------------------------------------------------------------------------------------- runs

    def _run_host(self, x: np.ndarray) -> np.ndarray:
        out = self._session.run([self._output_name], {self._input_name: x})[0]
        return out.astype(np.float32, copy=False)

    def bind_and_run(self, in_ptr: int, in_shape: tuple[int, ...], out_ptr: int, device_type: str = "cuda") -> None:
        """Run one chunk on caller-owned buffers (IO binding by pointer): the input of ``in_shape``
        (``input_dtype``) at ``in_ptr``, the output (``output_tail``, float) written to ``out_ptr``.
        ``device_type`` "cuda" on a GPU; "cpu" binds host pointers (used by the CPU tests)."""
        out_shape = [int(in_shape[0]), *self.output_tail]
        device_id = self._device_id if device_type == "cuda" else 0
        binding = self._session.io_binding()
        binding.bind_input(self._input_name, device_type, device_id, np.dtype(self.input_dtype),
                           [int(s) for s in in_shape], int(in_ptr))
        binding.bind_output(self._output_name, device_type, device_id, np.dtype(self._output_dtype),
                            out_shape, int(out_ptr))
        self._session.run_with_iobinding(binding)

    def _run_bound(self, x: Any, family: str) -> Any:
        """IO binding on device pointers: input and output stay on the GPU."""
        out_shape = (int(x.shape[0]), *self.output_tail)
        if family == "torch_cuda":
            import torch

            torch.cuda.current_stream(x.device).synchronize()  # the producer's writes must land first
            x = x.contiguous()
            out = torch.empty(out_shape, dtype=getattr(torch, self._output_dtype), device=x.device)
            self.bind_and_run(x.data_ptr(), tuple(x.shape), out.data_ptr())
        else:
            import cupy

            cupy.cuda.get_current_stream().synchronize()
            x = cupy.ascontiguousarray(x)
            out = cupy.empty(out_shape, dtype=self._output_dtype)
            self.bind_and_run(x.data.ptr, tuple(x.shape), out.data.ptr)
        return out

    def _prepare_host(self, batch: Any, family: str) -> np.ndarray:
        if family == "torch_cpu":
            batch = batch.detach().numpy()
        elif family in ("torch_cuda", "cupy"):
            batch = batch.detach().cpu().numpy() if family == "torch_cuda" else batch.get()
        return np.ascontiguousarray(batch, dtype=np.dtype(self.input_dtype))

    def infer(self, batch: Any) -> InferenceResult:
        t0 = time.perf_counter()
        n = check_batch_shape(tuple(batch.shape), self.input_shape, f"{self.path.name}")
        family = array_family(batch)
        with self._lock:
            if n == 0:
                logits: Any = np.zeros((0, *self.output_tail), np.float32)
            elif self._on_cuda and family in ("torch_cuda", "cupy"):
                if family == "torch_cuda" and str(batch.dtype) != f"torch.{self.input_dtype}":
                    batch = batch.to(getattr(__import__("torch"), self.input_dtype))
                elif family == "cupy" and str(batch.dtype) != self.input_dtype:
                    batch = batch.astype(self.input_dtype)
                parts = [self._run_bound(batch[a:b], family) for a, b in chunk_bounds(n, self.max_batch_size)]
                if family == "torch_cuda":
                    import torch

                    dev_out = parts[0] if len(parts) == 1 else torch.cat(parts)
                    dev_out = dev_out.float()
                    logits = dev_out if self.keep_on_device else dev_out.cpu().numpy()
                else:
                    import cupy

                    dev_out = (parts[0] if len(parts) == 1 else cupy.concatenate(parts)).astype(cupy.float32)
                    logits = dev_out if self.keep_on_device else cupy.asnumpy(dev_out)
            else:
                x = self._prepare_host(batch, family)
                parts_h = [self._run_host(x[a:b]) for a, b in chunk_bounds(n, self.max_batch_size)]
                logits = parts_h[0] if len(parts_h) == 1 else np.concatenate(parts_h)
        return InferenceResult(logits, n, self.precision, self.device, self.name,
                               (time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        self._session = None
