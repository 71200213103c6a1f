"""One function per preprocessing operation, run on the device where the data lives.

* numpy array            -> C++ twins (``cpu_backend``), results are numpy arrays.
* torch CPU tensor       -> C++ twins on a zero-copy numpy view; results are torch tensors sharing
                            the numpy buffers (``torch.from_numpy``).
* CuPy array             -> CUDA kernels (``cupy_backend``), results are CuPy arrays on the same
                            device, computed on CuPy's current stream.
* torch CUDA tensor      -> CUDA kernels on a zero-copy CuPy view (DLPack), on torch's current
                            stream; results handed back as torch tensors through DLPack (no copy).

Anything else array-like goes through ``np.asarray``. Semantics: ``kernels/reference.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from . import cpu_backend
from .config import PreprocessConfig
from .reference import PreprocessResult

Array = Any  # numpy.ndarray | cupy.ndarray | torch.Tensor


def _torch() -> Any:
    return sys.modules.get("torch")


def _cupy() -> Any:
    return sys.modules.get("cupy")


def _family(x: Any) -> str:
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch_cuda" if x.is_cuda else ("torch_cpu" if x.device.type == "cpu" else "torch_other")
    cupy = _cupy()
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    return "numpy"


def _gpu_backend() -> Any:
    try:
        from . import cupy_backend
    except ImportError as exc:
        raise RuntimeError(
            "GPU arrays need CuPy: install cacstream[cupy] (cupy-cuda12x) matching your CUDA driver"
        ) from exc
    return cupy_backend


class _Route:
    """Converts an input to the backend's array type and results back to the input's type."""

    def __init__(self, x: Any) -> None:
        self.family = _family(x)
        if self.family == "torch_other":
            raise TypeError(f"tensors on device {x.device} are not supported (CPU or CUDA only)")

    def to_backend(self, x: Any) -> Any:
        if self.family == "numpy":
            return x if isinstance(x, np.ndarray) else np.asarray(x)
        if self.family == "torch_cpu":
            return x.detach().numpy()
        if self.family == "cupy":
            return x
        cupy = __import__("cupy")
        return cupy.from_dlpack(x.detach())

    def from_backend(self, y: Any) -> Any:
        if self.family == "torch_cpu":
            return _torch().from_numpy(y)
        if self.family == "torch_cuda":
            return _torch().from_dlpack(y)
        return y

    @property
    def backend(self) -> Any:
        return cpu_backend if self.family in ("numpy", "torch_cpu") else _gpu_backend()

    def context(self, x: Any) -> AbstractContextManager[Any]:
        """GPU input runs on its own device: a CuPy array on CuPy's current stream there, a torch
        CUDA tensor on torch's current stream (so it orders with the torch work around it)."""
        if self.family == "cupy":
            return x.device
        if self.family != "torch_cuda":
            return nullcontext()
        return _gpu_backend().torch_stream_context(x)


def _run(x: Any, fn: Callable[[Any, Any], Any]) -> Any:
    route = _Route(x)
    with route.context(x):
        result = fn(route.backend, route.to_backend(x))
        if isinstance(result, tuple):
            return type(result)(*(route.from_backend(r) for r in result))
        return route.from_backend(result)


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    oh, ow = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if oh < 1 or ow < 1:
        raise ValueError(f"output size must be >= 1, got {(oh, ow)}")
    return int(oh), int(ow)


def to_hu(
    stored: Array,
    slope: float | Any = 1.0,
    intercept: float | Any = 0.0,
    *,
    bits_stored: int | None = None,
    signed: bool | None = None,
    threads: int = 0,
) -> Array:
    """Stored int16/uint16 (or float32) slices -> float32 HU, same shape, on the input's device.

    slope/intercept: scalars or one value per slice (RescaleSlope/RescaleIntercept).
    bits_stored: BitsStored (default 16); the bits above it are ignored. signed: PixelRepresentation
    == 1 (default: the dtype's signedness). threads: CPU threads (0 = all).
    """
    return _run(stored, lambda be, x: be.to_hu(x, slope, intercept, bits_stored, signed, threads))


def hu_minmax(hu: Array, *, threads: int = 0) -> Array:
    """Per-slice [min, max] of float32 HU (N, H, W) or (H, W) -> (N, 2) float32."""
    return _run(hu, lambda be, x: be.stats(x, PreprocessConfig(), threads)[0])


def calcium_counts(hu: Array, config: PreprocessConfig | None = None, *, threads: int = 0) -> Array:
    """Per-slice calcium-candidate count (N,) int32 (see PreprocessConfig.body_threshold_hu)."""
    cfg = config or PreprocessConfig()
    return _run(hu, lambda be, x: be.stats(x, cfg, threads)[1])


def normalise(hu: Array, config: PreprocessConfig | None = None, *, threads: int = 0) -> Array:
    """float32 HU -> [-1, 1] per ``config.normalisation`` (per-slice min-max or fixed window)."""
    cfg = config or PreprocessConfig()
    return _run(hu, lambda be, x: be.normalise_config(x, cfg, threads))


def resize(image: Array, size: int | tuple[int, int], *, antialias: bool = True, threads: int = 0) -> Array:
    """float32 (N, H, W) or (H, W) -> (N, oh, ow): bilinear, half-pixel centres (torch
    ``F.interpolate(mode="bilinear", align_corners=False, antialias=antialias)``)."""
    oh_ow = _size2(size)
    return _run(image, lambda be, x: be.resize(x, oh_ow, antialias, threads))


def preprocess(
    stored: Array,
    slope: float | Any = 1.0,
    intercept: float | Any = 0.0,
    *,
    config: PreprocessConfig | None = None,
    bits_stored: int | None = None,
    signed: bool | None = None,
    threads: int = 0,
    out: Array | None = None,
) -> PreprocessResult:
    """The common path, fused: stored slices -> (model_input, hu_minmax, calcium_counts).

    model_input: (N, 1, S, S) ``config.output_dtype`` in [-1, 1], S = ``config.input_size``.
    hu_minmax: (N, 2) float32 HU min/max per slice (full resolution). calcium_counts: (N,) int32
    candidates per slice; a slice with 0 cannot hold calcium at ``config.calcium_threshold_hu``.
    ``out``: optional preallocated model_input of the same array family (e.g. pinned memory).
    Raises ValueError naming the slices if any HU value is NaN or infinite (float input).
    """
    cfg = config or PreprocessConfig()

    def go(be: Any, x: Any) -> Any:
        o = None if out is None else _Route(out).to_backend(out)
        return be.preprocess(x, slope, intercept, cfg, bits_stored, signed, threads, o)

    return _run(stored, go)
