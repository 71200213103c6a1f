"""``cacstream bench kernels``: how fast is preprocessing next to copying the same bytes?

Times, on one synthetic CT volume (int16 stored values, default 60×512×512 → 224×224 float16):
the C++ twins (OpenMP over slices), the numpy reference (kernels/reference.py) and a plain copy of
the input bytes (``np.copyto`` into a preallocated array: the memory-bandwidth floor); on a machine
with CuPy and a CUDA GPU also the CUDA kernels and a device-to-device copy of the same bytes. Runs
are interleaved (one of each per round) so background load hits all contenders alike; the report
gives medians and ratios measured in the same run. Before timing, the C++ (and CUDA) results are
checked to equal the numpy reference bit for bit; a mismatch exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from cacstream.engine.commands.help_format import HelpFormatter

NAME = "kernels"
HELP = "time the preprocessing kernels (C++, numpy reference, CUDA if present) against a plain copy"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the figures (medians, every sample, ratios, machine) to FILE as JSON")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed rounds; each round runs every contender once (medians are reported). "
                             "10 is enough on a quiet machine; use 20+ when other jobs share the CPU")
    parser.add_argument("--slices", type=int, default=60, help="slices in the synthetic volume (the acceptance case is 60)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each slice (acceptance: 512)")
    parser.add_argument("--input-size", type=int, default=224, help="model input side (acceptance: 224)")
    parser.add_argument("--output-dtype", choices=("float16", "float32"), default="float16",
                        help="model input dtype (acceptance: float16)")
    parser.add_argument("--normalisation", choices=("minmax", "window"), default="minmax",
                        help="per-slice min-max (DINO-LG, the default) or the fixed HU window")
    parser.add_argument("--antialias", choices=("on", "off"), default="on",
                        help="antialiased bilinear resize (the PreprocessConfig default) or plain 2x2 bilinear")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for the C++ kernels (0 = all cores / OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic volume")


def synthetic_volume(slices: int, size: int, seed: int = 0) -> Any:
    """int16 stored values (HU + 1024, intercept -1024) of a CT-like chest: air, body, lungs,
    spine, a few calcium spots, noise. Realistic value mix; the kernels are branch-free anyway."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    body = (xx / 0.42) ** 2 + (yy / 0.32) ** 2 < 1
    lungs = ((np.abs(xx) - 0.18) / 0.13) ** 2 + (yy / 0.2) ** 2 < 1
    spine = (xx / 0.05) ** 2 + ((yy - 0.22) / 0.05) ** 2 < 1
    hu = np.full((size, size), -1000.0, np.float32)
    hu[body] = 40.0
    hu[body & lungs] = -850.0
    hu[spine] = 700.0
    vol = np.empty((slices, size, size), np.int16)
    for z in range(slices):
        sl = hu + rng.normal(0.0, 15.0, hu.shape).astype(np.float32)
        for _ in range(3):
            cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
            sl[cy : cy + 2, cx : cx + 3] = 450.0
        vol[z] = np.clip(np.round(sl + 1024.0), 0, 4095).astype(np.int16)
    return vol


def _median(v: list[float]) -> float:
    import statistics

    return float(statistics.median(v))


def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from . import cpu_backend, reference
    from .config import PreprocessConfig

    console = Console()
    if args.repeats < 1 or args.slices < 1 or args.size < 8:
        console.print("[red]--repeats and --slices must be >= 1 and --size >= 8[/red]")
        return 2
    cfg = PreprocessConfig(normalisation=args.normalisation, input_size=args.input_size,
                           output_dtype=args.output_dtype, antialias=args.antialias == "on")
    slope, intercept = 1.0, -1024.0
    with console.status("building the synthetic volume"):
        vol = synthetic_volume(args.slices, args.size, args.seed)
    n = vol.shape[0]
    out = np.empty((n, 1, cfg.input_size, cfg.input_size), np.dtype(cfg.output_dtype))
    copy_dst = np.empty_like(vol)

    # Correctness before speed: C++ must equal the numpy reference bit for bit.
    ref = reference.preprocess(vol, slope, intercept, cfg)
    got = cpu_backend.preprocess(vol, slope, intercept, cfg, threads=args.threads, out=out)
    mismatches = [name for name, a, b in zip(("model_input", "hu_minmax", "calcium_counts"), got, ref)
                  if not np.array_equal(a, b)]
    if mismatches:
        console.print(f"[red]C++ differs from the numpy reference in {mismatches}: not timing a wrong result[/red]")
        return 1

    gpu = _gpu_available()
    gpu_ctx: dict[str, Any] = {}
    if gpu:
        import cupy

        from . import cupy_backend

        d_vol = cupy.asarray(vol)
        d_dst = cupy.empty_like(d_vol)
        d_out = cupy.empty(out.shape, out.dtype)
        g = cupy_backend.preprocess(d_vol, slope, intercept, cfg, out=d_out)
        gpu_mismatch = [name for name, a, b in zip(("model_input", "hu_minmax", "calcium_counts"), g, ref)
                        if not np.array_equal(cupy.asnumpy(a), b)]
        if gpu_mismatch:
            console.print(f"[red]CUDA differs from the numpy reference in {gpu_mismatch}[/red]")
            return 1
        gpu_ctx = {"vol": d_vol, "dst": d_dst, "out": d_out, "cupy": cupy, "backend": cupy_backend}

    cpu_ms: dict[str, list[float]] = {"memcpy": [], "cpp": []}

    def timed_cpu(name: str, fn: Any) -> float:
        """Wall seconds of fn(); also records the process CPU time (all threads) it used."""
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.process_time()
        cpu_ms[name].append((c1 - c0) * 1e3)
        return t1 - t0

    def t_memcpy() -> float:
        return timed_cpu("memcpy", lambda: np.copyto(copy_dst, vol))

    def t_cpp() -> float:
        return timed_cpu("cpp", lambda: cpu_backend.preprocess(vol, slope, intercept, cfg, threads=args.threads, out=out))

    def t_numpy() -> float:
        t0 = time.perf_counter()
        reference.preprocess(vol, slope, intercept, cfg)
        return time.perf_counter() - t0

    def t_gpu(fn: Any) -> float:
        cupy = gpu_ctx["cupy"]
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) / 1e3

    contenders: dict[str, Any] = {"memcpy": t_memcpy, "cpp": t_cpp, "numpy": t_numpy}
    if gpu:
        be = gpu_ctx["backend"]
        contenders["d2d_copy"] = lambda: t_gpu(lambda: gpu_ctx["cupy"].copyto(gpu_ctx["dst"], gpu_ctx["vol"]))
        contenders["cupy"] = lambda: t_gpu(lambda: be.preprocess(gpu_ctx["vol"], slope, intercept, cfg,
                                                                 out=gpu_ctx["out"]))
    for fn in contenders.values():  # warm-up: page faults, thread pools, kernel compilation
        fn()
    for v in cpu_ms.values():
        v.clear()
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("timing", total=args.repeats)
        for _ in range(args.repeats):
            for name, fn in contenders.items():
                samples[name].append(fn() * 1e3)
            progress.advance(task)

    med = {k: _median(v) for k, v in samples.items()}
    input_mb = vol.nbytes / 1e6
    result: dict[str, Any] = {
        "numpy_ms": med["numpy"],
        "cpp_ms": med["cpp"],
        "memcpy_ms": med["memcpy"],
        "speedup_cpp_vs_numpy": med["numpy"] / med["cpp"],
        "cpp_over_memcpy": med["cpp"] / med["memcpy"],
        # robust to background load: C++ and the copy run back to back in each round
        "cpp_over_memcpy_paired": _median([c / m for c, m in zip(samples["cpp"], samples["memcpy"])]),
        "numpy_over_cpp_paired": _median([n_ / c for n_, c in zip(samples["numpy"], samples["cpp"])]),
        # process CPU time (all threads): what the work costs, whatever else runs on the machine
        "cpp_cpu_ms": _median(cpu_ms["cpp"]),
        "memcpy_cpu_ms": _median(cpu_ms["memcpy"]),
        "acceptance": {
            "cpp_at_least_4x_numpy": med["numpy"] / med["cpp"] >= 4.0,
            "cpp_within_3x_memcpy": med["cpp"] / med["memcpy"] <= 3.0,
        },
        "shape": list(vol.shape),
        "input_dtype": str(vol.dtype),
        "input_mb": input_mb,
        "config": cfg.to_dict(),
        "threads": args.threads or cpu_backend.extension().openmp_threads(),
        "isa": cpu_backend.extension().default_isa(),
        "repeats": args.repeats,
        "samples_ms": samples,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "load_avg_1m": os.getloadavg()[0]},
    }
    if gpu:
        result["cupy_ms"] = med["cupy"]
        result["d2d_copy_ms"] = med["d2d_copy"]
        result["gpu_fraction_of_d2d"] = med["d2d_copy"] / med["cupy"]
        result["gpu_device"] = gpu_ctx["cupy"].cuda.runtime.getDeviceProperties(0)["name"].decode()

    table = Table(title=f"preprocess {tuple(vol.shape)} int16 → {cfg.input_size}² {cfg.output_dtype} "
                        f"({cfg.normalisation}, antialias {cfg.antialias}), median of {args.repeats}")
    table.add_column("contender")
    table.add_column("median ms", justify="right")
    table.add_column("min ms", justify="right")
    table.add_column("GB/s of input", justify="right")
    table.add_column("vs copy", justify="right")
    rows = [("plain copy (np.copyto)", "memcpy"), (f"C++ ({result['isa']}, {result['threads']} threads)", "cpp"),
            ("numpy reference", "numpy")]
    if gpu:
        rows += [("GPU device-to-device copy", "d2d_copy"), ("CUDA kernels (CuPy)", "cupy")]
    for label, key in rows:
        base = med["d2d_copy"] if key in ("cupy", "d2d_copy") else med["memcpy"]
        table.add_row(label, f"{med[key]:.2f}", f"{min(samples[key]):.2f}",
                      f"{input_mb / 1e3 / (med[key] / 1e3):.1f}", f"{med[key] / base:.2f}×")
    console.print(table)
    console.print(f"C++ is {result['speedup_cpp_vs_numpy']:.1f}× faster than numpy (target ≥ 4×) and "
                  f"{result['cpp_over_memcpy']:.2f}× a plain copy (target ≤ 3×); median of per-round ratios "
                  f"{result['numpy_over_cpp_paired']:.1f}× and {result['cpp_over_memcpy_paired']:.2f}×; "
                  f"CPU time C++ {result['cpp_cpu_ms']:.1f} ms (all threads) vs copy {result['memcpy_cpu_ms']:.1f} ms; "
                  f"load average {result['machine']['load_avg_1m']:.2f} on {os.cpu_count()} cores")
    if gpu:
        console.print(f"GPU: {result['cupy_ms']:.3f} ms, {100 * result['gpu_fraction_of_d2d']:.0f}% of "
                      f"device-to-device copy throughput ({result['gpu_device']})")
    else:
        console.print("GPU: not measured (no CuPy or no CUDA device on this machine)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cacstream bench kernels", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
