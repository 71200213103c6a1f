"""`cacstream replay SRC EXPORT_DIR --rate R`: write the series under SRC into EXPORT_DIR like a scanner."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "replay"
HELP = "write the series under SRC into EXPORT_DIR slice by slice at scanner speed (tests, demos, benchmarks)"
DESCRIPTION = (
    "Copy every DICOM series found under SRC into EXPORT_DIR at R slices per second, series interleaved, "
    "optionally shuffled, some files written in chunks with pauses or under a temporary name then renamed, "
    "with optional junk, truncated and duplicate files mixed in. SRC is only read."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, metavar="SRC", help="folder holding DICOM series (searched recursively)")
    parser.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="folder to write into (created)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="slices per second over all series; scanners export about 10-50.")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the slice order within each series")
    parser.add_argument("--sequential", action="store_true",
                        help="one series after the other (default: interleaved, as when several series export)")
    parser.add_argument("--chunked", type=float, default=0.0, metavar="FRACTION",
                        help="fraction of files written in chunks with pauses (slow transfers), e.g. 0.2")
    parser.add_argument("--rename", type=float, default=0.0, metavar="FRACTION",
                        help="fraction of files written under a hidden temporary name, then renamed, e.g. 0.2")
    parser.add_argument("--chunk-pause-s", type=float, default=0.2, help="pause between the chunks of a file")
    parser.add_argument("--junk", type=int, default=0, help="junk (random-byte) files to mix in")
    parser.add_argument("--truncated", type=int, default=0, help="truncated copies of real slices to mix in")
    parser.add_argument("--duplicates", type=int, default=0,
                        help="duplicate copies of real slices (same image, another file name) to mix in")
    parser.add_argument("--layout", choices=("flat", "series"), default="flat",
                        help="flat: all files in EXPORT_DIR; series: one sub-folder per series")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices (reproducible replays)")


def run(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cacstream.engine.stream.replay import ReplayConfig, discover_series, plan, replay

    console = Console(stderr=True)
    if not args.src.is_dir():
        console.print(f"[red]cacstream replay: {args.src}: no such folder[/red]")
        return 2
    try:
        config = ReplayConfig(rate=args.rate, shuffle=args.shuffle, interleave=not args.sequential,
                              chunked_fraction=args.chunked, rename_fraction=args.rename,
                              chunk_pause_s=args.chunk_pause_s, junk=args.junk, truncated=args.truncated,
                              duplicates=args.duplicates, layout=args.layout, seed=args.seed)
    except ValueError as exc:
        console.print(f"[red]cacstream replay: {exc}[/red]")
        return 2
    series = discover_series(args.src)
    if not series:
        console.print(f"[yellow]cacstream replay: no DICOM image series under {args.src}[/yellow]")
        return 3
    n = len(plan(series, args.export_dir, config))
    console.print(f"replaying {len(series)} series ({sum(map(len, series))} slices) into {args.export_dir} "
                  f"at {args.rate:g} slices/s")
    with Progress(TextColumn("writing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("files", total=n)
        replay(series, args.export_dir, config, on_written=lambda w, t: bar.advance(task))
    return 0
