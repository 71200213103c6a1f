"""PyTorch backend: the eager reference on CPU, autocast + CUDA graphs on a GPU.

Why each choice:

* ``torch.inference_mode`` always: no autograd bookkeeping, and tensors cannot leak into training.
* CPU: fp32 (the reference every other backend is checked against) or bf16 autocast (CPUs with
  AVX512-BF16/AMX; slower than fp32 on CPUs without them). fp16 and int8 are not offered on CPU:
  PyTorch has no fast CPU fp16 path, and int8 Q/DQ graphs are served by ONNX Runtime.
* CUDA: fp16 / bf16 autocast (weights stay fp32, matmuls and convolutions run in the low
  precision, outputs come back as float32). The models have static shapes apart from the batch, so
  each batch-size bucket (powers of two up to ``max_batch_size``, plus ``max_batch_size``) is
  captured once as a CUDA graph and replayed: a launch per batch instead of hundreds. A partial
  chunk is zero-padded up to its bucket; both models treat slices independently in eval mode
  (BatchNorm uses running statistics), so padding never changes a real slice's logits.
* Threads: ``threads=None`` uses torch's process-wide setting. A number applies to this backend's
  calls only (set on entry, restored on exit), because the setting is global to the process and the
  pipeline shares it with decoding threads. On a busy 2-core workstation ``threads=1`` avoids
  OpenMP workers spinning against the decoder for the one free core: with the other core loaded,
  a tiny U-Net batch took 0.2-1.2 s with 2 threads and 4-14 ms with 1 (torch 2.13, AMD EPYC).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np

from cacstream.engine.backends.base import (
    BackendUnavailable,
    InferenceResult,
    array_family,
    check_batch_shape,
    chunk_bounds,
)

CPU_PRECISIONS = ("fp32", "bf16")
CUDA_PRECISIONS = ("fp32", "fp16", "bf16")


def graph_buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes that get a captured CUDA graph: 1, 2, 4, ... below ``max_batch``, and ``max_batch``."""
    sizes = {max_batch}
    b = 1
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket >= n (n never exceeds the largest bucket: chunks are cut at max_batch)."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"chunk of {n} exceeds the largest graph bucket {buckets[-1]}")


def _device_label(device: Any) -> str:
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


class TorchBackend:
    """One eval-mode ``nn.Module`` (slice filter or U-Net) behind the Backend protocol."""

    name = "torch"

    def __init__(self, module: Any, role: str, input_shape: tuple[int, int, int], *, device: str = "cpu",
                 precision: str = "fp32", max_batch_size: int = 16, cuda_graphs: bool = True,
                 threads: int | None = None, keep_on_device: bool = False,
                 output_tail: tuple[int, ...] | None = None) -> None:
        import torch

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch backend on {device}: this PyTorch build sees no CUDA device "
                                     f"(torch {torch.__version__})")
        if dev.type not in ("cpu", "cuda"):
            raise BackendUnavailable(f"torch backend: device {device!r} is not supported (cpu or cuda)")
        allowed = CUDA_PRECISIONS if dev.type == "cuda" else CPU_PRECISIONS
        if precision not in allowed:
            hint = ("int8 Q/DQ graphs run on --backend onnxruntime or tensorrt" if precision == "int8"
                    else "use fp32 or bf16 on a CPU")
            raise BackendUnavailable(f"torch backend: precision {precision!r} is not available on {dev.type} "
                                     f"(choose from {', '.join(allowed)}; {hint})")
        if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise BackendUnavailable(f"torch backend: {torch.cuda.get_device_name(dev)} has no bf16 support; use fp16")
        self.threads = int(threads) if threads is not None and threads > 0 else None
        self.role = role
        self.precision = precision
        self.input_shape = tuple(int(s) for s in input_shape)  # type: ignore[assignment]
        self.input_dtype = "float32"
        self.max_batch_size = int(max_batch_size)
        self.keep_on_device = bool(keep_on_device and dev.type == "cuda")
        self._torch = torch
        self._dev = dev
        self.device = _device_label(dev)
        self._module = module.eval().to(dev)
        for p in self._module.parameters():
            p.requires_grad_(False)
        self._lock = threading.Lock()
        self._use_graphs = bool(cuda_graphs and dev.type == "cuda")
        self._buckets = graph_buckets(self.max_batch_size)
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}
        self.output_tail = tuple(output_tail) if output_tail is not None else self._probe_output_tail()

    # ----------------------------------------------------------------------------------- helpers

    @contextmanager
    def _thread_scope(self) -> Iterator[None]:
        """Run with ``self.threads`` intra-op threads, restoring the process setting afterwards."""
        if self.threads is None or self._dev.type != "cpu":
            yield
            return
        before = self._torch.get_num_threads()
        self._torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            self._torch.set_num_threads(before)

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.precision == "fp32":
            return nullcontext()
        dtype = self._torch.bfloat16 if self.precision == "bf16" else self._torch.float16
        # no weight-cast cache: it must be off under CUDA graph capture (torch.cuda.graphs docs), and
        # in inference mode the casts are recomputed per call either way
        return self._torch.autocast(device_type=self._dev.type, dtype=dtype, cache_enabled=False)

    def _forward(self, x: Any) -> Any:
        with self._autocast():
            return self._module(x).float()

    def _probe_output_tail(self) -> tuple[int, ...]:
        torch = self._torch
        with self._thread_scope(), torch.inference_mode():
            y = self._forward(torch.zeros((1, *self.input_shape), device=self._dev))
        return tuple(int(s) for s in y.shape[1:])

    def _to_tensor(self, batch: Any) -> Any:
        torch = self._torch
        family = array_family(batch)
        if family == "numpy":
            t = torch.from_numpy(np.ascontiguousarray(batch))
        elif family == "cupy":
            t = torch.from_dlpack(batch)
        else:
            t = batch
        if t.device != self._dev:
            t = t.to(self._dev, non_blocking=True)
        return t if t.dtype == torch.float32 else t.float()

    def _graph(self, bucket: int) -> tuple[Any, Any, Any]:
        """(graph, static input, static output) for a bucket, captured on first use."""
        if bucket in self._graphs:
            return self._graphs[bucket]
        torch = self._torch
        static_in = torch.zeros((bucket, *self.input_shape), device=self._dev)
        side = torch.cuda.Stream(self._dev)
        side.wait_stream(torch.cuda.current_stream(self._dev))
        with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN autotune, allocator)
            for _ in range(3):
                self._forward(static_in)
        torch.cuda.current_stream(self._dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(static_in)
        self._graphs[bucket] = (graph, static_in, static_out)
        return self._graphs[bucket]

    def _run_chunk(self, x: Any) -> Any:
        if not self._use_graphs:
            return self._forward(x)
        n = int(x.shape[0])
        graph, static_in, static_out = self._graph(bucket_for(n, self._buckets))
        static_in[:n].copy_(x)
        if n < static_in.shape[0]:
            static_in[n:].zero_()
        graph.replay()
        return static_out[:n].clone()

    # ---------------------------------------------------------------------------------- protocol

    def infer(self, batch: Any) -> InferenceResult:
        t0 = time.perf_counter()
        n = check_batch_shape(tuple(batch.shape), self.input_shape, f"torch {self.role}")
        torch = self._torch
        with self._lock, self._thread_scope(), torch.inference_mode():
            if n == 0:
                out = torch.zeros((0, *self.output_tail), device=self._dev)
            else:
                x = self._to_tensor(batch)
                parts = [self._run_chunk(x[a:b]) for a, b in chunk_bounds(n, self.max_batch_size)]
                out = parts[0] if len(parts) == 1 else torch.cat(parts)
            logits: Any = out if self.keep_on_device else out.cpu().numpy().astype(np.float32, copy=False)
        return InferenceResult(logits, n, self.precision, self.device, self.name,
                               (time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        self._graphs.clear()
        self._module = None
