"""CuPy arrays -> the CUDA kernels in ``kernels/cuda/*.cu`` (compiled once per process and device).

The sources ship inside the package and are compiled at first use with NVRTC through
``cupy.RawModule`` (text and options from ``cuda_sources``, which the CPU test suite compiles too; CuPy caches the
binary on disk). Kernels run on CuPy's current stream; nothing here synchronises
except the non-finite check of float32 input (integer input cannot produce a non-finite HU).

:class:`StagingRing` moves numpy batches to the GPU through pinned host buffers on their own CUDA
streams, so the host→device copy of one batch overlaps the kernels of the previous one.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cupy
import numpy as np

from .config import PreprocessConfig
from .cuda_sources import KERNELS, NVRTC_OPTIONS, source_text
from .reference import PreprocessResult, per_slice, stored_format

_BLOCK = 256
_SUFFIX = {np.dtype(np.int16): "i16", np.dtype(np.uint16): "u16", np.dtype(np.float32): "f32"}


@functools.lru_cache(maxsize=None)
def _module(name: str, device_id: int) -> Any:
    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=source_text(name), options=NVRTC_OPTIONS, backend="nvrtc")


def kernel(module: str, function: str) -> Any:
    """A compiled kernel of ``cuda/<module>`` on the current device (compiled once, then cached)."""
    if function not in KERNELS[module]:
        raise ValueError(f"{function} is not listed in cuda_sources.KERNELS[{module!r}]")
    return _module(module, cupy.cuda.Device().id).get_function(function)


@functools.lru_cache(maxsize=None)
def _sm_count(device_id: int) -> int:
    return int(cupy.cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"])


@functools.lru_cache(maxsize=64)
def _taps_cached(in_size: int, out_size: int, antialias: bool, device_id: int) -> tuple[Any, Any, int]:
    from .reference import resample_width

    width = resample_width(in_size, out_size, antialias)
    with cupy.cuda.Device(device_id):
        idx = cupy.empty((out_size, width), cupy.int32)
        w = cupy.empty((out_size, width), cupy.float32)
        kernel("resample.cu", "cac_taps")(
            (math.ceil(out_size / _BLOCK),), (_BLOCK,),
            (np.int32(in_size), np.int32(out_size), np.int32(int(antialias)), np.int32(width), idx, w),
        )
        # cached and then read from any stream (e.g. both StagingRing slots): make sure the values
        # exist before anyone else can launch on them (once per size pair and device)
        cupy.cuda.get_current_stream().synchronize()
    return idx, w, width


def resample_taps(in_size: int, out_size: int, antialias: bool) -> tuple[Any, Any]:
    """(idx, w) of one axis as computed on the GPU by the shared header (for tests)."""
    idx, w, _ = _taps_cached(in_size, out_size, bool(antialias), cupy.cuda.Device().id)
    return idx, w


# ------------------------------------------------------------------------------------------------
# Input handling
# ------------------------------------------------------------------------------------------------
def _batch(a: Any, name: str) -> Any:
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (rows, columns) or (slices, rows, columns), got shape {a.shape}")
    if a.shape[1] < 1 or a.shape[2] < 1:
        raise ValueError(f"{name} has an empty slice: shape {a.shape}")
    return a if a.flags.c_contiguous else cupy.ascontiguousarray(a)


def stored_batch(stored: Any) -> Any:
    if np.dtype(stored.dtype) not in _SUFFIX:
        raise TypeError(f"stored values must be int16, uint16 or float32 (HU), got {stored.dtype}")
    return _batch(stored, "stored")


def float_batch(a: Any, name: str) -> Any:
    if a.dtype != cupy.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype}")
    return _batch(a, name)


def _format_args(batch: Any, bits_stored: int | None, signed: bool | None) -> tuple[int, bool]:
    if batch.dtype == cupy.float32:
        if bits_stored is not None or signed is not None:
            raise ValueError("bits_stored/signed apply to integer stored values, not float32 input")
        return 16, True
    return stored_format(np.dtype(batch.dtype), bits_stored, signed)


def _per_slice_device(values: Any, n: int, name: str) -> Any:
    if isinstance(values, cupy.ndarray):
        values = cupy.asnumpy(values)
    return cupy.asarray(per_slice(values, n, name))


def _stats_launch(batch: Any, slope: Any, intercept: Any, bits: int, sgn: bool,
                  config: PreprocessConfig) -> tuple[Any, Any, Any, Any]:
    """(minmax (n,2), counts (n,), nonfinite (n,), params (n,3)) on the current stream."""
    n, h, w = batch.shape
    acc = cupy.empty((n, 4), cupy.uint32)
    kernel("stats.cu", "cac_stats_init")((math.ceil(n / _BLOCK),), (_BLOCK,), (acc, np.int32(n)))
    plane = h * w
    blocks = max(1, min(math.ceil(plane / _BLOCK), math.ceil(8 * _sm_count(cupy.cuda.Device().id) / n)))
    kernel("stats.cu", f"cac_stats_{_SUFFIX[np.dtype(batch.dtype)]}")(
        (blocks, n), (_BLOCK,),
        (batch, np.int32(h), np.int32(w), np.int32(bits), np.int32(int(sgn)), slope, intercept,
         np.float32(config.calcium_threshold_hu), np.float32(config.body_threshold_hu), acc),
    )
    minmax = cupy.empty((n, 2), cupy.float32)
    counts = cupy.empty(n, cupy.int32)
    nonfinite = cupy.empty(n, cupy.int32)
    params = cupy.empty((n, 3), cupy.float32)
    mode = 0 if config.normalisation == "minmax" else 1
    kernel("stats.cu", "cac_stats_finalize")(
        (math.ceil(n / _BLOCK),), (_BLOCK,),
        (acc, np.int32(n), np.int32(mode), np.float32(config.window_hu[0]), np.float32(config.window_hu[1]),
         minmax, counts, nonfinite, params),
    )
    return minmax, counts, nonfinite, params


def _raise_if_nonfinite(nonfinite: Any) -> None:
    from .cpu_backend import raise_if_nonfinite

    raise_if_nonfinite(cupy.asnumpy(nonfinite))  # synchronises: only called for float32 input


# ------------------------------------------------------------------------------------------------
# Operations (same signatures as cpu_backend)
# ------------------------------------------------------------------------------------------------
def to_hu(stored: Any, slope: Any = 1.0, intercept: Any = 0.0, bits_stored: int | None = None,
          signed: bool | None = None, threads: int = 0) -> Any:
    batch = stored_batch(stored)
    bits, sgn = _format_args(batch, bits_stored, signed)
    n, h, w = batch.shape
    out = cupy.empty(batch.shape, cupy.float32)
    if n:
        plane = h * w
        kernel("resample.cu", f"cac_to_hu_{_SUFFIX[np.dtype(batch.dtype)]}")(
            (min(math.ceil(plane / _BLOCK), 4096), n), (_BLOCK,),
            (batch, np.int64(plane), np.int32(bits), np.int32(int(sgn)),
             _per_slice_device(slope, n, "slope"), _per_slice_device(intercept, n, "intercept"), out),
        )
    return out.reshape(stored.shape)


def stats(hu: Any, config: PreprocessConfig, threads: int = 0) -> tuple[Any, Any]:
    batch = float_batch(hu, "hu")
    n = batch.shape[0]
    if n == 0:
        return cupy.empty((0, 2), cupy.float32), cupy.empty(0, cupy.int32)
    ones, zeros = cupy.ones(n, cupy.float32), cupy.zeros(n, cupy.float32)
    minmax, counts, nonfinite, _ = _stats_launch(batch, ones, zeros, 16, True, config)
    _raise_if_nonfinite(nonfinite)
    return minmax, counts


def normalise_config(hu: Any, config: PreprocessConfig, threads: int = 0) -> Any:
    batch = float_batch(hu, "hu")
    n, h, w = batch.shape
    out = cupy.empty(batch.shape, cupy.float32)
    if n:
        ones, zeros = cupy.ones(n, cupy.float32), cupy.zeros(n, cupy.float32)
        _, _, nonfinite, params = _stats_launch(batch, ones, zeros, 16, True, config)
        _raise_if_nonfinite(nonfinite)
        plane = h * w
        kernel("resample.cu", "cac_normalise")(
            (min(math.ceil(plane / _BLOCK), 4096), n), (_BLOCK,), (batch, np.int64(plane), params, out))
    return out.reshape(hu.shape)


@functools.lru_cache(maxsize=None)
def _placeholder_on(device_id: int) -> Any:
    with cupy.cuda.Device(device_id):
        buf = cupy.zeros(3, cupy.float32)
        cupy.cuda.get_current_stream().synchronize()  # cached, used from any stream (see _taps_cached)
        return buf


def _placeholder() -> Any:
    return _placeholder_on(cupy.cuda.Device().id)


def _resample(kernel_name: str, batch: Any, oh: int, ow: int, antialias: bool, out: Any, bits: int = 16,
              sgn: bool = True, slope: Any = None, intercept: Any = None, params: Any = None) -> None:
    n, h, w = batch.shape
    dev = cupy.cuda.Device().id
    iy, wy, ky = _taps_cached(h, oh, bool(antialias), dev)
    ix, wx, kx = _taps_cached(w, ow, bool(antialias), dev)
    null = _placeholder()  # plain resize reads no slope/intercept/params
    kernel("resample.cu", kernel_name)(
        (math.ceil(oh * ow / _BLOCK), n), (_BLOCK,),
        (batch, np.int32(h), np.int32(w), np.int32(bits), np.int32(int(sgn)),
         null if slope is None else slope, null if intercept is None else intercept,
         null if params is None else params, np.int32(oh), np.int32(ow),
         np.int32(ky), iy, wy, np.int32(kx), ix, wx, out),
    )


def resize(image: Any, size: tuple[int, int], antialias: bool, threads: int = 0) -> Any:
    batch = float_batch(image, "image")
    out = cupy.empty((batch.shape[0], size[0], size[1]), cupy.float32)
    if batch.shape[0]:
        _resample("cac_resize_f32", batch, size[0], size[1], antialias, out)
    return out if image.ndim == 3 else out[0]


def preprocess(stored: Any, slope: Any, intercept: Any, config: PreprocessConfig,
               bits_stored: int | None = None, signed: bool | None = None, threads: int = 0,
               out: Any = None) -> PreprocessResult:
    batch = stored_batch(stored)
    bits, sgn = _format_args(batch, bits_stored, signed)
    n = batch.shape[0]
    size = config.input_size
    out_dtype = np.dtype(config.output_dtype)
    if out is None:
        out = cupy.empty((n, 1, size, size), out_dtype)
    elif np.dtype(out.dtype) != out_dtype or out.shape != (n, 1, size, size) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {out_dtype} array of shape {(n, 1, size, size)}, "
                         f"got {out.dtype} {out.shape}")
    if n == 0:
        return PreprocessResult(out, cupy.empty((0, 2), cupy.float32), cupy.empty(0, cupy.int32))
    s = _per_slice_device(slope, n, "slope")
    b = _per_slice_device(intercept, n, "intercept")
    minmax, counts, nonfinite, params = _stats_launch(batch, s, b, bits, sgn, config)
    if batch.dtype == cupy.float32:
        _raise_if_nonfinite(nonfinite)
    suffix = "f16" if out_dtype == np.float16 else "f32"
    _resample(f"cac_preprocess_{_SUFFIX[np.dtype(batch.dtype)]}_{suffix}", batch, size, size,
              config.antialias, out, bits, sgn, s, b, params)
    return PreprocessResult(out, minmax, counts)


@contextlib.contextmanager
def torch_stream_context(tensor: Any) -> Iterator[None]:
    """Run CuPy work on the tensor's device and on torch's current stream there (ordering with
    the torch work before and after, without a synchronisation)."""
    import torch

    device = tensor.device
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream.cuda_stream, device.index):
        yield


# ------------------------------------------------------------------------------------------------
# Host -> device staging
# ------------------------------------------------------------------------------------------------
@dataclass
class GpuBatch:
    """A batch submitted to :class:`StagingRing`: results on the GPU, ready once ``event`` fired."""

    result: PreprocessResult
    event: Any  # cupy.cuda.Event recorded after the kernels
    stream: Any  # the stream the batch ran on

    def wait(self, stream: Any = None) -> PreprocessResult:
        """Make ``stream`` (default: CuPy's current stream) wait for this batch; returns the result."""
        (stream or cupy.cuda.get_current_stream()).wait_event(self.event)
        return self.result

    def synchronize(self) -> PreprocessResult:
        """Block the host until the batch is done; returns the result."""
        self.event.synchronize()
        return self.result


@dataclass
class _Slot:
    stream: Any
    pinned: Any = None  # cupy.cuda.PinnedMemoryPointer
    pinned_bytes: int = 0
    device_buf: Any = None  # cupy uint8 buffer reused for the stored batch
    done: Any = None  # event after this slot's last kernels
    extra: dict[str, Any] = field(default_factory=dict)


class StagingRing:
    """Double-buffered host→device staging of stored batches (numpy) for :func:`preprocess`.

    ``submit(stored, slope, intercept)`` copies the batch into a pinned host buffer (CPU memcpy),
    starts its asynchronous host→device copy and the preprocessing kernels on the slot's own
    stream, and returns at once with a :class:`GpuBatch`. With ``slots=2`` the copy of batch i+1
    overlaps the kernels of batch i; a slot is reused only after its previous batch finished
    (the host waits on that event), so at most ``slots`` batches are in flight.
    """

    def __init__(self, config: PreprocessConfig | None = None, slots: int = 2, device: int | None = None) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.config = config or PreprocessConfig()
        self.device = cupy.cuda.Device(device if device is not None else cupy.cuda.Device().id)
        with self.device:
            self._slots = [_Slot(stream=cupy.cuda.Stream(non_blocking=True)) for _ in range(slots)]
        self._next = 0

    def submit(self, stored: np.ndarray, slope: Any = 1.0, intercept: Any = 0.0, *,
               bits_stored: int | None = None, signed: bool | None = None) -> GpuBatch:
        if isinstance(stored, cupy.ndarray) or not isinstance(stored, np.ndarray):
            raise TypeError(f"StagingRing.submit takes a numpy array (host memory), got {type(stored).__name__}; "
                            "arrays already on the GPU go to preprocess() directly")
        if np.dtype(stored.dtype).newbyteorder("=") not in _SUFFIX:
            raise TypeError(f"stored values must be int16, uint16 or float32 (HU), got {stored.dtype}")
        host = stored[None] if stored.ndim == 2 else stored
        if host.ndim != 3:
            raise ValueError(f"stored must be (rows, columns) or (slices, rows, columns), got {stored.shape}")
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot.done is not None:
            slot.done.synchronize()  # the previous batch of this slot no longer reads its buffers
        nbytes = host.nbytes
        with self.device:
            if slot.pinned_bytes < nbytes:
                slot.pinned = cupy.cuda.alloc_pinned_memory(nbytes)
                slot.pinned_bytes = nbytes
                slot.device_buf = cupy.empty(nbytes, cupy.uint8)
            dtype = np.dtype(stored.dtype).newbyteorder("=")
            pinned = np.frombuffer(slot.pinned, dtype=dtype, count=host.size).reshape(host.shape)
            np.copyto(pinned, host)  # host memcpy (and byte-order fix) into page-locked memory
            d_stored = slot.device_buf[:nbytes].view(dtype).reshape(host.shape)
            with slot.stream:
                d_stored.set(pinned, stream=slot.stream)  # asynchronous: the source is pinned
                result = preprocess(d_stored, slope, intercept, self.config, bits_stored, signed)
                slot.done = cupy.cuda.Event(disable_timing=True)
                slot.done.record(slot.stream)
        return GpuBatch(result=result, event=slot.done, stream=slot.stream)
