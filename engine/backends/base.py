"""The one call every inference backend answers: preprocessed slices in, logits out, and how it ran.

DESIGN.md: "Every backend answers the same call: a batch of preprocessed slices in, logits out,
with the batch size, precision and device it ran on reported." The engine never branches on the
backend type; it only sees this protocol.

Shared rules of every implementation (tests/test_backends.py holds them to it):

* ``infer`` takes any number of slices N >= 0 and splits them into chunks of at most
  ``max_batch_size`` itself (a 57-slice series through a 16-slice engine is 4 calls inside);
  ``InferenceResult.batch_size`` is N.
* the input is (N, C, H, W) with (C, H, W) == ``input_shape``; anything else is a ``ValueError``
  naming the expected and the received shape (never a silent broadcast or resize).
* ``logits`` is host float32 numpy unless the backend was built with ``keep_on_device=True``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Precision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
ModelRole = Literal["filter", "segmenter"]
ROLES: tuple[str, ...] = ("filter", "segmenter")


@dataclass(frozen=True)
class InferenceResult:
    """Logits of one batch plus the facts of the run (for reports and benchmarks).

    ``logits`` is a host numpy array (float32) unless the caller asked the backend to keep outputs
    on the device, in which case it is the backend's device array (CuPy / torch CUDA).
    """

    logits: Any
    batch_size: int
    precision: str
    device: str
    backend: str
    elapsed_ms: float


@runtime_checkable
class Backend(Protocol):
    """A compiled/loaded model of one role (slice filter or segmenter)."""

    name: str  # "torch" | "onnxruntime" | "tensorrt"
    role: ModelRole
    precision: str
    device: str  # e.g. "cpu", "cuda:0 (NVIDIA H100 80GB HBM3)"
    input_shape: tuple[int, int, int]  # (C, H, W) the model expects; batch is the free axis
    input_dtype: str  # "float32" | "float16": what preprocessing should produce for this backend
    max_batch_size: int

    def infer(self, batch: Any) -> InferenceResult:
        """Run the model on an (N, C, H, W) batch (numpy, or a device array on GPU backends)."""
        ...

    def close(self) -> None:
        """Release sessions, engines and device memory."""
        ...


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (library missing, no GPU, no compiled engine)."""


def to_numpy_f32(x: Any) -> np.ndarray:
    """Host float32 copy of a numpy / torch / CuPy array (for callers that want numpy)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    if hasattr(x, "detach"):  # torch
        return x.detach().float().cpu().numpy()
    if hasattr(x, "get"):  # cupy
        return np.asarray(x.get(), dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


def array_family(x: Any) -> str:
    """"numpy", "torch_cpu", "torch_cuda" or "cupy" — where an input batch lives (no imports)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch_cuda" if x.is_cuda else "torch_cpu"
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    return "numpy"


def check_batch_shape(shape: tuple[int, ...], input_shape: tuple[int, int, int], where: str) -> int:
    """Validate an (N, C, H, W) batch shape against the model's (C, H, W); returns N."""
    if len(shape) != 4 or tuple(int(s) for s in shape[1:]) != tuple(input_shape):
        raise ValueError(f"{where}: expected a batch of shape (N, {', '.join(map(str, input_shape))}), "
                         f"got {tuple(int(s) for s in shape)}")
    return int(shape[0])


def chunk_bounds(n: int, max_batch: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive chunks of at most ``max_batch`` covering range(n)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    for start in range(0, n, max_batch):
        yield start, min(n, start + max_batch)
