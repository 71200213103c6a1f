"""TensorRT backend: a deserialised ``.plan`` executed with ``execute_async_v3`` on its own stream.

Written against the name-based tensor API that TensorRT 10 introduced and TensorRT 11 keeps
(``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_dtype`` /
``get_tensor_profile_shape`` on the engine; ``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3`` on the context). Engines come from :mod:`cacstream.engine.inference.engines`,
which refuses stale ones.

Buffers and streams come from torch (CUDA build) or, failing that, CuPy — whichever the process
has; the kernels' preprocessing produces either. Zero copy: a device batch of the engine's input
dtype is bound by its pointer as it is (a chunk of a contiguous batch is contiguous); only a host
batch is copied up, and only a dtype mismatch (float32 input, float16 engine) costs a cast on the
device. The engine runs on the backend's stream, which first waits for the producer's current
stream (so preprocessing finished), and the consumer's stream waits for the engine's before device
outputs are handed back.
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


def _cuda_index(device: str) -> int:
    _, _, idx = device.partition(":")
    return int(idx) if idx else 0


class _TorchOps:
    """Device buffers and streams through torch (CUDA build)."""

    def __init__(self, index: int) -> None:
        import torch

        self.torch = torch
        self.dev = torch.device("cuda", index)

    def device_context(self) -> Any:
        return self.torch.cuda.device(self.dev)

    def new_stream(self) -> Any:
        return self.torch.cuda.Stream(self.dev)

    @staticmethod
    def handle(stream: Any) -> int:
        return int(stream.cuda_stream)

    def wait_for_current(self, stream: Any) -> None:
        stream.wait_stream(self.torch.cuda.current_stream(self.dev))

    def current_waits_for(self, stream: Any) -> None:
        self.torch.cuda.current_stream(self.dev).wait_stream(stream)

    def to_device(self, batch: Any, dtype: np.dtype) -> Any:
        torch = self.torch
        tdtype = getattr(torch, np.dtype(dtype).name)
        family = array_family(batch)
        if family == "numpy":
            t = torch.from_numpy(np.ascontiguousarray(batch, dtype=dtype)).to(self.dev)
        elif family == "cupy":
            t = torch.from_dlpack(batch)
        else:
            t = batch.to(self.dev)
        return t.to(tdtype).contiguous()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        return self.torch.empty(shape, dtype=getattr(self.torch, np.dtype(dtype).name), device=self.dev)

    @staticmethod
    def ptr(t: Any) -> int:
        return int(t.data_ptr())

    @staticmethod
    def keep_alive(t: Any, stream: Any) -> None:
        t.record_stream(stream)  # the caching allocator must not reuse it before the stream is done

    @staticmethod
    def synchronize(stream: Any) -> None:
        stream.synchronize()

    @staticmethod
    def to_host_f32(t: Any) -> np.ndarray:
        return t.float().cpu().numpy()

    @staticmethod
    def to_f32(t: Any) -> Any:
        return t.float()


class _CupyOps:
    """Device buffers and streams through CuPy (no CUDA torch in the process)."""

    def __init__(self, index: int) -> None:
        import cupy

        self.cp = cupy
        self.index = index

    def device_context(self) -> Any:
        return self.cp.cuda.Device(self.index)

    def new_stream(self) -> Any:
        with self.cp.cuda.Device(self.index):
            return self.cp.cuda.Stream(non_blocking=True)

    @staticmethod
    def handle(stream: Any) -> int:
        return int(stream.ptr)

    def wait_for_current(self, stream: Any) -> None:
        stream.wait_event(self.cp.cuda.get_current_stream().record())

    def current_waits_for(self, stream: Any) -> None:
        self.cp.cuda.get_current_stream().wait_event(stream.record())

    def to_device(self, batch: Any, dtype: np.dtype) -> Any:
        family = array_family(batch)
        if family == "torch_cuda":
            batch = self.cp.from_dlpack(batch)
        elif family == "torch_cpu":
            batch = batch.numpy()
        return self.cp.ascontiguousarray(self.cp.asarray(batch), dtype=dtype)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        return self.cp.empty(shape, dtype=dtype)

    @staticmethod
    def ptr(a: Any) -> int:
        return int(a.data.ptr)

    @staticmethod
    def keep_alive(a: Any, stream: Any) -> None:
        return None  # CuPy frees asynchronously on the current stream; we synchronise before returning host data

    @staticmethod
    def synchronize(stream: Any) -> None:
        stream.synchronize()

    def to_host_f32(self, a: Any) -> np.ndarray:
        return self.cp.asnumpy(a).astype(np.float32, copy=False)

    @staticmethod
    def to_f32(a: Any) -> Any:
        return a.astype("float32")


def _device_ops(index: int) -> _TorchOps | _CupyOps:
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchOps(index)
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return _CupyOps(index)
    except Exception:  # noqa: BLE001, S110 - no GPU here: try the next probe
        pass
    raise BackendUnavailable("TensorRT needs device buffers from a CUDA build of torch or from CuPy; neither sees a GPU")


class TensorRTBackend:
    """A TensorRT engine (``.plan``) of one model behind the Backend protocol."""

    name = "tensorrt"

    def __init__(self, plan_path: Path, role: str, *, device: str = "cuda:0", precision: str = "fp16",
                 expected_input_shape: tuple[int, int, int] | None = None, max_batch_size: int | None = None,
                 keep_on_device: bool = False) -> None:
        from cacstream.engine.inference.engines import import_tensorrt, trt_logger

        trt = import_tensorrt()
        if not device.startswith("cuda"):
            raise BackendUnavailable(f"TensorRT runs on CUDA GPUs only, not on {device!r}")
        self._trt = trt
        self.path = Path(plan_path)
        if not self.path.is_file():
            raise BackendUnavailable(f"{self.path}: no TensorRT engine; build it with `cacstream build-engines`")
        index = _cuda_index(device)
        self._ops = _device_ops(index)
        with self._ops.device_context():
            self._runtime = trt.Runtime(trt_logger(trt))
            self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self._engine is None:
                raise ValueError(f"{self.path}: TensorRT {trt.__version__} cannot deserialise it (built by another "
                                 "TensorRT version or for another GPU?) — rebuild with `cacstream build-engines`")
            self._context = self._engine.create_execution_context()
            self._stream = self._ops.new_stream()
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        ins = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise ValueError(f"{self.path}: expected one input and one output tensor, found {ins} and {outs}")
        self._in, self._out = ins[0], outs[0]
        shape = tuple(int(d) for d in eng.get_tensor_shape(self._in))
        if len(shape) != 4:
            raise ValueError(f"{self.path}: input {self._in!r} has shape {shape}; expected (batch, C, H, W)")
        chw = (shape[1], shape[2], shape[3])
        if expected_input_shape is not None and chw != tuple(expected_input_shape):
            raise ValueError(f"{self.path}: engine input is (batch, {chw[0]}, {chw[1]}, {chw[2]}) but the weights' "
                             f"config.json says (batch, {', '.join(map(str, expected_input_shape))}); rebuild the engine")
        _min, _opt, prof_max = eng.get_tensor_profile_shape(self._in, 0)
        self.engine_max_batch = int(prof_max[0])
        self.max_batch_size = min(self.engine_max_batch, int(max_batch_size)) if max_batch_size else self.engine_max_batch
        self._in_dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(self._in)))
        self._out_dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(self._out)))
        out_shape = tuple(int(d) for d in eng.get_tensor_shape(self._out))
        if any(d < 0 for d in out_shape[1:]):
            raise ValueError(f"{self.path}: output {self._out!r} has shape {out_shape}; only the batch axis may be dynamic")
        self.output_tail = out_shape[1:]
        self.role = role
        self.precision = precision
        self.input_shape = chw
        self.input_dtype = self._in_dtype.name
        self.keep_on_device = bool(keep_on_device)
        from cacstream.engine.inference.device_info import gpu_name

        self.device = f"cuda:{index} ({gpu_name(index) or 'CUDA GPU'})"
        self._lock = threading.Lock()

    def infer(self, batch: Any) -> InferenceResult:
        t0 = time.perf_counter()
        n = check_batch_shape(tuple(batch.shape), self.input_shape, f"{self.path.name}")
        ops, ctx = self._ops, self._context
        with self._lock, ops.device_context():
            if n == 0:
                return InferenceResult(np.zeros((0, *self.output_tail), np.float32), 0, self.precision, self.device,
                                       self.name, (time.perf_counter() - t0) * 1000.0)
            x = ops.to_device(batch, self._in_dtype)  # no copy when already a contiguous device array of that dtype
            out = ops.empty((n, *self.output_tail), self._out_dtype)
            ops.wait_for_current(self._stream)  # preprocessing (on the producer's stream) has finished
            c, h, w = self.input_shape
            for a, b in chunk_bounds(n, self.max_batch_size):
                if not ctx.set_input_shape(self._in, (b - a, c, h, w)):
                    raise RuntimeError(f"{self.path}: batch {b - a} is outside the engine's profile (max {self.engine_max_batch})")
                ctx.set_tensor_address(self._in, ops.ptr(x[a:b]))
                ctx.set_tensor_address(self._out, ops.ptr(out[a:b]))
                if not ctx.execute_async_v3(ops.handle(self._stream)):
                    raise RuntimeError(f"{self.path}: execute_async_v3 failed (see the TensorRT log)")
            if self.keep_on_device:
                ops.keep_alive(x, self._stream)
                ops.keep_alive(out, self._stream)
                ops.current_waits_for(self._stream)
                logits: Any = ops.to_f32(out)
            else:
                ops.synchronize(self._stream)
                logits = ops.to_host_f32(out)
        return InferenceResult(logits, n, self.precision, self.device, self.name, (time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
