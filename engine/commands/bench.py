"""`cacstream bench BENCHMARK ...`: the speed benchmarks, one sub-command per part of the engine.

Each sub-benchmark is a module with ``HELP``, optional ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``, registered below by its import path. A module that is not there yet (or fails to
import) still shows up in ``cacstream bench --help``, marked unavailable, and running it says why
instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from cacstream.engine.commands.help_format import HelpFormatter

NAME = "bench"
HELP = "speed benchmarks: agatston (Numba vs scipy vs cc3d), kernels, pipeline"
DESCRIPTION = (
    "Speed benchmarks of the engine's parts. Every benchmark measures its baselines in the same run, "
    "reports medians of repeated runs and ratios, and can write its figures to JSON (--json FILE)."
)

#: Sub-benchmarks in the order ``--help`` lists them: name → module implementing it.
SUB_BENCHMARKS: dict[str, str] = {
    "agatston": "cacstream.engine.scoring.bench",
    "kernels": "cacstream.kernels.bench",
    "pipeline": "cacstream.engine.bench.pipeline",
    "stream": "cacstream.engine.stream.latency",
}

EXIT_UNAVAILABLE = 2


def load_benchmark(module_path: str) -> tuple[ModuleType | None, str | None]:
    """Import a sub-benchmark module: (module, None), or (None, why it is unavailable)."""
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_path == missing or module_path.startswith(missing + "."):
            return None, f"module {module_path} is not part of this installation yet"
        return None, f"module {module_path} needs {missing!r}, which is not installed ({exc})"
    except Exception as exc:  # a broken module must not break every other command
        return None, f"module {module_path} failed to import: {type(exc).__name__}: {exc}"
    missing_api = [a for a in ("HELP", "add_arguments", "run") if not hasattr(module, a)]
    if missing_api:
        return None, f"module {module_path} lacks {', '.join(missing_api)} (not a benchmark module)"
    return module, None


def _unavailable(name: str, why: str):
    def run(args: argparse.Namespace) -> int:
        print(f"cacstream bench {name}: unavailable: {why}", file=sys.stderr)
        return EXIT_UNAVAILABLE

    return run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, module_path in SUB_BENCHMARKS.items():
        module, why = load_benchmark(module_path)
        if module is None:
            # no option prefix: whatever follows (options included) is accepted, so the user reads why
            # the benchmark is unavailable rather than an argparse complaint about its options
            p = sub.add_parser(name, help=f"(unavailable: {why})", description=f"Unavailable: {why}",
                               prefix_chars="\x00", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(_bench_run=_unavailable(name, why or "unknown reason"))
            continue
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_bench_run=module.run)
    parser.set_defaults(_bench_parser=parser)


def run(args: argparse.Namespace) -> int:
    fn = getattr(args, "_bench_run", None)
    if fn is None:
        parser = getattr(args, "_bench_parser", None)
        if parser is not None:
            parser.print_help(sys.stderr)
        print(f"\ncacstream bench: choose a benchmark: {', '.join(SUB_BENCHMARKS)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return int(fn(args) or 0)
