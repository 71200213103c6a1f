"""`cacstream bench stream`: time from the last slice landing to the report, minus the quiet period.

The issue's latency figure: a 57-slice series (COCA gated patient 0 when the samples are there, else a
57-slice 512² phantom) is replayed at 20 slices/s into a watched folder; for each repeat a fresh engine
is started (and warmed up, as a running workstation would be), and the time from the moment the last
slice's bytes were in place to the moment its JSON report was published is measured; the quiet period
(a configured wait, not work) is subtracted. Medians of the repeats are reported, with the per-stage
times the reports carry.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HELP = "streaming latency: last slice landed → report published, minus the quiet period (replayed series)"
DESCRIPTION = (
    "Replay a 57-slice series at 20 slices/s into a watched folder, several times with a fresh engine each, and "
    "report the median time from the last slice landing to the JSON report minus the quiet period (the issue's "
    "target: < 2 s with the default weights on a CPU workstation). Works in threshold mode and model mode."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--series-dir", type=Path, default=None, metavar="DIR",
                        help="folder holding the series to replay (default: COCA gated patient 0 from the shared "
                        "data, else a 57-slice 512² phantom)")
    parser.add_argument("--rate", type=float, default=20.0, help="replay rate in slices per second (issue: 20)")
    parser.add_argument("--repeats", type=int, default=5, help="number of replays; the median is reported")
    parser.add_argument("--quiet-s", type=float, default=2.0,
                        help="quiet period of the engine (subtracted from the figure; 2 s keeps the run short)")
    parser.add_argument("--mode", choices=("auto", "model", "threshold"), default="auto",
                        help="auto: model mode when weights are installed, else threshold mode")
    parser.add_argument("--weights", default=None, metavar="DIR", help="weights folder for model mode")
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), default="auto",
                        help="inference backend in model mode")
    parser.add_argument("--max-batch-wait-ms", type=float, default=20.0,
                        help="batch wait of the model stages (lower is lower latency on a CPU)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the figures to FILE")
    from cacstream.engine.commands.options import add_segment_regions_option, add_skeletal_option

    add_segment_regions_option(parser)
    add_skeletal_option(parser)


def _default_series(work: Path) -> tuple[list[Path], str]:
    import os

    root = Path(os.environ.get("CACSTREAM_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    coca = root / "coca-sample" / "Gated_release_final" / "patient" / "0"
    if coca.is_dir():
        files = sorted(p for p in coca.rglob("*") if p.is_file())
        return files, f"COCA gated patient 0 ({len(files)} slices)"
    from cacstream.training.phantom import PhantomConfig, make_phantom, write_series

    case = make_phantom(57, PhantomConfig(kind="cardiac_gated", matrix=512, thickness_mm=3.0, increment_mm=3.0,
                                          z_coverage_mm=57 * 3.0 - 1.0))
    files = write_series(case, work / "src", write_labels=False)
    return files, f"phantom cardiac_gated 512² ({len(files)} slices)"


def measure(files: list[Path], work: Path, *, rate: float, quiet_s: float, score_cfg: Any, models: Any,
            max_batch_wait_ms: float) -> dict[str, Any]:
    """One replay with a fresh, warmed-up engine; returns the latency and the report's timings."""
    from cacstream.engine.pipeline.runner import PipelineConfig
    from cacstream.engine.stream.assembly import CompletionConfig
    from cacstream.engine.stream.engine import Published, StreamConfig, StreamEngine
    from cacstream.engine.stream.logging import EventLog
    from cacstream.engine.stream.replay import ReplayConfig, replay

    export, out = work / "export", work / "out"
    export.mkdir(parents=True)
    published: list[Published] = []
    config = StreamConfig(export_dir=export, out_dir=out, score=score_cfg,
                          completion=CompletionConfig(quiet_s=quiet_s, use_expected_count=False),
                          pipeline=PipelineConfig(decode_threads=2, batch_size=score_cfg.batch_size,
                                                  max_batch_wait_ms=max_batch_wait_ms),
                          loop_interval_s=0.02)
    engine = StreamEngine(config, models=models, log=EventLog(export, file=out / "watch.jsonl"),
                          on_published=published.append)
    engine.start()
    engine.warm.wait(60)
    result: dict[str, Any] = {}
    writer = threading.Thread(target=lambda: result.update(r=replay([files], export, ReplayConfig(rate=rate))))
    writer.start()
    t0 = time.monotonic()
    engine.run(lambda e: (bool(published) and not writer.is_alive()) or time.monotonic() - t0 > 300)
    writer.join()
    if not published:
        raise RuntimeError("the series was not reported within 300 s")
    p = published[0]
    last = result["r"].last_landing(0)
    return {"latency_minus_quiet_s": p.published_at - last - quiet_s, "report_timings_ms": p.report["timings_ms"],
            "agatston_total": p.agatston_total, "slices": p.slices}


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cacstream.engine.commands.demo import _resolve_mode

    console = Console(stderr=True)
    score_cfg, models, note = _resolve_mode(args)
    if args.mode == "model" and models is None:
        console.print(f"[red]cacstream bench stream --mode model: {note}[/red]")
        return 5
    with tempfile.TemporaryDirectory(prefix="cacstream-bench-stream-") as tmp:
        work = Path(tmp)
        if args.series_dir is not None:
            files = sorted(p for p in Path(args.series_dir).rglob("*") if p.is_file())
            source = f"{args.series_dir} ({len(files)} files)"
        else:
            files, source = _default_series(work)
        console.print(f"{source}, {args.rate:g} slices/s, {score_cfg.mode} mode, quiet {args.quiet_s:g} s, "
                      f"{args.repeats} repeats")
        runs = []
        for k in range(args.repeats):
            r = measure(files, work / f"run{k}", rate=args.rate, quiet_s=args.quiet_s, score_cfg=score_cfg,
                        models=models, max_batch_wait_ms=args.max_batch_wait_ms)
            runs.append(r)
            console.print(f"  repeat {k + 1}: {r['latency_minus_quiet_s']:.3f} s")
    lat = sorted(r["latency_minus_quiet_s"] for r in runs)
    stages = sorted({k for r in runs for k in r["report_timings_ms"]})
    med_stages = {k: statistics.median(r["report_timings_ms"].get(k, 0.0) for r in runs) for k in stages}
    figures = {
        "benchmark": "stream", "source": source, "rate_slices_per_s": args.rate, "mode": score_cfg.mode,
        "quiet_s": args.quiet_s, "repeats": args.repeats,
        "latency_minus_quiet_s": {"median": statistics.median(lat), "min": lat[0], "max": lat[-1], "all": lat},
        "report_timings_ms_median": med_stages,
        "model": dataclasses.asdict(models.info) if models is not None else None,
        "device": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                   "platform": platform.platform()},
        "command": "cacstream bench stream " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k in ("rate", "repeats", "quiet_s", "mode", "segment_regions", "skeletal_component_mm3",
                      "min_claimed_share", "min_bone_distance_mm", "no_skeletal_gate")
            and v is not None),
    }
    t = Table(title="last slice landed → report published, minus the quiet period")
    t.add_column("median s")
    t.add_column("min s")
    t.add_column("max s")
    t.add_row(f"{figures['latency_minus_quiet_s']['median']:.3f}", f"{lat[0]:.3f}", f"{lat[-1]:.3f}")
    console.print(t)
    console.print("per-series stage times (ms, median; summed over slices): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in med_stages.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures["latency_minus_quiet_s"]))
    return 0
