"""``cacstream bench pipeline``: per-stage and end-to-end latency of the engine, against baselines measured
in the same run.

For each available model configuration (backend × precision × batch size) and each benchmark series:

* per stage (read, decode, preprocess, filter, segment, agatston, report), each timed alone: p50 / p95
  per series and per slice;
* end to end with the engine's real concurrent path (``score_series`` + JSON report): p50 / p95,
  slices per second, series per hour;
* baseline (b), volume-wide segmentation: the same configuration with no slice filter (every slice
  through the U-Net) → the compute the filter saves (model time: filter + segment flagged vs segment
  all; and end to end);

once per run:

* baseline (a), the naive serial pipeline (:mod:`cacstream.engine.bench.naive`: pydicom, numpy,
  PyTorch eager one slice at a time through both models on every slice, scipy.ndimage.label) → the
  engine's end-to-end speedup (naive median / fastest configuration's median, same series);
* the time from the last slice landing to the report in a replayed stream (``engine/stream/latency``:
  a fresh watch engine, slices copied in at a fixed rate, the quiet period subtracted).

Every figure is a median (p50) or 95th percentile over repeats × series, after one warm-up per
configuration. Outputs: JSON (all figures + device info), a markdown table and a PNG plot.
``--short``: one small series (≈10 slices of 128²), one repeat, one configuration (the auto backend at
fp32, batch 8), a short stream replay — for CI; it works with any weights (tiny test weights, the
shipped ones).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HELP = "engine latency per stage and end to end, vs naive serial and volume-wide baselines (same run)"
DESCRIPTION = (
    "Benchmark the scoring pipeline per stage (read, decode, preprocess, filter, segment, Agatston, report) and end "
    "to end across backends x precisions x batch sizes, against a naive serial PyTorch pipeline and volume-wide "
    "segmentation without the slice filter, both measured in the same run; plus the last-slice-to-report latency of "
    "a replayed stream. Writes JSON, a markdown table and a PNG plot."
)

ALL_BACKENDS = ("onnxruntime", "torch", "tensorrt")
ALL_PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--short",
        action="store_true",
        help="CI mode: one ~10-slice 128² phantom, one repeat, one configuration, short stream replay "
        "(well under a minute with small weights)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="DIR",
        help="weights folder (default: $CACSTREAM_WEIGHTS, then the packaged default)",
    )
    parser.add_argument(
        "--series-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of DICOM series to benchmark on (each sub-folder holding one series); default: "
        "phantoms generated for the run",
    )
    parser.add_argument(
        "--series",
        type=int,
        default=None,
        metavar="N",
        help="number of generated phantom series (default 2; --short: 1); 512² cardiac-gated, 3 mm",
    )
    parser.add_argument(
        "--matrix",
        type=int,
        default=None,
        help="matrix of the generated phantoms (default 512; --short: 128)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=ALL_BACKENDS,
        default=None,
        help="backends to measure (default: every one that loads here; --short: the auto choice)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=ALL_PRECISIONS,
        default=None,
        help="precisions to measure (default: fp32 and int8; configurations whose model files or "
        "kernels are missing are skipped with the reason)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help="model batch sizes (default: 1 16; --short: 8)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per series (default 3; --short: 1)"
    )
    parser.add_argument(
        "--naive-repeats",
        type=int,
        default=None,
        help="timed repeats of the naive baseline (default: --repeats; it is the slowest part)",
    )
    parser.add_argument("--no-stream", action="store_true", help="skip the replayed-stream latency")
    parser.add_argument(
        "--stream-rate", type=float, default=20.0, help="replay rate in slices/s (a scanner: 10-50)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for the model runtimes (0 = their default)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="write every figure to FILE (JSON)"
    )
    parser.add_argument(
        "--md", type=Path, default=None, metavar="FILE", help="write the markdown table to FILE"
    )
    parser.add_argument("--png", type=Path, default=None, metavar="FILE", help="write the plot to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


# ------------------------------------------------------------------------------------- series


def make_phantom_series(out: Path, n: int, matrix: int, short: bool) -> list[Path]:
    from cacstream.training.phantom import PhantomConfig, make_phantom, write_series

    dirs = []
    for i in range(n):
        cfg = PhantomConfig(
            kind="cardiac_gated",
            matrix=matrix,
            thickness_mm=3.0,
            increment_mm=3.0,
            z_coverage_mm=28.0 if short else None,
            calcium_category="101-400",
        )
        case = make_phantom(880_000 + i, cfg)
        paths = write_series(case, out, write_labels=False)
        dirs.append(paths[0].parent)
    return dirs


def series_dirs_under(root: Path) -> list[Path]:
    dirs = sorted(
        {
            p.parent
            for p in Path(root).rglob("*")
            if p.is_file()
            and not p.name.startswith(".")
            and p.suffix.lower() not in (".json", ".npz", ".csv", ".png", ".xlsx", ".plist", ".xml")
        }
    )
    if not dirs:
        raise ValueError(f"{root}: no files to benchmark on")
    return dirs


# --------------------------------------------------------------------------------- configurations


def load_configs(
    weights: Path,
    backends: list[str] | None,
    precisions: list[str],
    batch_sizes: list[int],
    threads: int,
    short: bool,
    skeletal_gate_mm3: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(loaded configurations, skipped ones with the reason). ``skeletal_gate_mm3``: as `score` loads
    the models (its Agatston config's skeletal limit: the skeletal gate), None: off."""
    from cacstream.engine.backends.base import BackendUnavailable
    from cacstream.engine.inference.runtime import CalciumModels
    from cacstream.engine.inference.weights_spec import WeightsFolderError

    loaded, skipped = [], []
    if short and backends is None:
        m = CalciumModels.load(
            weights,
            backend="auto",
            precision=precisions[0],
            batch_size=batch_sizes[0],
            threads=threads or None,
            skeletal_gate_mm3=skeletal_gate_mm3,
        )
        return [
            {
                "backend": m.choice.name,
                "precision": m.choice.precision,
                "batch_size": batch_sizes[0],
                "models": m,
            }
        ], skipped
    for be in backends or list(ALL_BACKENDS):
        for prec in precisions:
            for bs in batch_sizes:
                try:
                    m = CalciumModels.load(
                        weights, backend=be, precision=prec, batch_size=bs, threads=threads or None,
                        skeletal_gate_mm3=skeletal_gate_mm3,
                    )
                except (BackendUnavailable, WeightsFolderError, ValueError) as e:
                    if bs == batch_sizes[0]:
                        skipped.append({"backend": be, "precision": prec, "reason": str(e)})
                    break
                loaded.append({"backend": be, "precision": prec, "batch_size": bs, "models": m})
    return loaded, skipped


# ---------------------------------------------------------------------------------------- run


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def bench_config(
    cfg: dict[str, Any], dirs: list[Path], repeats: int, agatston: Any, work: Path, quiet: bool
) -> dict[str, Any]:
    from cacstream.engine.bench.measure import (
        STAGES,
        engine_end_to_end,
        percentiles,
        stage_profile,
        volume_wide,
    )
    from cacstream.engine.pipeline.models import ModelStages

    m = cfg["models"]
    stages = ModelStages(m)
    out = work / f"{cfg['backend']}_{cfg['precision']}_b{cfg['batch_size']}"
    stage_profile(dirs[0], m, agatston, out)  # warm-up: sessions, Numba, caches
    engine_end_to_end(dirs[0], stages, agatston, cfg["batch_size"], out)
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    per_slice: dict[str, list[float]] = {s: [] for s in STAGES}
    e2e, vw, vw_model, model, flagged, slices, totals = [], [], [], [], [], [], []
    e2e_per_series: dict[int, list[float]] = {i: [] for i in range(len(dirs))}
    for _ in range(repeats):
        for i, d in enumerate(dirs):
            st = stage_profile(d, m, agatston, out)
            for s in STAGES:
                per_stage[s].append(st.ms[s])
                per_slice[s].append(st.ms[s] / max(1, st.slices))
            model.append(st.model_ms)
            ms, fl, tot = engine_end_to_end(d, stages, agatston, cfg["batch_size"], out)
            e2e.append(ms)
            e2e_per_series[i].append(ms)
            flagged.append(fl)
            slices.append(st.slices)
            totals.append(tot)
            v = volume_wide(d, m, agatston, out)
            vw.append(sum(v.ms.values()))
            vw_model.append(v.model_ms)
    p_e2e = percentiles(e2e)
    n_slices = statistics.median(slices)
    res = {
        "backend": cfg["backend"],
        "precision": cfg["precision"],
        "batch_size": cfg["batch_size"],
        "device": m.info.device,
        "stages_ms": {s: percentiles(v) for s, v in per_stage.items()},
        "stages_ms_per_slice_p50": {s: float(statistics.median(v)) for s, v in per_slice.items()},
        "end_to_end_ms": p_e2e,
        "end_to_end_ms_per_series_median": [float(statistics.median(v)) for v in e2e_per_series.values()],
        "slices_median": float(n_slices),
        "slices_per_s": float(n_slices / (p_e2e["p50"] / 1e3)),
        "series_per_hour": float(3600.0 / (p_e2e["p50"] / 1e3)),
        "flagged_fraction": float(sum(flagged) / max(1, sum(slices))),
        "agatston_totals": sorted({round(t, 3) for t in totals}),
        "volume_wide": {"end_to_end_ms": percentiles(vw), "model_ms": percentiles(vw_model)},
        "model_ms": percentiles(model),
    }
    vw_model_p50 = res["volume_wide"]["model_ms"]["p50"]
    res["filter_savings"] = {
        "model_compute_saved": 1.0 - res["model_ms"]["p50"] / vw_model_p50 if vw_model_p50 > 0 else None,
        "end_to_end_saved": 1.0 - p_e2e["p50"] / res["volume_wide"]["end_to_end_ms"]["p50"],
        "slices_skipped": 1.0 - res["flagged_fraction"],
    }
    _log(
        quiet,
        f"  {cfg['backend']} {cfg['precision']} batch {cfg['batch_size']}: end to end p50 {p_e2e['p50']:.0f} ms, "
        f"volume-wide {res['volume_wide']['end_to_end_ms']['p50']:.0f} ms, flagged {100 * res['flagged_fraction']:.0f} %",
    )
    return res


def bench_naive(weights: Path, dirs: list[Path], repeats: int, agatston: Any, quiet: bool) -> dict[str, Any]:
    from cacstream.engine.bench.measure import percentiles
    from cacstream.engine.bench.naive import NaiveModels, score_naive

    nm = NaiveModels.load(weights)
    files = {
        d: sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() not in (".json", ".npz"))
        for d in dirs
    }
    score_naive(files[dirs[0]][:2], nm, agatston)  # warm-up (first torch calls)
    times, per_series, slices, totals = [], {i: [] for i in range(len(dirs))}, [], []
    stages: dict[str, list[float]] = {}
    for _ in range(repeats):
        for i, d in enumerate(dirs):
            r = score_naive(files[d], nm, agatston)
            times.append(r.total_ms)
            per_series[i].append(r.total_ms)
            slices.append(r.slices)
            totals.append(r.agatston_total)
            for k, v in r.stages_ms.items():
                stages.setdefault(k, []).append(v)
    p = percentiles(times)
    _log(quiet, f"  naive serial: p50 {p['p50']:.0f} ms per series")
    return {
        "end_to_end_ms": p,
        "end_to_end_ms_per_series_median": [float(statistics.median(v)) for v in per_series.values()],
        "stages_ms_p50": {k: float(statistics.median(v)) for k, v in stages.items()},
        "slices_per_s": float(statistics.median(slices) / (p["p50"] / 1e3)),
        "series_per_hour": float(3600.0 / (p["p50"] / 1e3)),
        "agatston_totals": sorted({round(t, 3) for t in totals}),
    }


def bench_stream(
    dirs: list[Path], models: Any, batch_size: int, rate: float, short: bool, work: Path
) -> dict[str, Any]:
    from cacstream.engine.config import ScoreConfig
    from cacstream.engine.pipeline.models import ModelStages
    from cacstream.engine.stream.latency import measure

    files = sorted(p for p in dirs[0].iterdir() if p.is_file() and p.suffix.lower() not in (".json", ".npz"))
    quiet_s = 0.5 if short else 2.0
    cfg = ScoreConfig(
        mode="model", backend=models.choice.name, precision=models.choice.precision, batch_size=batch_size
    )
    r = measure(
        files,
        work / "stream",
        rate=rate,
        quiet_s=quiet_s,
        score_cfg=cfg,
        models=ModelStages(models),
        max_batch_wait_ms=20.0,
    )
    return {
        "latency_minus_quiet_s": r["latency_minus_quiet_s"],
        "quiet_s": quiet_s,
        "rate_slices_per_s": rate,
        "slices": r["slices"],
        "backend": models.choice.name,
        "precision": models.choice.precision,
        "batch_size": batch_size,
        "report_timings_ms": r["report_timings_ms"],
    }


def summarise(configs: list[dict[str, Any]], naive: dict[str, Any]) -> dict[str, Any]:
    best = min(configs, key=lambda c: c["end_to_end_ms"]["p50"])
    n_series = len(naive["end_to_end_ms_per_series_median"])
    sum_naive = sum(naive["end_to_end_ms_per_series_median"])
    sum_best = sum(best["end_to_end_ms_per_series_median"][:n_series])
    return {
        "fastest": {
            "backend": best["backend"],
            "precision": best["precision"],
            "batch_size": best["batch_size"],
        },
        "speedup_vs_naive_p50": naive["end_to_end_ms"]["p50"] / best["end_to_end_ms"]["p50"],
        "speedup_vs_naive_total": sum_naive / sum_best if sum_best > 0 else None,
        "filter_model_compute_saved": best["filter_savings"]["model_compute_saved"],
        "filter_end_to_end_saved": best["filter_savings"]["end_to_end_saved"],
        "slices_skipped": best["filter_savings"]["slices_skipped"],
        "paper_claim_compute_saved": 0.60,
    }


def run(args: argparse.Namespace) -> int:
    from cacstream.engine.bench.report import markdown, plot, write_outputs
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.weights_location import WeightsNotFound, resolve_weights_dir

    short = bool(args.short)
    n_series = args.series if args.series is not None else (1 if short else 2)
    matrix = args.matrix if args.matrix is not None else (128 if short else 512)
    repeats = args.repeats if args.repeats is not None else (1 if short else 3)
    naive_repeats = args.naive_repeats if args.naive_repeats is not None else repeats
    batch_sizes = args.batch_sizes or ([8] if short else [1, 16])
    precisions = args.precisions or (["fp32"] if short else ["fp32", "int8"])
    if min(batch_sizes) < 1 or repeats < 1 or n_series < 1 or naive_repeats < 1:
        print("cacstream bench pipeline: batch sizes, repeats and --series must be >= 1", file=sys.stderr)
        return 2
    try:
        weights = resolve_weights_dir(args.weights)
    except WeightsNotFound as e:
        print(f"cacstream bench pipeline: {e}", file=sys.stderr)
        return 2
    from cacstream.engine.bench.measure import temp_out
    from cacstream.engine.inference.device_info import collect_device_info

    t_start = time.perf_counter()
    agatston = AgatstonConfig()
    with temp_out() as tmp:
        work = Path(tmp)
        if args.series_dir is not None:
            dirs = series_dirs_under(args.series_dir)
            source = f"{len(dirs)} series under {args.series_dir}"
        else:
            _log(args.quiet, f"generating {n_series} phantom series ({matrix}²)")
            dirs = make_phantom_series(work / "series", n_series, matrix, short)
            source = f"{n_series} cardiac-gated phantom(s), {matrix}², 3 mm, seeds 880000+"
        _log(args.quiet, f"benchmarking on {source}; weights {weights}")
        configs, skipped = load_configs(weights, args.backends, precisions, batch_sizes, args.threads, short,
                                        agatston.skeletal_component_mm3)
        if not configs:
            print(
                "cacstream bench pipeline: no configuration could load: "
                + "; ".join(f"{s['backend']} {s['precision']}: {s['reason']}" for s in skipped),
                file=sys.stderr,
            )
            return 2
        for s in skipped:
            _log(args.quiet, f"  skipped {s['backend']} {s['precision']}: {s['reason']}")
        results = [bench_config(c, dirs, repeats, agatston, work, args.quiet) for c in configs]
        naive = bench_naive(weights, dirs, naive_repeats, agatston, args.quiet)
        stream: dict[str, Any] | None = None
        if not args.no_stream:
            fastest = min(zip(results, configs), key=lambda rc: rc[0]["end_to_end_ms"]["p50"])[1]
            try:
                stream = bench_stream(
                    dirs, fastest["models"], fastest["batch_size"], args.stream_rate, short, work
                )
                _log(
                    args.quiet,
                    f"  stream: last slice → report {stream['latency_minus_quiet_s']:.3f} s (quiet period "
                    f"subtracted)",
                )
            except Exception as e:  # noqa: BLE001 - the replay machinery is another part; its failure must not hide our figures
                stream = {"error": f"{type(e).__name__}: {e}"}
        for c in configs:
            c["models"].close()
    figures = {
        "benchmark": "pipeline",
        "short": short,
        "command": "cacstream " + " ".join(sys.argv[1:]),
        "weights_dir": str(weights),
        "weights_id": configs[0]["models"].spec.weights_id,
        "source": source,
        "series": len(dirs),
        "repeats": repeats,
        "naive_repeats": naive_repeats,
        "device": collect_device_info().to_dict(),
        "configs": results,
        "skipped_configs": skipped,
        "baselines": {"naive_serial": naive},
        "stream": stream,
        "summary": summarise(results, naive),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    md = markdown(figures)
    write_outputs(figures, md, args.json, args.md, args.png, plot)
    if not args.quiet:
        print(md)
    return 0
