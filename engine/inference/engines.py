"""TensorRT engines: build each precision's ONNX into a ``.plan``, cache it, never load a stale one.

TensorRT 11 removed the FP16/INT8 builder flags and the INT8 calibrator: precision lives in the ONNX
graph (``*.fp16.onnx`` strongly typed FP16, ``*.int8.onnx`` explicit Q/DQ, the exported FP32 file),
and every network is built strongly typed. TensorRT 10 builds the same graphs the same way when the
``STRONGLY_TYPED`` creation flag is set (11 accepts the flag and ignores it), so one code path
serves both.

Cache key: an engine is only valid for the GPU model, its compute capability, the TensorRT version
and the exact ONNX bytes it was built from (plus the precision and input size, which the ONNX
fixes). They are stored beside the plan as JSON (``<model>.<precision>.json``) together with the
plan's own hash and the batch profile. :func:`engine_status` compares a stored key with the
expected one and names every component that differs; anything but "fresh" means rebuild, never load.
The key logic has no TensorRT dependency, so it is tested on CPU machines.

Timing cache: one file per (GPU, compute capability, TensorRT version) in the engine folder, loaded
before and saved after every build, so rebuilding after a weights update takes seconds of tactic
timing instead of minutes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cacstream.engine.backends.base import BackendUnavailable
from cacstream.engine.file_hash import file_sha256
from cacstream.engine.inference.device_info import GpuInfo

log = logging.getLogger(__name__)

KEY_FORMAT = "cacstream-engine-key/1"
#: The oldest TensorRT this code is written for (name-based tensor API, execute_async_v3).
MIN_TENSORRT_MAJOR = 10
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build an ONNX file (the message names it and says why)."""


# ------------------------------------------------------------------------------------------ key


@dataclass(frozen=True)
class BatchProfile:
    """TensorRT optimisation profile over the batch axis (the only dynamic axis of our models)."""

    min: int = 1
    opt: int = 16
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @classmethod
    def for_max(cls, max_batch: int, opt: int | None = None) -> BatchProfile:
        """min 1, opt = ``opt`` or the largest power of two <= max (what a busy stream sends), max."""
        if opt is None:
            opt = 1
            while opt * 2 <= max_batch:
                opt *= 2
        return cls(1, min(opt, max_batch), max_batch)


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on; any difference makes a stored engine stale."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    onnx_sha256: str
    precision: str
    input_shape: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineKey:
        return cls(str(d["gpu_name"]), str(d["compute_capability"]), str(d["tensorrt_version"]),
                   str(d["onnx_sha256"]), str(d["precision"]), tuple(int(v) for v in d["input_shape"]))  # type: ignore[arg-type]

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable list of the components that differ (empty when equal)."""
        out = []
        for name, mine in self.to_dict().items():
            theirs = other.to_dict()[name]
            if mine != theirs:
                out.append(f"{name}: engine has {theirs!r}, expected {mine!r}")
        return out


def engine_key(onnx_path: Path, gpu: GpuInfo, tensorrt_version: str, precision: str,
               input_shape: tuple[int, int, int]) -> EngineKey:
    """The key an engine built from ``onnx_path`` on ``gpu`` with ``tensorrt_version`` must carry."""
    if precision not in ENGINE_PRECISIONS:
        raise ValueError(f"engine precision must be one of {ENGINE_PRECISIONS}, got {precision!r}")
    return EngineKey(gpu.name, gpu.compute_capability, tensorrt_version, file_sha256(onnx_path), precision,
                     tuple(int(s) for s in input_shape))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class EngineFiles:
    plan: Path
    key: Path


def engine_files(engine_dir: Path, section: str, precision: str) -> EngineFiles:
    """``<engine_dir>/<section>.<precision>.plan`` and its key JSON beside it."""
    stem = f"{section}.{precision}"
    return EngineFiles(Path(engine_dir) / f"{stem}.plan", Path(engine_dir) / f"{stem}.json")


def default_engine_dir(weights_dir: Path) -> Path:
    """Where engines of a weights folder live: ``$CACSTREAM_ENGINES/<folder name>`` when that variable
    is set (weights installed read-only), else ``<weights_dir>/engines``."""
    root = os.environ.get("CACSTREAM_ENGINES")
    return Path(root) / Path(weights_dir).name if root else Path(weights_dir) / "engines"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "gpu"


def timing_cache_file(engine_dir: Path, gpu: GpuInfo, tensorrt_version: str) -> Path:
    """One timing cache per GPU model, compute capability and TensorRT version."""
    return Path(engine_dir) / f"timing-{_slug(gpu.name)}-sm{gpu.compute_capability}-trt{tensorrt_version}.cache"


@dataclass(frozen=True)
class EngineStatus:
    state: str  # "fresh" | "missing" | "stale"
    reasons: tuple[str, ...] = ()

    @property
    def fresh(self) -> bool:
        return self.state == "fresh"

    def describe(self) -> str:
        return self.state + (": " + "; ".join(self.reasons) if self.reasons else "")


def read_key_file(path: Path) -> dict[str, Any]:
    """The stored key record; ValueError naming the file when unreadable."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable engine key ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != KEY_FORMAT or not isinstance(rec.get("key"), dict):
        raise ValueError(f"{path}: not a {KEY_FORMAT} record")
    return rec


def engine_status(files: EngineFiles, expected: EngineKey, profile: BatchProfile | None = None,
                  verify_plan_hash: bool = True) -> EngineStatus:
    """Is the stored engine usable for ``expected``? ``profile`` given: it must match exactly too
    (an explicit build request); omitted: any stored profile is accepted (the backend chunks to it)."""
    if not files.plan.is_file():
        return EngineStatus("missing", (f"{files.plan}: no plan file",))
    if not files.key.is_file():
        return EngineStatus("stale", (f"{files.key}: no key file beside the plan (origin unknown)",))
    try:
        rec = read_key_file(files.key)
        stored = EngineKey.from_dict(rec["key"])
    except (ValueError, KeyError, TypeError) as e:
        return EngineStatus("stale", (str(e),))
    reasons = expected.differences(stored)
    if profile is not None and rec.get("profile") != asdict(profile):
        reasons.append(f"profile: engine has {rec.get('profile')}, requested {asdict(profile)}")
    if verify_plan_hash and not reasons and rec.get("plan_sha256") != file_sha256(files.plan):
        reasons.append(f"{files.plan}: plan bytes differ from the ones recorded at build time")
    return EngineStatus("stale", tuple(reasons)) if reasons else EngineStatus("fresh")


def stored_profile(files: EngineFiles) -> BatchProfile | None:
    try:
        return BatchProfile(**read_key_file(files.key)["profile"])
    except (ValueError, KeyError, TypeError):
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_key_file(files: EngineFiles, key: EngineKey, profile: BatchProfile, onnx_path: Path,
                   build_seconds: float) -> None:
    rec = {"format": KEY_FORMAT, "key": key.to_dict(), "profile": asdict(profile),
           "plan_sha256": file_sha256(files.plan), "onnx": str(onnx_path), "build_seconds": round(build_seconds, 2),
           "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _atomic_write(files.key, (json.dumps(rec, indent=1) + "\n").encode())


# ------------------------------------------------------------------------ graph precision check


def check_graph_precision(onnx_path: Path, precision: str) -> None:
    """The graph must hold what its precision says (TensorRT 11 builds exactly the graph's types):
    int8 = Q/DQ nodes present; fp16 = float16 weights or casts present; fp32 = neither."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    fp16 = onnx.TensorProto.FLOAT16
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    half = sum(i.data_type == fp16 for i in model.graph.initializer) + sum(
        1 for n in model.graph.node if n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute))
    if precision == "int8" and qdq == 0:
        raise EngineBuildError(f"{onnx_path}: an int8 engine needs explicit Q/DQ nodes; this graph has none")
    if precision == "fp16" and half == 0:
        raise EngineBuildError(f"{onnx_path}: an fp16 engine needs a float16 graph (TensorRT 11 has no FP16 "
                               "builder flag); this graph has no float16 tensors — convert it with calibration/fp16.py")
    if precision == "fp32" and (qdq or half):
        raise EngineBuildError(f"{onnx_path}: holds {qdq} Q/DQ nodes and {half} float16 tensors; it is not an fp32 graph")


# ----------------------------------------------------------------------------------- TensorRT


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or BackendUnavailable saying why it cannot be used."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(f"TensorRT is not installed ({e}); on a GPU machine: pip install tensorrt "
                                 "(TensorRT 10 or 11)") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old; {MIN_TENSORRT_MAJOR}.x or newer is needed "
                                 "(name-based tensor API, execute_async_v3, strongly typed networks)")
    return trt


_LOGGER: Any = None


def trt_logger(trt: Any) -> Any:
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def network_flags(trt: Any) -> int:
    """STRONGLY_TYPED on TensorRT 10 (required for our precision-in-the-graph files); TensorRT 11
    networks are always strongly typed and the flag, where still defined, is accepted and ignored."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engine(onnx_path: Path, files: EngineFiles, key: EngineKey, profile: BatchProfile, *,
                 timing_cache: Path, workspace_gb: float = 4.0) -> float:
    """Parse ``onnx_path``, build a plan with a batch profile and the timing cache, write the plan and
    its key (key last, after the old one is removed, so a crash never leaves a key over a wrong plan).
    Returns the build time in seconds."""
    trt = import_tensorrt()
    check_graph_precision(onnx_path, key.precision)
    t0 = time.perf_counter()
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise EngineBuildError(f"{onnx_path}: expected one input and one output, found {network.num_inputs} "
                               f"and {network.num_outputs}")
    inp = network.get_input(0)
    c, h, w = key.input_shape
    if tuple(inp.shape)[1:] != (c, h, w):
        raise EngineBuildError(f"{onnx_path}: input {inp.name!r} has shape {tuple(inp.shape)}, expected (batch, {c}, {h}, {w})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if key.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # an "fp32" engine computes in FP32, not TF32
    blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("%s: timing cache does not fit this device; starting an empty one", timing_cache)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(inp.name, (profile.min, c, h, w), (profile.opt, c, h, w), (profile.max, c, h, w))
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build a {key.precision} engine (see its log above)")
    files.plan.parent.mkdir(parents=True, exist_ok=True)
    files.key.unlink(missing_ok=True)
    _atomic_write(files.plan, bytes(memoryview(serialized)))
    _atomic_write(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    seconds = time.perf_counter() - t0
    write_key_file(files, key, profile, onnx_path, seconds)
    return seconds


@dataclass
class EnsuredEngine:
    files: EngineFiles
    key: EngineKey
    status_before: EngineStatus
    built: bool
    seconds: float = 0.0
    profile: BatchProfile | None = field(default=None)


def current_gpu(index: int = 0) -> GpuInfo:
    from cacstream.engine.inference.device_info import gpus

    for g in gpus():
        if g.index == index:
            return g
    raise BackendUnavailable(f"no CUDA GPU with index {index} is visible (TensorRT engines are built per GPU)")


def ensure_engine(onnx_path: Path, engine_dir: Path, section: str, precision: str,
                  input_shape: tuple[int, int, int], profile: BatchProfile, *, gpu_index: int = 0,
                  rebuild: bool = False, exact_profile: bool = True, workspace_gb: float = 4.0,
                  on_build: Callable[[str], None] | None = None) -> EnsuredEngine:
    """Return a fresh engine for ``onnx_path``, building it when missing, stale or ``rebuild``.

    ``exact_profile``: a stored engine with another batch profile is rebuilt (build-engines); False
    accepts any stored profile (the runtime chunks batches to the engine's maximum)."""
    trt = import_tensorrt()
    gpu = current_gpu(gpu_index)
    key = engine_key(onnx_path, gpu, str(trt.__version__), precision, input_shape)
    files = engine_files(engine_dir, section, precision)
    status = engine_status(files, key, profile if exact_profile else None)
    if status.fresh and not rebuild:
        return EnsuredEngine(files, key, status, False, 0.0, stored_profile(files))
    if on_build is not None:
        on_build(f"building {files.plan.name} from {onnx_path.name} ({status.describe() if not rebuild else 'rebuild requested'})")
    Path(engine_dir).mkdir(parents=True, exist_ok=True)
    seconds = build_engine(onnx_path, files, key, profile, timing_cache=timing_cache_file(engine_dir, gpu, key.tensorrt_version),
                           workspace_gb=workspace_gb)
    return EnsuredEngine(files, key, status, True, seconds, profile)
