"""`cacstream demo`: generate phantoms, replay them into a temporary export folder, watch, show the scores live.

Exit codes: 0 the engine reported every series (and, in threshold mode, each equals its independent
reference); 1 a series was not reported in time, a threshold-mode score differs from its reference, or
(only with --require-agreement) a model-mode risk category differs from the phantom truth; 5 --mode
model without usable weights. Model-mode disagreements are always shown and counted: they measure the
weights (docs/models.md), not the engine.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cacstream.engine.commands.options import add_segment_regions_option

NAME = "demo"
HELP = "the whole stream on this machine: phantoms → replayed export folder → live scores next to the truth"
DESCRIPTION = (
    "Generate a few phantom CT series, replay them slice by slice into a temporary export folder (interleaved, "
    "shuffled, some files written in chunks or renamed, plus a junk file), watch that folder with the streaming "
    "engine and show a live table of series, progress and scores next to the phantom truth. Model mode when "
    "model weights are installed, threshold mode otherwise (or as chosen with --mode)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--series", type=int, default=4, help="number of phantom series (4-8 shows interleaving)")
    parser.add_argument("--matrix", type=int, default=256,
                        help="rows = columns of the phantom slices; 512 is a real scanner, 128-256 keeps it quick")
    parser.add_argument("--rate", type=float, default=40.0, help="replay rate, slices per second over all series")
    parser.add_argument("--mode", choices=("auto", "model", "threshold"), default="auto",
                        help="auto: model mode when weights are installed, else threshold mode (phantoms only).")
    parser.add_argument("--weights", default=None, metavar="DIR", help="weights folder for model mode")
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), default="auto",
                        help="inference backend in model mode")
    parser.add_argument("--quiet-s", type=float, default=2.0,
                        help="quiet period that completes a series (short here: the replay is local)")
    parser.add_argument("--seed", type=int, default=1, help="first phantom seed")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="work in DIR (src/, export/, out/) and keep it; default: a temporary folder, removed")
    parser.add_argument("--no-live", action="store_true", help="no live table (only the summary)")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up after this long")
    add_segment_regions_option(parser)
    parser.add_argument("--require-agreement", action="store_true",
                        help="model mode: also exit 1 when a risk category disagrees with the phantom's truth "
                             "(for validating new weights). Without it, disagreements are shown in red and "
                             "counted, and the exit code only says whether the engine scored every series.")


def _resolve_mode(args: argparse.Namespace):
    from cacstream.engine.config import ScoreConfig
    from cacstream.engine.pipeline.models import ModelsUnavailable, load_models

    if args.mode == "threshold":
        return ScoreConfig(mode="threshold"), None, None
    cfg = ScoreConfig(mode="model", weights_dir=args.weights, backend=args.backend,
                      segment_regions=args.segment_regions,
                      skeletal_gate=not getattr(args, "no_skeletal_gate", False))
    if getattr(args, "skeletal_component_mm3", None) is not None:  # bench stream's options
        cfg = dataclasses.replace(cfg, agatston=dataclasses.replace(
            cfg.agatston, skeletal_component_mm3=args.skeletal_component_mm3 or None))
    if getattr(args, "min_claimed_share", None) is not None:
        cfg = dataclasses.replace(cfg, agatston=dataclasses.replace(
            cfg.agatston, min_claimed_share=args.min_claimed_share or None))
    if getattr(args, "min_bone_distance_mm", None) is not None:
        cfg = dataclasses.replace(cfg, agatston=dataclasses.replace(
            cfg.agatston, min_bone_distance_mm=args.min_bone_distance_mm or None))
    if getattr(args, "no_cardiac_levels", False):
        cfg = dataclasses.replace(cfg, agatston=dataclasses.replace(cfg.agatston, cardiac_levels=False))
    try:
        return cfg, load_models(cfg), None
    except ModelsUnavailable as exc:
        if args.mode == "model":
            return cfg, None, str(exc)
        return ScoreConfig(mode="threshold"), None, f"no model weights ({exc.__class__.__name__}): threshold mode"


def run(args: argparse.Namespace) -> int:
    import shutil
    import sys
    import tempfile
    import time

    from rich.console import Console
    from rich.table import Table

    from cacstream.engine.pipeline.runner import PipelineConfig
    from cacstream.engine.stream.assembly import CompletionConfig
    from cacstream.engine.stream.demo import generate_phantoms, run_demo
    from cacstream.engine.stream.engine import StreamConfig
    from cacstream.engine.stream.logging import EventLog
    from cacstream.engine.stream.replay import ReplayConfig
    from cacstream.engine.stream.settle import SettleConfig

    console = Console(stderr=True)
    score_cfg, models, note = _resolve_mode(args)
    if args.mode == "model" and models is None:
        console.print(f"[red]cacstream demo --mode model: {note}[/red]")
        return 5
    if note:
        console.print(f"[yellow]{note}[/yellow]")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cacstream-demo-"))
    src, export, out = work / "src", work / "export", work / "out"
    for d in (src, export, out):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    try:
        t = time.monotonic()
        with console.status(f"generating {args.series} phantom series ({args.matrix}²)…"):
            series = generate_phantoms(src, args.series, score_cfg.mode, args.matrix, args.seed)
        console.print(f"generated {len(series)} series, {sum(len(s.files) for s in series)} slices in "
                      f"{time.monotonic() - t:.1f} s; replaying at {args.rate:g} slices/s into {export}")
        config = StreamConfig(
            export_dir=export, out_dir=out, score=score_cfg,
            settle=SettleConfig(settle_s=0.2, give_up_s=3.0),
            completion=CompletionConfig(quiet_s=args.quiet_s),
            pipeline=PipelineConfig(decode_threads=2, batch_size=score_cfg.batch_size, max_batch_wait_ms=20.0),
            rescan_interval_s=10.0,
        )
        replay_cfg = ReplayConfig(rate=args.rate, shuffle=True, interleave=True, chunked_fraction=0.15,
                                  rename_fraction=0.15, chunk_pause_s=0.1, junk=1, seed=args.seed)
        truth = {s.uid: f"{s.truth_total:.1f} ({s.truth_risk})" for s in series}
        log = EventLog(export, file=out / "demo.jsonl")
        live_on = not args.no_live and sys.stderr.isatty()
        if live_on:
            from rich.live import Live

            from cacstream.engine.stream.display import live_view

            last = [0.0]
            with Live(console=console, refresh_per_second=4) as live:
                def tick(e) -> None:
                    if time.monotonic() - last[0] >= 0.25:
                        last[0] = time.monotonic()
                        live.update(live_view(e, truth))

                result = run_demo(series, export, config, replay_cfg, models=models, timeout_s=args.timeout_s,
                                  on_tick=tick, log=log)
        else:
            result = run_demo(series, export, config, replay_cfg, models=models, timeout_s=args.timeout_s, log=log)
        log.close()
        table = Table(title=f"cacstream demo ({score_cfg.mode} mode) — {result.elapsed_s:.1f} s")
        for col in ("series", "slices", "Agatston", "risk", "reference", "agrees", "last slice → report − quiet"):
            table.add_column(col)
        ok = not result.timed_out  # the engine: every series reported in time
        exact = True  # threshold mode: the pipeline equals the reference (an engine property)
        disagree = 0  # model mode: categories that differ from the phantom truth (a model property)
        for s in series:
            p = result.published.get(s.uid)
            if p is None:
                table.add_row(s.label, str(len(s.files)), "[red]not reported[/red]", "", f"{s.truth_total:.1f}", "no", "")
                ok = False
                continue
            got = p.agatston_total if p.agatston_total is not None else float("nan")
            if score_cfg.mode == "threshold":
                agrees = abs(got - s.truth_total) <= 0.01
                exact &= agrees
            else:
                agrees = p.risk_category == s.truth_risk
                disagree += not agrees
            lat = result.latency_minus_quiet_s(s.uid, args.quiet_s)
            table.add_row(s.label, str(p.slices), f"{got:.1f}", str(p.risk_category), f"{s.truth_total:.1f} ({s.truth_risk})",
                          "[green]yes[/green]" if agrees else "[red]no[/red]", "" if lat is None else f"{lat:.2f} s")
        console.print(table)
        console.print(f"reports, SR, SEG and key images: {out}" if args.keep else
                      "(run with --keep DIR to keep the reports, SR, SEG and key images)")
        if disagree:
            info = models.info if models is not None else None
            console.print(f"[red]{disagree} of {len(series)} model-mode risk categories disagree with the phantom "
                          f"truth[/red] (weights {info.weights_id if info else '?'}; their held-out accuracy is "
                          "in docs/models.md)" + ("" if args.require_agreement else
                                                  " — the engine itself scored every series; "
                                                  "--require-agreement makes this an error"))
        if not ok:
            console.print("[red]the engine did not report every series in time[/red]")
        return 0 if ok and exact and not (args.require_agreement and disagree) else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
