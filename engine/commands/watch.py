"""`cacstream watch EXPORT_DIR --out DIR`: score every series that arrives in a scanner's export folder.

Exit codes:
  0  stopped cleanly (SIGTERM / Ctrl-C, or --exit-when-idle)
  2  usage error (bad options, folders that cannot work together)
  5  --mode model but no usable model weights
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cacstream.engine.commands.options import add_agatston_options, add_eligibility_options, add_mode_options

NAME = "watch"
HELP = "watch a scanner's export folder and score each series seconds after its last slice lands"
DESCRIPTION = (
    "Watch EXPORT_DIR (inotify, or --polling for network shares, plus a periodic rescan), assemble the "
    "series as their slices land, score each slice as it arrives, and write the report (JSON, CSV ledger, "
    "DICOM SR + SEG, key image) when the series is complete. State lives in SQLite so that a restart after "
    "a crash loses nothing and reports nothing twice. The export folder is only read, unless --move-done "
    "or --quarantine is given."
)

EXIT_OK, EXIT_USAGE, EXIT_NO_WEIGHTS = 0, 2, 5


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `watch`, `demo` and `bench stream`."""
    g = parser.add_argument_group("completion and settling")
    g.add_argument("--quiet-s", type=float, default=5.0,
                   help="a series is complete when no slice arrived for this long; 3-5 s suits scanners that "
                   "export in one burst, raise it for slow network transfers.")
    g.add_argument("--no-expected-count", action="store_true",
                   help="ignore ImagesInAcquisition: complete series only by the quiet period (use when a "
                   "scanner's ImagesInAcquisition counts more or fewer images than the series holds).")
    g.add_argument("--settle-ms", type=float, default=500.0,
                   help="a file must be unchanged this long before it is parsed; 500 ms locally, 1000-2000 ms "
                   "on network shares with coarse timestamps.")
    g.add_argument("--give-up-s", type=float, default=30.0,
                   help="a file that still does not parse after being unchanged this long is quarantined or "
                   "skipped with its reason (it is looked at again if it changes).")
    g = parser.add_argument_group("watching")
    g.add_argument("--polling", action="store_true",
                   help="poll the folder instead of inotify (network shares: SMB/NFS send no events).")
    g.add_argument("--poll-interval-s", type=float, default=1.0, help="polling period with --polling.")
    g.add_argument("--rescan-interval-s", type=float, default=30.0,
                   help="full rescan period, the safety net for lost events (also done at start and after an "
                   "inotify queue overflow).")
    g = parser.add_argument_group("pipeline")
    g.add_argument("--max-batch-wait-ms", type=float, default=50.0,
                   help="how long the slice filter / segmenter wait to fill a batch across series: 0 = lowest "
                   "latency (CPU), 20-100 = fuller batches (GPU throughput).")
    g.add_argument("--decode-threads", type=int, default=2,
                   help="pydicom decode workers; 2 on a 2-core workstation, more for slow network shares.")
    g = parser.add_argument_group("outputs")
    g.add_argument("--no-sr", action="store_true", help="do not write the DICOM SR.")
    g.add_argument("--no-seg", action="store_true", help="do not write the DICOM SEG.")
    g.add_argument("--no-key-image", action="store_true", help="do not write the key-image PNG.")


def stream_config_from_args(args: argparse.Namespace, export_dir: Path, out_dir: Path, score_config):
    from cacstream.engine.pipeline.outputs import OutputConfig
    from cacstream.engine.pipeline.runner import PipelineConfig
    from cacstream.engine.stream.assembly import CompletionConfig
    from cacstream.engine.stream.engine import StreamConfig
    from cacstream.engine.stream.settle import SettleConfig

    outputs = OutputConfig(sr=not args.no_sr, seg=not args.no_seg, key_image=not args.no_key_image)
    return StreamConfig(
        export_dir=export_dir,
        out_dir=out_dir,
        score=score_config,
        settle=SettleConfig(settle_s=args.settle_ms / 1e3, give_up_s=args.give_up_s),
        completion=CompletionConfig(quiet_s=args.quiet_s, use_expected_count=not args.no_expected_count),
        pipeline=PipelineConfig(decode_threads=args.decode_threads, batch_size=score_config.batch_size,
                                max_batch_wait_ms=args.max_batch_wait_ms,
                                with_masks=outputs.seg or outputs.key_image),
        outputs=outputs,
        ledger=getattr(args, "ledger", None),
        state_path=getattr(args, "state", None),
        polling=args.polling,
        poll_interval_s=args.poll_interval_s,
        rescan_interval_s=args.rescan_interval_s,
        move_done=getattr(args, "move_done", None),
        quarantine=getattr(args, "quarantine", None),
    )


def score_config_from_args(args: argparse.Namespace):
    from cacstream.engine.commands.options import agatston_config_from_args, eligibility_config_from_args
    from cacstream.engine.config import ScoreConfig

    if args.batch_size < 1:
        raise SystemExit("error: --batch-size must be >= 1")
    return ScoreConfig(mode=args.mode, agatston=agatston_config_from_args(args),
                       eligibility=eligibility_config_from_args(args), weights_dir=args.weights,
                       backend=args.backend, precision=args.precision, batch_size=args.batch_size,
                       segment_regions=args.segment_regions,
                       skeletal_gate=not getattr(args, "no_skeletal_gate", False))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="the folder the scanner exports into")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for reports, ledger and state (must not be inside EXPORT_DIR)")
    parser.add_argument("--ledger", type=Path, default=None, metavar="CSV",
                        help="CSV ledger, one line per report version (default: DIR/ledger.csv)")
    parser.add_argument("--state", type=Path, default=None, metavar="FILE",
                        help="SQLite state database (default: DIR/.cacstream/state.sqlite); keep it with DIR")
    parser.add_argument("--move-done", type=Path, default=None, metavar="DIR2",
                        help="move the files of each reported series to DIR2/<SeriesInstanceUID>/ (default: the "
                        "export folder is never modified)")
    parser.add_argument("--quarantine", type=Path, default=None, metavar="DIR3",
                        help="move damaged / unreadable files to DIR3 (default: they stay, recorded with reason)")
    g = parser.add_argument_group("operations")
    g.add_argument("--log-file", type=Path, default=None, metavar="FILE",
                   help="structured JSON log (default: DIR/.cacstream/watch.jsonl); '-' writes to stderr")
    g.add_argument("--log-paths", action="store_true",
                   help="log file paths relative to EXPORT_DIR and reader messages (off by default: paths "
                   "can hold patient names; lines carry path / UID hashes only).")
    g.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (localhost only).")
    g.add_argument("--no-live", action="store_true", help="no live table (it is off anyway when not on a terminal)")
    g.add_argument("--exit-when-idle", type=float, default=None, metavar="S",
                   help="exit once nothing is pending or open and nothing happened for S seconds (batch jobs, "
                   "tests); default: run until SIGTERM / Ctrl-C.")
    add_stream_options(parser)
    add_mode_options(parser)
    add_agatston_options(parser)
    add_eligibility_options(parser)


def make_log(args: argparse.Namespace, export_dir: Path, out_dir: Path):
    import sys

    from cacstream.engine.stream.engine import STATE_DIR
    from cacstream.engine.stream.logging import EventLog

    if args.log_file is not None and str(args.log_file) == "-":
        return EventLog(export_dir, log_paths=args.log_paths, stream=sys.stderr)
    path = args.log_file or out_dir / STATE_DIR / "watch.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return EventLog(export_dir, log_paths=args.log_paths, file=path)


def run(args: argparse.Namespace) -> int:
    import signal
    import sys

    from rich.console import Console

    from cacstream.engine.pipeline.models import ModelsUnavailable, load_models
    from cacstream.engine.stream.engine import ConfigError, StreamEngine

    console = Console(stderr=True)
    score_config = score_config_from_args(args)
    config = stream_config_from_args(args, args.export_dir, args.out, score_config)
    models = None
    if score_config.mode == "model":
        try:
            models = load_models(score_config)
        except ModelsUnavailable as exc:
            console.print(f"[red]cacstream watch --mode model: {exc}[/red]")
            return EXIT_NO_WEIGHTS
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        engine = StreamEngine(config, models=models, log=make_log(args, args.export_dir, args.out))
    except ConfigError as exc:
        console.print(f"[red]cacstream watch: {exc}[/red]")
        return EXIT_USAGE

    def on_term(signum, frame) -> None:
        engine.request_stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    metrics = None
    if args.metrics_port is not None:
        from cacstream.engine.stream.metrics import MetricsServer

        metrics = MetricsServer(args.metrics_port, engine.metrics_samples).start()
        console.print(f"metrics on http://127.0.0.1:{metrics.port}/metrics")
    idle_s = args.exit_when_idle

    def stop_when(e: StreamEngine) -> bool:
        return idle_s is not None and e.idle(idle_s)

    live_on = not args.no_live and sys.stderr.isatty()
    console.print(f"watching {args.export_dir} → {args.out} ({score_config.mode} mode, quiet period {args.quiet_s:g} s)")
    try:
        if live_on:
            import time

            from rich.live import Live

            from cacstream.engine.stream.display import live_view

            last = [0.0]

            def tick(e: StreamEngine) -> None:
                if time.monotonic() - last[0] >= 0.25:  # the table is rebuilt 4 times a second at most
                    last[0] = time.monotonic()
                    live.update(live_view(e))

            with Live(live_view(engine), console=console, refresh_per_second=4, transient=False) as live:
                engine.run(stop_when, on_tick=tick)
        else:
            engine.run(stop_when)
    finally:
        if metrics is not None:
            metrics.stop()
        engine.log.close()
    console.print(f"stopped: {int(engine.counters['reports_scored'])} reports scored, "
                  f"{int(engine.counters['reports_rejected'])} rejected")
    return EXIT_OK
