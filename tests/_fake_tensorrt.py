"""A CPU stand-in for the slice of the ``tensorrt`` Python API that cacstream calls, for tests.

It mirrors the documented TensorRT 10/11 names and call shapes (Builder / OnnxParser / IBuilderConfig
timing cache and optimisation profile / Runtime / ICudaEngine name-based tensor API /
IExecutionContext ``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3``), and executes
the "engine" with ONNX Runtime on host memory addressed by raw pointers. It lets the CPU suite run
every line of engines.py and tensorrt_backend.py; it cannot prove that the real library behaves as
documented (tests/test_tensorrt.py does that on a GPU). Host numpy buffers stand in for device
buffers (:class:`NumpyOps`).
"""

from __future__ import annotations

import ctypes
import json
import types
from contextlib import nullcontext
from typing import Any

import numpy as np


class _Flags:
    STRONGLY_TYPED = 0


class FakeTensorRT(types.ModuleType):
    """``import tensorrt`` replacement; ``version`` selects what the module reports."""

    def __init__(self, version: str = "11.4.0", strongly_typed_flag: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.builds: list[dict[str, Any]] = []
        self.created_network_flags: list[int] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                self.level = level

        class MemoryPoolType:
            WORKSPACE = "workspace"

        class BuilderFlag:
            TF32 = "tf32"

        class TensorIOMode:
            INPUT, OUTPUT = "input", "output"

        class Dims(tuple):
            pass

        class Tensor:
            def __init__(self, name: str, shape: tuple[int, ...]) -> None:
                self.name, self.shape = name, Dims(shape)

        class Network:
            def __init__(self) -> None:
                self.inputs: list[Tensor] = []
                self.outputs: list[Tensor] = []
                self.onnx = ""

            num_inputs = property(lambda self: len(self.inputs))
            num_outputs = property(lambda self: len(self.outputs))

            def get_input(self, i: int) -> Tensor:
                return self.inputs[i]

        class OnnxParser:
            def __init__(self, network: Network, logger: Logger) -> None:
                self.network, self.errors = network, []

            def parse_from_file(self, path: str) -> bool:
                import onnx

                try:
                    m = onnx.load(path)
                except Exception as e:  # noqa: BLE001 - the fake reports like the parser does
                    self.errors.append(f"ONNX parse error: {e}")
                    return False

                def dims(vi: Any) -> tuple[int, ...]:
                    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)

                self.network.inputs = [Tensor(vi.name, dims(vi)) for vi in m.graph.input]
                self.network.outputs = [Tensor(vi.name, dims(vi)) for vi in m.graph.output]
                self.network.onnx = path
                return True

            num_errors = property(lambda self: len(self.errors))

            def get_error(self, i: int) -> str:
                return self.errors[i]

        class TimingCache:
            def __init__(self, blob: bytes) -> None:
                self.blob = bytes(blob) or b"timing:"

            def serialize(self) -> bytes:
                return self.blob + b"+"

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

            def set_shape(self, name: str, mn: tuple, opt: tuple, mx: tuple) -> None:
                self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

        class Config:
            def __init__(self) -> None:
                self.pool: dict[str, int] = {}
                self.cleared: list[str] = []
                self.profiles: list[Profile] = []
                self.cache: TimingCache | None = None

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                self.pool[pool] = size

            def clear_flag(self, flag: str) -> None:
                self.cleared.append(flag)

            def create_timing_cache(self, blob: bytes) -> TimingCache:
                return TimingCache(blob)

            def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
                self.cache = cache
                return True

            def get_timing_cache(self) -> TimingCache:
                assert self.cache is not None
                return self.cache

            def add_optimization_profile(self, p: Profile) -> int:
                self.profiles.append(p)
                return len(self.profiles) - 1

        class Builder:
            def __init__(self, logger: Logger) -> None:
                self.logger = logger

            def create_network(self, flags: int = 0) -> Network:
                fake.created_network_flags.append(flags)
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                (prof,) = config.profiles
                rec = {"onnx": network.onnx, "input": network.inputs[0].name, "output": network.outputs[0].name,
                       "shape": list(network.inputs[0].shape), "out_shape": list(network.outputs[0].shape),
                       "profile": {k: [list(s) for s in v] for k, v in prof.shapes.items()},
                       "cleared": config.cleared}
                fake.builds.append(rec)
                return json.dumps(rec).encode()

        class Context:
            def __init__(self, engine: Engine) -> None:
                self.engine, self.shapes, self.addr = engine, {}, {}

            def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
                mn, _, mx = self.engine.profile
                if not mn[0] <= shape[0] <= mx[0]:
                    return False
                self.shapes[name] = tuple(shape)
                return True

            def set_tensor_address(self, name: str, ptr: int) -> bool:
                self.addr[name] = int(ptr)
                return True

            def execute_async_v3(self, stream: int) -> bool:
                e = self.engine
                shape = self.shapes[e.rec["input"]]
                n_in = int(np.prod(shape)) * 4
                x = np.frombuffer((ctypes.c_char * n_in).from_address(self.addr[e.rec["input"]]), np.float32)
                y = e.session.run(None, {e.rec["input"]: x.reshape(shape).copy()})[0].astype(np.float32)
                ctypes.memmove(self.addr[e.rec["output"]], y.ctypes.data, y.nbytes)
                e.calls.append(shape[0])
                return True

        class Engine:
            def __init__(self, rec: dict[str, Any]) -> None:
                import onnxruntime as ort

                self.rec = rec
                self.session = ort.InferenceSession(rec["onnx"], providers=["CPUExecutionProvider"])
                self.profile = [tuple(s) for s in rec["profile"][rec["input"]]]
                self.calls: list[int] = []

            num_io_tensors = 2

            def get_tensor_name(self, i: int) -> str:
                return [self.rec["input"], self.rec["output"]][i]

            def get_tensor_mode(self, name: str) -> str:
                return TensorIOMode.INPUT if name == self.rec["input"] else TensorIOMode.OUTPUT

            def get_tensor_shape(self, name: str) -> Dims:
                return Dims(self.rec["shape"] if name == self.rec["input"] else self.rec["out_shape"])

            def get_tensor_dtype(self, name: str) -> str:
                return "float32"

            def get_tensor_profile_shape(self, name: str, index: int) -> list[Dims]:
                return [Dims(s) for s in self.profile]

            def create_execution_context(self) -> Context:
                return Context(self)

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
                try:
                    return Engine(json.loads(blob))
                except (ValueError, KeyError):
                    return None

        self.Logger, self.MemoryPoolType, self.BuilderFlag, self.TensorIOMode = Logger, MemoryPoolType, BuilderFlag, TensorIOMode
        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime
        if strongly_typed_flag:
            self.NetworkDefinitionCreationFlag = _Flags
        self.nptype = lambda dtype: np.float32


class NumpyOps:
    """Host arrays in place of device buffers (the TensorRT backend's _TorchOps / _CupyOps interface)."""

    def __init__(self) -> None:
        self.waits = 0

    def device_context(self) -> Any:
        return nullcontext()

    def new_stream(self) -> object:
        return object()

    @staticmethod
    def handle(stream: Any) -> int:
        return 0

    def wait_for_current(self, stream: Any) -> None:
        self.waits += 1

    def current_waits_for(self, stream: Any) -> None:
        self.waits += 1

    @staticmethod
    def to_device(batch: Any, dtype: np.dtype) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(batch), dtype=dtype)

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype)

    @staticmethod
    def ptr(a: np.ndarray) -> int:
        assert a.flags.c_contiguous
        return int(a.ctypes.data)

    @staticmethod
    def keep_alive(a: Any, stream: Any) -> None:
        return None

    @staticmethod
    def synchronize(stream: Any) -> None:
        return None

    @staticmethod
    def to_host_f32(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32, copy=False)

    @staticmethod
    def to_f32(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32, copy=False)
