"""cacstream.kernels: stored DICOM values -> model input, on the device where the data lives.

Public API (numpy, torch or CuPy arrays in; the same kind out, on the same device)::

    preprocess(stored, slope, intercept, *, config, bits_stored, signed) -> PreprocessResult
        (model_input (N,1,S,S), hu_minmax (N,2), calcium_counts (N,))   # the fused common path
    to_hu(stored, slope, intercept, *, bits_stored, signed) -> float32 HU
    hu_minmax(hu) -> (N,2);  calcium_counts(hu, config) -> (N,)
    normalise(hu, config) -> [-1, 1];  resize(image, size, *, antialias) -> (N,oh,ow)
    StagingRing  (GPU: pinned host buffers + CUDA streams so host->device copies overlap compute)

Semantics are defined once, in ``reference.py`` (numpy) and ``common/preprocess_math.h`` (shared
by the CUDA kernels in ``cuda/`` and the C++ twins in ``cpu/``). Attributes load lazily so that
importing ``cacstream.kernels.config`` stays free of numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import PreprocessConfig

if TYPE_CHECKING:  # pragma: no cover
    from .cupy_backend import StagingRing
    from .dispatch import calcium_counts, hu_minmax, normalise, preprocess, resize, to_hu
    from .reference import PreprocessResult

_LAZY = {
    "preprocess": "dispatch",
    "to_hu": "dispatch",
    "hu_minmax": "dispatch",
    "calcium_counts": "dispatch",
    "normalise": "dispatch",
    "resize": "dispatch",
    "PreprocessResult": "reference",
    "StagingRing": "cupy_backend",
}

__all__ = ["PreprocessConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cacstream.kernels' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
