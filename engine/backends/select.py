"""``--backend auto|tensorrt|onnxruntime|torch``: which backend runs where, at which precision.

``auto`` picks the fastest backend present for the device and precision:

* GPU: TensorRT > ONNX Runtime (CUDA EP) > PyTorch (CUDA, autocast + CUDA graphs).
* CPU, fp32: ONNX Runtime, by measurement. On this project's 2-core workstation CPU (AMD EPYC, AVX2;
  torch 2.13 eager vs onnxruntime 1.32 with full graph optimisation; default-size models: ViT-S/16
  slice filter at 224², U-Net-16 segmenter at 512²; medians of 3-5 calls on the shared, loaded
  development machine, so absolute times are inflated but both runtimes saw the same load)
  ONNX Runtime won every case, by 1.2-4.3x:

  ==========  =====  ================  ================  ==========
  threads     batch  filter torch/ORT  U-Net torch/ORT   U-Net ms ORT
  ==========  =====  ================  ================  ==========
  1           1      783 / 565 ms      2125 / 986 ms     986
  1           8      3455 / 2872 ms    36919 / 14833 ms  14833
  2           1      5008 / 1179 ms    8293 / 2510 ms    2510
  2           8      11720 / 8215 ms   31164 / 9229 ms   9229
  ==========  =====  ================  ================  ==========

  (an earlier run, 2 threads: filter 1822 / 575 ms and 5916 / 3859 ms, U-Net 2423 / 712 ms and
  22021 / 6379 ms.) ``CPU_FP32_ORDER`` records the outcome. Reproduce on any machine with
  ``python -m cacstream.engine.backends.select WEIGHTS_DIR [--threads N]``.
* CPU, int8: ONNX Runtime (the only backend that runs Q/DQ graphs on a CPU).
* CPU, bf16: PyTorch (bf16 autocast; ONNX Runtime has no bf16 CPU kernels for these graphs).
* CPU, fp16: ONNX Runtime on the FP16 graph (slow on CPUs; offered to check FP16 accuracy without a GPU).

An explicit backend that cannot run here (no GPU, library missing, precision it does not offer) is a
``BackendUnavailable`` saying why, never a silent fallback to another backend.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from cacstream.engine.backends.base import PRECISIONS, BackendUnavailable

BACKEND_NAMES: tuple[str, ...] = ("tensorrt", "onnxruntime", "torch")
#: Measured on the 2-core CPU (module docstring): ONNX Runtime first.
CPU_FP32_ORDER: tuple[str, ...] = ("onnxruntime", "torch")
#: Which precisions each backend offers on each device kind.
SUPPORT: dict[str, dict[str, tuple[str, ...]]] = {
    "tensorrt": {"cuda": ("fp32", "fp16", "int8"), "cpu": ()},
    "onnxruntime": {"cuda": ("fp32", "fp16", "int8"), "cpu": ("fp32", "fp16", "int8")},
    "torch": {"cuda": ("fp32", "fp16", "bf16"), "cpu": ("fp32", "bf16")},
}
GPU_ORDER: tuple[str, ...] = ("tensorrt", "onnxruntime", "torch")


@dataclass(frozen=True)
class BackendChoice:
    name: str
    device: str  # "cpu" | "cuda:N"
    precision: str
    reason: str


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # already imported without a spec (a stand-in module)
        return module in sys.modules


def gpu_present() -> bool:
    from cacstream.engine.inference.device_info import gpus

    return bool(gpus())


def backend_present(name: str, device_kind: str) -> tuple[bool, str]:
    """(usable, why not) for a backend on "cpu" or "cuda"."""
    if name == "torch":
        if not _installed("torch"):
            return False, "torch is not installed"
        if device_kind == "cuda":
            import torch

            return (True, "") if torch.cuda.is_available() else (False, f"torch {torch.__version__} has no CUDA")
        return True, ""
    if name == "onnxruntime":
        if not _installed("onnxruntime"):
            return False, "onnxruntime is not installed"
        if device_kind == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return False, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
        return True, ""
    if name == "tensorrt":
        if device_kind != "cuda":
            return False, "TensorRT runs on CUDA GPUs only"
        if not _installed("tensorrt"):
            return False, "TensorRT is not installed (pip install tensorrt)"
        return True, ""
    raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKEND_NAMES)}")


def resolve_device(device: str | None) -> str:
    """None/"auto" -> "cuda:0" when a GPU is visible, else "cpu"; "cuda" -> "cuda:0"."""
    if device in (None, "", "auto"):
        return "cuda:0" if gpu_present() else "cpu"
    if device == "cuda":
        return "cuda:0"
    if device == "cpu" or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def auto_candidates(precision: str = "fp32", device: str | None = None) -> tuple[str, list[BackendChoice], list[str]]:
    """(device, backends ``auto`` may use in preference order, why the others cannot)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = resolve_device(device)
    kind = "cuda" if dev.startswith("cuda") else "cpu"
    order = GPU_ORDER if kind == "cuda" else (CPU_FP32_ORDER if precision == "fp32" else BACKEND_NAMES)
    usable: list[BackendChoice] = []
    skipped: list[str] = []
    for name in order:
        if precision not in SUPPORT[name][kind]:
            skipped.append(f"{name}: no {precision} on {kind}")
            continue
        ok, why = backend_present(name, kind)
        if not ok:
            skipped.append(f"{name}: {why}")
            continue
        reason = ("fastest present on the GPU" if kind == "cuda" else
                  "fastest on this CPU by measurement" if precision == "fp32" else f"the CPU backend for {precision}")
        usable.append(BackendChoice(name, dev, precision, reason))
    return dev, usable, skipped


def select_backend(requested: str = "auto", precision: str = "fp32", device: str | None = None) -> BackendChoice:
    """The backend that will run, or BackendUnavailable explaining why none can."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if requested == "auto":
        dev, usable, skipped = auto_candidates(precision, device)
        if not usable:
            raise BackendUnavailable(f"no backend can run {precision} on {dev}: " + "; ".join(skipped))
        return usable[0]
    if requested not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {requested!r}; choose from auto, {', '.join(BACKEND_NAMES)}")
    dev = resolve_device(device)
    kind = "cuda" if dev.startswith("cuda") else "cpu"
    ok, why = backend_present(requested, kind)
    if not ok:
        raise BackendUnavailable(f"--backend {requested} on {dev}: {why}")
    if precision not in SUPPORT[requested][kind]:
        offered = ", ".join(SUPPORT[requested][kind]) or "nothing"
        raise BackendUnavailable(f"--backend {requested} offers {offered} on {kind}, not {precision}")
    return BackendChoice(requested, dev, precision, "requested")


# ---------------------------------------------------------------------------------- measurement


def measure_cpu_backends(weights_dir: Path, batch_sizes: tuple[int, ...] = (1, 8), repeats: int = 5,
                         threads: int = 0) -> list[dict[str, object]]:
    """Median milliseconds per batch of ONNX Runtime and PyTorch (fp32, CPU) for each model of a
    weights folder, on identical random inputs in [-1, 1]; one warm-up call each."""
    import time

    import numpy as np

    from cacstream.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from cacstream.engine.backends.torch_backend import TorchBackend
    from cacstream.engine.inference.weights_spec import read_weights_spec
    from cacstream.training.weights import load_weights

    spec = read_weights_spec(weights_dir)
    bundle = load_weights(weights_dir)
    rows: list[dict[str, object]] = []
    for role, module in (("filter", bundle.slice_filter.model), ("segmenter", bundle.segmenter.model)):  # type: ignore[union-attr]
        m = spec.model(role)
        for bs in batch_sizes:
            backends = {
                "torch": TorchBackend(module, role, m.input_shape, max_batch_size=bs, threads=threads or None),
                "onnxruntime": OnnxRuntimeBackend(m.onnx_path("fp32"), role, max_batch_size=bs, threads=threads,
                                                  expected_input_shape=m.input_shape),
            }
            x = (np.random.default_rng(0).random((bs, *m.input_shape), dtype=np.float32) * 2 - 1)
            row: dict[str, object] = {"model": role, "batch": bs}
            for name, be in backends.items():
                be.infer(x)
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    be.infer(x)
                    times.append((time.perf_counter() - t0) * 1000)
                row[f"{name}_ms"] = float(np.median(times))
            row["torch_over_ort"] = float(row["torch_ms"]) / float(row["onnxruntime_ms"])  # type: ignore[arg-type]
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cacstream.engine.backends.select",
                                description="Time ONNX Runtime against PyTorch (fp32, CPU) on a weights folder's models.")
    p.add_argument("weights", type=Path, help="weights folder (config.json + safetensors + ONNX)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")
    p.add_argument("--threads", type=int, default=0, help="threads for both runtimes (0 = their defaults)")
    a = p.parse_args(argv)
    from cacstream.engine.inference.device_info import collect_device_info

    print(collect_device_info().summary())
    for r in measure_cpu_backends(a.weights, tuple(a.batch), a.repeats, a.threads):
        print(f"{r['model']:<9} batch {r['batch']:>3}: torch {r['torch_ms']:8.1f} ms   onnxruntime "
              f"{r['onnxruntime_ms']:8.1f} ms   torch/ort {r['torch_over_ort']:.2f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
