"""A stand-in ``cupy`` module for CPU-only test machines: arrays are numpy arrays (subclass
``ndarray``), and ``RawModule`` kernels run on the CPU emulator built from the real
``kernels/cuda/*.cu`` (emulator.cpp). Every launch is checked against the kernel's C signature:
argument count, scalar types (np.int32 / np.int64 / np.float32, exactly as CuPy would pack them)
and the element type behind every pointer, so a launch that would read garbage on a GPU fails here.

Only what ``cacstream.kernels.cupy_backend`` uses is provided.
"""

from __future__ import annotations

import ctypes
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

float16, float32, int16, int32, int64, uint8, uint16, uint32 = (
    np.float16, np.float32, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32)


class ndarray(np.ndarray):
    """Device array stand-in (numpy memory)."""

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        if arr.shape != self.shape:
            raise ValueError(f"set: shape {arr.shape} != {self.shape}")  # as CuPy
        np.copyto(self, arr)

    def get(self) -> np.ndarray:
        return np.array(self).view(np.ndarray)

    @property
    def device(self) -> _Device:
        return _Device(0)


def _wrap(a: np.ndarray) -> ndarray:
    return a.view(ndarray)


def asarray(a: Any, dtype: Any = None) -> ndarray:
    if isinstance(a, ndarray) and (dtype is None or a.dtype == dtype):
        return a
    return _wrap(np.array(a, dtype=dtype, copy=True))  # host -> "device" copies


def asnumpy(a: Any) -> np.ndarray:
    return np.array(a, copy=True).view(np.ndarray)


def ascontiguousarray(a: Any) -> ndarray:
    return _wrap(np.ascontiguousarray(a))


def empty(shape: Any, dtype: Any = np.float64) -> ndarray:
    return _wrap(np.empty(shape, dtype))


def zeros(shape: Any, dtype: Any = np.float64) -> ndarray:
    return _wrap(np.zeros(shape, dtype))


def ones(shape: Any, dtype: Any = np.float64) -> ndarray:
    return _wrap(np.ones(shape, dtype))


def empty_like(a: Any) -> ndarray:
    return _wrap(np.empty_like(a))


# ------------------------------------------------------------------------------------------------
# cupy.cuda
# ------------------------------------------------------------------------------------------------
class _Stream:
    _current: list[Any] = []

    def __init__(self, non_blocking: bool = False) -> None:
        self.ptr = id(self)

    def __enter__(self) -> _Stream:
        _Stream._current.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _Stream._current.pop()

    def wait_event(self, event: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _ExternalStream(_Stream):
    def __init__(self, ptr: int, device_id: int = -1) -> None:
        super().__init__()
        self.ptr = ptr


_NULL_STREAM = _Stream()


class _Event:
    recorded = 0

    def __init__(self, disable_timing: bool = False) -> None:
        self.done = False

    def record(self, stream: Any = None) -> None:
        self.done = True
        _Event.recorded += 1

    def synchronize(self) -> None:
        assert self.done, "synchronize() on an event that was never recorded"


class _Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise ValueError(f"the emulator has one device (0), not {self.id}")

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _get_device_properties(device: int) -> dict[str, Any]:
    return {"multiProcessorCount": 2, "name": b"CPU CUDA emulator"}


class _PinnedMemory(bytearray):
    pass


cuda = types.SimpleNamespace(
    Device=_Device,
    Stream=_Stream,
    ExternalStream=_ExternalStream,
    Event=_Event,
    get_current_stream=lambda: _Stream._current[-1] if _Stream._current else _NULL_STREAM,
    alloc_pinned_memory=lambda nbytes: _PinnedMemory(nbytes),
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=_get_device_properties),
)


# ------------------------------------------------------------------------------------------------
# RawModule on the emulator
# ------------------------------------------------------------------------------------------------
_LIB: ctypes.CDLL | None = None
_POINTER_DTYPES = {
    "p:i2": {np.dtype(np.int16)},
    "p:u2": {np.dtype(np.uint16), np.dtype(np.float16)},  # float16 outputs are written as their bits
    "p:i4": {np.dtype(np.int32)},
    "p:u4": {np.dtype(np.uint32)},
    "p:f4": {np.dtype(np.float32)},
}
_SCALARS = {"i": (np.int32, ctypes.c_int32), "q": (np.int64, ctypes.c_int64), "f": (np.float32, ctypes.c_float)}
launches: list[str] = []  # names of the kernels launched (tests inspect it)


def load(library: Path) -> None:
    global _LIB
    lib = ctypes.CDLL(str(library))
    lib.emu_signature.restype = ctypes.c_char_p
    lib.emu_signature.argtypes = [ctypes.c_char_p]
    lib.emu_launch.restype = ctypes.c_int
    lib.emu_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [ctypes.POINTER(ctypes.c_void_p)]
    _LIB = lib


class _Kernel:
    def __init__(self, name: str) -> None:
        assert _LIB is not None, "fake_cupy.load(library) first"
        sig = _LIB.emu_signature(name.encode())
        if sig is None:
            raise AttributeError(f"no kernel named {name} in the module")  # CuPy raises on get_function too
        self.name = name
        self.signature = sig.decode().split(",")

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...], shared_mem: int = 0) -> None:
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} arguments for a {len(self.signature)}-parameter kernel")
        keep: list[Any] = []
        ptrs = (ctypes.c_void_p * len(args))()
        for i, (code, arg) in enumerate(zip(self.signature, args)):
            if code.startswith("p:"):
                if not isinstance(arg, ndarray):
                    raise TypeError(f"{self.name} argument {i}: expected a device array for {code}, got {type(arg).__name__}")
                if np.dtype(arg.dtype) not in _POINTER_DTYPES[code]:
                    raise TypeError(f"{self.name} argument {i}: {code} parameter given a {arg.dtype} array")
                if not arg.flags.c_contiguous:
                    raise TypeError(f"{self.name} argument {i}: non-contiguous array")
                holder = ctypes.c_void_p(arg.ctypes.data)
            else:
                want, ctype = _SCALARS[code]
                if type(arg) is not want:
                    raise TypeError(f"{self.name} argument {i}: expected {want.__name__}, got {type(arg).__name__} "
                                    "(CuPy would pack it with the wrong width or type)")
                holder = ctype(arg.item())
            keep.append(holder)
            ptrs[i] = ctypes.cast(ctypes.pointer(holder), ctypes.c_void_p)
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))
        if any(v > 2**31 - 1 for v in g) or g[1] > 65535 or g[2] > 65535 or b[0] * b[1] * b[2] > 1024:
            raise ValueError(f"{self.name}: launch shape {g} x {b} exceeds CUDA limits")
        launches.append(self.name)
        rc = _LIB.emu_launch(self.name.encode(), *map(int, g), *map(int, b), ptrs)
        if rc:
            raise RuntimeError(f"{self.name}: emulator launch failed ({rc})")


class RawModule:
    def __init__(self, code: str, options: tuple[str, ...] = (), backend: str = "nvrtc") -> None:
        self.code, self.options, self.backend = code, options, backend

    def get_function(self, name: str) -> _Kernel:
        return _Kernel(name)


@contextmanager
def installed(library: Path):  # pragma: no cover - convenience for ad-hoc use
    import sys

    load(library)
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = sys.modules[__name__]
    try:
        yield sys.modules[__name__]
    finally:
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved
