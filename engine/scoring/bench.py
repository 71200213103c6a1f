"""`cacstream bench agatston SERIES_DIR`: how fast is the Numba Agatston core, against fair baselines?

The series is scored over the whole slice (threshold mode, bone included: the worst case, ~1,000
lesions on a chest CT) by four implementations that all produce the same per-lesion table (slice,
pixel count, peak HU, HU sum, row/column sums) and the raw Agatston sum:

* ``numba``: :func:`cacstream.engine.scoring.ccl.volume_components` (fused threshold + run-based
  labelling + statistics, slices in parallel), also timed on one thread (``numba_1thread``);
* ``scipy``: ``scipy.ndimage.label`` of the whole thresholded volume in one C call with a structuring
  element that has no links between slices (= 2D labelling of every slice, minus 57 Python calls),
  then vectorised statistics: ``np.bincount`` for counts/sums/centroids and ``np.maximum.at`` (the
  fast same-dtype path) for peaks;
* ``cc3d``: ``cc3d.connected_components`` of each 2D slice (connectivity 8/4) with the same numpy
  statistics;
* ``memcpy``: ``np.copyto`` of the HU volume into a preallocated buffer, the memory-bandwidth floor.

Each timed round runs every implementation once, in a rotating order, so that the load of other
processes on a shared machine hits them alike; medians over the rounds are reported. First-call
compilation (or loading from Numba's disk cache) is measured before the rounds and reported apart.
The three labelling implementations must agree lesion by lesion, or the command exits 1 and says
where they differ.

Exit codes: 0 measured and agreed; 1 the implementations disagree; 2 nothing to measure (no
eligible series, unreadable files, bad options).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside functions so `cacstream --help` is instant
    import numpy as np

    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.ccl import ComponentTable

HELP = "Agatston speed: Numba vs scipy.ndimage vs cc3d on one series (whole slice, threshold mode)"
DESCRIPTION = (
    "Score one CT series over the whole slice (threshold mode, bone included) with the Numba kernels, a "
    "vectorised scipy.ndimage implementation and a cc3d implementation; check that they agree lesion by "
    "lesion; report medians of repeated, interleaved runs, the memory-copy floor and the first-call "
    "compilation time separately. Exit 0 when they agree, 1 when they disagree, 2 when nothing could be "
    "measured."
)

EXIT_OK, EXIT_DISAGREE, EXIT_UNUSABLE = 0, 1, 2

#: Implementations in table order. ``score_volume`` is the public API end to end (Lesion objects too).
IMPLEMENTATIONS = ("numba", "numba_1thread", "scipy", "cc3d", "memcpy", "score_volume")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("series_dir", type=Path, metavar="SERIES_DIR",
                        help="folder (searched recursively) or file holding the CT series to score")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write every figure (medians, all timings, machine info) to this JSON file")
    parser.add_argument("--repeats", type=int, default=21,
                        help="timed rounds; each runs every implementation once, in rotating order, and "
                             "medians are reported. 21 gives stable medians on a busy 2-core machine; 3 for "
                             "a smoke test")
    parser.add_argument("--series-uid", default=None, metavar="UID",
                        help="which series to use when SERIES_DIR holds several; none: the one with the "
                             "most slices")
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=8,
                        help="2D lesion connectivity; 8 is the Agatston convention used by the engine")
    parser.add_argument("--threads", type=int, default=0,
                        help="Numba threads for the parallel run; 0 = all cores (recommended)")
    parser.add_argument("--hu-dtype", choices=("auto", "float32", "int16"), default="auto",
                        help="HU array the three implementations score: auto = int16 when the HU are exact "
                             "integers (slope 1, integer intercept: nearly all CT; half the bytes of "
                             "float32), else float32 (recommended); float32 to measure the float path")
    parser.add_argument("--cold-compile", action="store_true",
                        help="also measure compilation from scratch in a subprocess with an empty Numba "
                             "cache (20-60 s); by default the first call in this process is reported, which "
                             "may load the kernels from Numba's disk cache")


# ------------------------------------------------------------------------------------------------
# The implementations. Each returns (ComponentTable in slice-major order, raw Agatston sum).


def agatston_raw_sum(table: ComponentTable, pixel_area: float, config: AgatstonConfig) -> float:
    """Σ area × weight of the kept lesions (no thickness factor), vectorised."""
    from cacstream.engine.scoring.agatston import weights_for_peaks

    weights = weights_for_peaks(table.peak_hu, config.weight_thresholds_hu)
    return float(((table.n_pixels * pixel_area) * weights).sum())


def numba_impl(hu: np.ndarray, pixel_area: float, config: AgatstonConfig,
               n_threads: int | None = None) -> tuple[ComponentTable, float]:
    from cacstream.engine.scoring.ccl import volume_components

    table = volume_components(hu, None, config.threshold_hu, config.connectivity, pixel_area,
                              config.min_area_mm2, n_threads=n_threads)
    return table, agatston_raw_sum(table, pixel_area, config)


def _numpy_stats(hu: np.ndarray, flat: np.ndarray, labs: np.ndarray, n: int, pixel_area: float,
                 config: AgatstonConfig) -> tuple[ComponentTable, float]:
    """Per-label statistics of foreground pixels ``flat`` (flat indices) labelled ``labs`` (1..n)."""
    import numpy as np

    from cacstream.engine.scoring.ccl import ComponentTable

    _, rows, cols = hu.shape
    vals = hu.reshape(-1)[flat]
    count = np.bincount(labs, minlength=n + 1)
    hsum = np.bincount(labs, weights=vals, minlength=n + 1)
    lowest = np.iinfo(hu.dtype).min if np.issubdtype(hu.dtype, np.integer) else -np.inf
    peak = np.full(n + 1, lowest, dtype=hu.dtype)
    np.maximum.at(peak, labs, vals)
    z, rem = np.divmod(flat, rows * cols)
    r, c = np.divmod(rem, cols)
    zsum = np.bincount(labs, weights=z, minlength=n + 1)
    rsum = np.bincount(labs, weights=r, minlength=n + 1)
    csum = np.bincount(labs, weights=c, minlength=n + 1)
    keep = count * pixel_area >= config.min_area_mm2
    keep[0] = False
    ids = np.flatnonzero(keep)
    k = count[ids]
    table = ComponentTable(
        slice_index=np.rint(zsum[ids] / k).astype(np.int32),
        n_pixels=k.astype(np.int64),
        peak_hu=peak[ids].astype(np.float64),
        sum_hu=hsum[ids],
        sum_row=np.rint(rsum[ids]).astype(np.int64),
        sum_col=np.rint(csum[ids]).astype(np.int64),
        majority_label=np.zeros(ids.size, np.int8),
    )
    return table, agatston_raw_sum(table, pixel_area, config)


def _threshold_mask(hu: np.ndarray, config: AgatstonConfig) -> np.ndarray:
    from cacstream.engine.scoring.ccl import threshold_for

    return hu >= threshold_for(hu.dtype, config.threshold_hu)  # the same exact semantics as the kernels


def scipy_impl(hu: np.ndarray, pixel_area: float, config: AgatstonConfig) -> tuple[ComponentTable, float]:
    import numpy as np
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)  # no links between slices: 2D labelling of each slice
    structure[1] = ndimage.generate_binary_structure(2, 2 if config.connectivity == 8 else 1)
    mask = _threshold_mask(hu, config)
    labels, n = ndimage.label(mask, structure=structure)
    flat = np.flatnonzero(mask)
    return _numpy_stats(hu, flat, labels.reshape(-1)[flat], int(n), pixel_area, config)


def cc3d_impl(hu: np.ndarray, pixel_area: float, config: AgatstonConfig) -> tuple[ComponentTable, float]:
    import cc3d
    import numpy as np

    n_slices, rows, cols = hu.shape
    plane = rows * cols
    mask = _threshold_mask(hu, config)
    flat = np.flatnonzero(mask)
    bounds = np.searchsorted(flat, np.arange(n_slices + 1) * plane)
    labs = np.empty(flat.size, np.int64)
    offset = 0
    for s in range(n_slices):
        a, b = bounds[s], bounds[s + 1]
        if a == b:
            continue
        lab, n = cc3d.connected_components(mask[s], connectivity=config.connectivity, return_N=True)
        labs[a:b] = lab.reshape(-1)[flat[a:b] - s * plane]
        labs[a:b] += offset
        offset += int(n)
    return _numpy_stats(hu, flat, labs, offset, pixel_area, config)


# ------------------------------------------------------------------------------------------------
# Agreement


def compare_tables(
    reference: ComponentTable, other: ComponentTable, name: str, ref_name: str = "numba"
) -> list[str]:
    """Differences between two lesion tables as sentences (empty when they agree lesion by lesion).

    Lesions are matched after sorting by (slice, row sum, column sum, pixel count, peak): these are exact
    integers/floats in every implementation, so the match is exact; HU sums agree to 1e-9 relative.
    """
    import numpy as np

    def canon(t: ComponentTable) -> tuple[np.ndarray, ...]:
        order = np.lexsort((t.peak_hu, t.n_pixels, t.sum_col, t.sum_row, t.slice_index))
        return (t.slice_index[order], t.sum_row[order], t.sum_col[order], t.n_pixels[order], t.peak_hu[order],
                t.sum_hu[order])

    if len(reference) != len(other):
        per_ref = np.bincount(reference.slice_index, minlength=1)
        per_oth = np.bincount(other.slice_index, minlength=1)
        size = max(per_ref.size, per_oth.size)
        per_ref = np.pad(per_ref, (0, size - per_ref.size))
        per_oth = np.pad(per_oth, (0, size - per_oth.size))
        bad = np.flatnonzero(per_ref != per_oth)
        where = ", ".join(f"slice {s}: {per_ref[s]} vs {per_oth[s]}" for s in bad[:5])
        return [f"{name} finds {len(other)} lesions, {ref_name} {len(reference)} ({where})"]
    a, b = canon(reference), canon(other)
    names = ("slice", "row sum", "column sum", "pixel count", "peak HU")
    problems = []
    mismatch = np.zeros(len(reference), bool)
    for x, y in zip(a[:5], b[:5]):
        mismatch |= x != y
    if not np.allclose(a[5], b[5], rtol=1e-9, atol=1e-6):
        mismatch |= ~np.isclose(a[5], b[5], rtol=1e-9, atol=1e-6)
    for i in np.flatnonzero(mismatch)[:5]:
        n = a[3][i]
        fields = ", ".join(
            f"{nm} {x[i]} vs {y[i]}" for nm, x, y in zip(names + ("HU sum",), a, b) if x[i] != y[i]
        )
        problems.append(f"{name} differs from {ref_name} at slice {a[0][i]}, lesion centred near row "
                        f"{a[1][i] / n:.1f}, column {a[2][i] / n:.1f}: {fields}")
    if mismatch.sum() > 5:
        problems.append(f"... {int(mismatch.sum()) - 5} more differing lesions")
    return problems


# ------------------------------------------------------------------------------------------------
# Measurement


@dataclass
class BenchResult:
    """Everything measured; :meth:`to_json` is the --json payload."""

    times_ms: dict[str, list[float]]
    cpu_times_ms: dict[str, list[float]]
    compile_ms: float
    compile_source: str
    n_lesions: int
    raw_agatston: float
    problems: list[str]
    machine: dict[str, Any]
    series: dict[str, Any]
    config: dict[str, Any]
    repeats: int
    cold_compile_ms: float | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def median(self, name: str) -> float | None:
        import numpy as np

        t = self.times_ms.get(name)
        return float(np.median(t)) if t else None

    def ratio(self, slow: str, fast: str = "numba") -> float | None:
        a, b = self.median(slow), self.median(fast)
        return None if a is None or b is None or b <= 0 else a / b

    def to_json(self) -> dict[str, Any]:
        import numpy as np

        out: dict[str, Any] = {f"{k}_ms": self.median(k) for k in IMPLEMENTATIONS}
        out.update({
            "compile_ms": self.compile_ms,
            "compile_source": self.compile_source,
            "cold_compile_ms": self.cold_compile_ms,
            "n_lesions": self.n_lesions,
            "agatston_raw_sum": self.raw_agatston,
            "speedup_vs_scipy": self.ratio("scipy"),
            "speedup_vs_cc3d": self.ratio("cc3d"),
            "speedup_1thread_vs_scipy": self.ratio("scipy", "numba_1thread"),
            "speedup_1thread_vs_cc3d": self.ratio("cc3d", "numba_1thread"),
            "numba_over_memcpy": self.ratio("numba", "memcpy"),
            "agree": not self.problems,
            "problems": self.problems,
            "skipped": self.skipped,
            "repeats": self.repeats,
            "statistic": "median over interleaved rounds, milliseconds",
            "cpu_ms": {k: float(np.median(v)) for k, v in self.cpu_times_ms.items()},
            "cpu_note": "process CPU time (all threads): the work done, insensitive to other processes' load",
            "times_ms": self.times_ms,
            "cpu_times_ms": self.cpu_times_ms,
            "series": self.series,
            "config": self.config,
            "machine": self.machine,
        })
        return out


def machine_info() -> dict[str, Any]:
    import numba
    import numpy
    import scipy

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import cc3d

        cc3d_version = getattr(cc3d, "__version__", None)
        if cc3d_version is None:
            from importlib.metadata import version

            cc3d_version = version("connected-components-3d")
    except Exception:
        cc3d_version = None
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": layer,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "cc3d": cc3d_version,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _cold_compile_ms() -> float:
    """Seconds to compile the kernels from scratch: a subprocess with an empty Numba cache directory."""
    import subprocess
    import tempfile

    code = ("import time; t=time.perf_counter(); from cacstream.engine.scoring.ccl import warmup; warmup(); "
            "print((time.perf_counter()-t)*1e3)")
    with tempfile.TemporaryDirectory(prefix="cacstream-numba-cache-") as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=tmp)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(
    hu: np.ndarray,
    geometry: Any,
    config: AgatstonConfig,
    repeats: int,
    threads: int = 0,
    cold_compile: bool = False,
    progress: bool = True,
) -> BenchResult:
    """Warm up, check agreement, then time ``repeats`` interleaved rounds of every implementation."""
    import numba
    import numpy as np

    from cacstream.engine.scoring import agatston, ccl

    pixel_area = geometry.pixel_area_mm2
    hu = np.ascontiguousarray(hu)
    n_threads = None if threads <= 0 else threads

    t0 = time.perf_counter()
    ccl.warmup()
    compile_ms = (time.perf_counter() - t0) * 1e3
    stats = [d.stats for d in (ccl._volume_kernel, ccl._slice_kernel, ccl._scan_slice)]
    misses = sum(sum(s.cache_misses.values()) for s in stats)
    hits = sum(sum(s.cache_hits.values()) for s in stats)
    compile_source = "compiled" if misses or not hits else "loaded from Numba's disk cache"

    skipped: dict[str, str] = {}
    dst = np.empty_like(hu)
    impls: dict[str, Callable[[], Any]] = {
        "numba": lambda: numba_impl(hu, pixel_area, config, n_threads),
        "numba_1thread": lambda: numba_impl(hu, pixel_area, config, 1),
        "scipy": lambda: scipy_impl(hu, pixel_area, config),
        "cc3d": lambda: cc3d_impl(hu, pixel_area, config),
        "memcpy": lambda: np.copyto(dst, hu),
        "score_volume": lambda: agatston.score_volume(hu, geometry, None, config),
    }
    try:
        import cc3d  # noqa: F401
    except ImportError:
        del impls["cc3d"]
        skipped["cc3d"] = "cc3d is not installed (pip install connected-components-3d)"

    # First (untimed) run of each: page the volume in, warm caches; and the agreement check.
    results = {name: fn() for name, fn in impls.items()}
    reference, raw = results["numba"]
    problems: list[str] = []
    for name in ("numba_1thread", "scipy", "cc3d"):
        if name in results:
            table, other_raw = results[name]
            problems += compare_tables(reference, table, name)
            if not np.isclose(other_raw, raw, rtol=1e-9):
                problems.append(f"{name} raw Agatston sum {other_raw!r} differs from numba's {raw!r}")
    api = results["score_volume"]
    if len(api.lesions) != len(reference):
        problems.append(f"score_volume finds {len(api.lesions)} lesions, volume_components {len(reference)}")

    names = list(impls)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu_times: dict[str, list[float]] = {n: [] for n in names}
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("timing rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task("rounds", total=repeats)
    try:
        for i in range(repeats):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                fn = impls[name]
                c = time.process_time()
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) * 1e3)
                cpu_times[name].append((time.process_time() - c) * 1e3)
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()

    g = geometry
    series = {
        "shape": list(hu.shape),
        "hu_dtype": str(hu.dtype),
        "pixel_spacing_mm": list(g.pixel_spacing_mm),
        "slice_thickness_mm": g.slice_thickness_mm,
        "slice_increment_mm": g.slice_increment_mm,
        "megavoxels": hu.size / 1e6,
        "foreground_fraction": float(np.count_nonzero(_threshold_mask(hu, config)) / max(hu.size, 1)),
    }
    cfg = config.to_dict()
    cfg["calcium_mask"] = "whole_slice"
    machine = machine_info()
    machine["numba_threads_used"] = numba.get_num_threads() if n_threads is None else n_threads
    return BenchResult(
        times_ms=times, cpu_times_ms=cpu_times, compile_ms=compile_ms, compile_source=compile_source,
        n_lesions=len(reference),
        raw_agatston=raw, problems=problems, machine=machine, series=series, config=cfg, repeats=repeats,
        cold_compile_ms=_cold_compile_ms() if cold_compile else None, skipped=skipped,
    )


# ------------------------------------------------------------------------------------------------
# Command


def _print_report(res: BenchResult, title: str) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=title, title_justify="left")
    table.add_column("implementation")
    table.add_column("median ms", justify="right")
    table.add_column("p25-p75 ms", justify="right")
    table.add_column("median / numba", justify="right")
    table.add_column("CPU ms", justify="right")
    for name, t in res.times_ms.items():
        q25, q50, q75 = np.percentile(t, [25, 50, 75])
        ratio = res.ratio(name)
        table.add_row(name, f"{q50:.2f}", f"{q25:.2f}-{q75:.2f}", "" if ratio is None else f"{ratio:.2f}x",
                      f"{np.median(res.cpu_times_ms[name]):.1f}")
    console.print(table)
    console.print(f"numba: {res.machine['numba_threads_used']} thread(s), slices in parallel; numba_1thread: "
                  "one thread; scipy: ndimage.label + numpy bincount/maximum.at; cc3d: cc3d per 2D slice + "
                  "the same numpy statistics; memcpy: np.copyto of the HU volume (bandwidth floor); "
                  "score_volume: the public API incl. Lesion objects and totals. CPU ms: median process CPU "
                  "time, all threads (the work done, whatever the machine's load)", style="dim")
    s = res.series
    console.print(f"series {tuple(s['shape'])} {s['hu_dtype']} HU, {s['megavoxels']:.1f} Mvoxel, "
                  f"{100 * s['foreground_fraction']:.1f}% of voxels >= {res.config['threshold_hu']} HU; "
                  f"{res.n_lesions} lesions >= {res.config['min_area_mm2']} mm², raw Agatston sum "
                  f"{res.raw_agatston:.1f} (whole slice, bone included)")
    console.print(f"first call (compilation): {res.compile_ms:.0f} ms, {res.compile_source}"
                  + ("" if res.cold_compile_ms is None else f"; from scratch: {res.cold_compile_ms:.0f} ms"))
    sp, cc = res.ratio("scipy"), res.ratio("cc3d")
    console.print("numba speed-up: "
                  + f"{sp:.1f}x vs scipy" + ("" if cc is None else f", {cc:.1f}x vs cc3d")
                  + f" (medians of {res.repeats} interleaved rounds; machine load "
                  + f"{', '.join(f'{x:.2f}' for x in res.machine['load_average'] or [])})")
    for name, why in res.skipped.items():
        console.print(f"[yellow]skipped {name}: {why}[/yellow]")


def _pick_series(path: Path, uid: str | None) -> tuple[Any, str | None]:
    from cacstream.engine.series import scan_path

    found = scan_path(path, progress=sys.stderr.isatty())
    candidates = found.series if uid is None else [s for s in found.series if s.uid == uid]
    if not candidates:
        reasons = "; ".join(f"{r.uid}: {r.reason} ({r.message})" for r in found.rejected[:5])
        skipped = f"{len(found.skipped)} file(s) skipped" if found.skipped else ""
        what = "no eligible CT series" if uid is None else f"no eligible series with UID {uid}"
        detail = "; ".join(x for x in (reasons, skipped) if x)
        return None, f"{what} under {path}" + (f" ({detail})" if detail else "")
    return max(candidates, key=lambda s: len(s.slices)), None


def run(args: argparse.Namespace) -> int:
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.series import DicomReadError, read_volume

    if args.repeats < 1:
        print("cacstream bench agatston: error: --repeats must be >= 1", file=sys.stderr)
        return EXIT_UNUSABLE
    if not args.series_dir.exists():
        print(f"cacstream bench agatston: error: {args.series_dir} does not exist", file=sys.stderr)
        return EXIT_UNUSABLE
    series, why = _pick_series(args.series_dir, args.series_uid)
    if series is None:
        print(f"cacstream bench agatston: error: {why}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        # int16 when the HU are exact integers (nearly all CT): the same values in half the bytes, which
        # all three implementations take as is (the scoring kernels are bound by memory traffic)
        volume = read_volume(series, hu_dtype=args.hu_dtype)
    except DicomReadError as exc:
        print(f"cacstream bench agatston: error: cannot decode series {series.uid}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    config = AgatstonConfig(connectivity=args.connectivity)
    res = measure(volume.hu, series.geometry, config, args.repeats, threads=args.threads,
                  cold_compile=args.cold_compile, progress=sys.stderr.isatty())
    res.series.update({"uid": series.uid, "path": str(args.series_dir)})
    _print_report(res, f"Agatston, whole slice, {args.connectivity}-connectivity: {args.series_dir}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if res.problems:
        print("cacstream bench agatston: the implementations DISAGREE:", file=sys.stderr)
        for p in res.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_DISAGREE
    return EXIT_OK
