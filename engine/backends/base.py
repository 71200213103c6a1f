"""The one call every inference backend answers: preprocessed slices in, logits out, and how it ran.

DESIGN.md: "Every backend answers the same call: a batch of preprocessed slices in, logits out,
with the batch size, precision and device it ran on reported." The engine never branches on the
backend type; it only sees this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Precision = Literal["fp32", "fp16", "bf16", "int8"]
ModelRole = Literal["filter", "segmenter"]


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
