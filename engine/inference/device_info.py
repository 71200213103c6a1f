"""What machine a result was measured on: CPU, GPU and the versions of every runtime involved.

Reports, ``cacstream build-engines`` (engine cache keys) and the benchmark record this, so a latency
figure or a compiled engine can always be traced to the hardware and software that produced it.
Every probe is optional: a missing library or GPU gives ``None``, never an exception, and nothing
here initialises CUDA unless a CUDA library is already importable.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "9.0"
    memory_gb: float | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """One machine's hardware and runtime versions (JSON-serialisable through ``to_dict``)."""

    cpu_model: str
    cpu_cores_logical: int
    cpu_cores_usable: int
    platform: str
    python: str
    numpy: str | None = None
    torch: str | None = None
    torch_cuda: str | None = None
    onnxruntime: str | None = None
    onnxruntime_providers: tuple[str, ...] = ()
    tensorrt: str | None = None
    cupy: str | None = None
    cuda_runtime: str | None = None
    driver: str | None = None
    gpus: tuple[GpuInfo, ...] = field(default_factory=tuple)

    @property
    def gpu(self) -> GpuInfo | None:
        return self.gpus[0] if self.gpus else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["onnxruntime_providers"] = list(self.onnxruntime_providers)
        d["gpus"] = [asdict(g) for g in self.gpus]
        return d

    def summary(self) -> str:
        """One line for logs and table captions."""
        gpu = f"{self.gpu.name} (sm {self.gpu.compute_capability})" if self.gpu else "no GPU"
        parts = [f"{self.cpu_model} ({self.cpu_cores_usable} cores)", gpu, f"torch {self.torch}",
                 f"onnxruntime {self.onnxruntime}"]
        if self.tensorrt:
            parts.append(f"TensorRT {self.tensorrt}")
        if self.driver:
            parts.append(f"driver {self.driver}")
        return ", ".join(parts)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a failed probe means "not there"
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _torch_gpus() -> tuple[GpuInfo, ...] | None:
    try:
        import torch
    except Exception:  # noqa: BLE001 - a failed probe means "not there"
        return None
    try:
        if not torch.cuda.is_available():
            return ()
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(GpuInfo(i, p.name, f"{p.major}.{p.minor}", round(p.total_memory / 2**30, 1)))
        return tuple(out)
    except Exception:  # noqa: BLE001 - a failed probe means "not there"
        return ()


def _cupy_gpus() -> tuple[GpuInfo, ...]:
    try:
        import cupy
    except Exception:  # noqa: BLE001 - a failed probe means "not there"
        return ()
    try:
        out = []
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            p = cupy.cuda.runtime.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
            out.append(GpuInfo(i, name, f"{p['major']}.{p['minor']}", round(p["totalGlobalMem"] / 2**30, 1)))
        return tuple(out)
    except Exception:  # noqa: BLE001 - a failed probe means "not there"
        return ()


def gpus() -> tuple[GpuInfo, ...]:
    """Visible CUDA GPUs, through torch when it has CUDA, else CuPy; () without a GPU."""
    found = _torch_gpus()
    if found:
        return found
    return _cupy_gpus()


def gpu_name(index: int = 0) -> str | None:
    for g in gpus():
        if g.index == index:
            return g.name
    return None


def _driver_version() -> str | None:
    """NVIDIA driver version (e.g. "550.54.15") from nvidia-smi, if present."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    line = out.stdout.strip().splitlines()
    return line[0].strip() if out.returncode == 0 and line else None


def _cuda_runtime() -> str | None:
    try:
        import cupy

        v = int(cupy.cuda.runtime.runtimeGetVersion())
        return f"{v // 1000}.{(v % 1000) // 10}"
    except Exception:  # noqa: BLE001, S110 - no GPU here: try the next probe
        pass
    try:
        import torch

        return torch.version.cuda
    except Exception:  # noqa: BLE001 - a failed probe means "not there"
        return None


def tensorrt_version() -> str | None:
    return _version("tensorrt")


def collect_device_info() -> DeviceInfo:
    """Probe this machine (a few hundred ms with torch already imported; no GPU needed)."""
    torch_v = _version("torch")
    torch_cuda = None
    if torch_v is not None:
        import torch

        torch_cuda = torch.version.cuda
    providers: tuple[str, ...] = ()
    ort_v = _version("onnxruntime")
    if ort_v is not None:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    found = gpus()
    return DeviceInfo(
        cpu_model=cpu_model(), cpu_cores_logical=os.cpu_count() or 1, cpu_cores_usable=usable_cores(),
        platform=platform.platform(), python=sys.version.split()[0], numpy=_version("numpy"), torch=torch_v,
        torch_cuda=torch_cuda, onnxruntime=ort_v, onnxruntime_providers=providers, tensorrt=tensorrt_version(),
        cupy=_version("cupy"), cuda_runtime=_cuda_runtime() if found else None,
        driver=_driver_version() if found else None, gpus=found,
    )
