"""The one command line: ``cacstream <command> ...``.

Each command lives in a small module beside the part it drives and exposes ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import heavy libraries
(torch, numba, pydicom) inside ``run`` so that ``cacstream --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cacstream import __version__
from cacstream.engine.commands.help_format import HelpFormatter

#: Command modules, in the order ``--help`` lists them. Add a line when a command lands.
COMMAND_MODULES: tuple[str, ...] = (
    "cacstream.engine.commands.score",
    "cacstream.engine.commands.bench",
    "cacstream.training.commands.train",
    "cacstream.training.commands.export",
    "cacstream.training.commands.phantom",
    "cacstream.engine.commands.watch",
    "cacstream.engine.commands.replay",
    "cacstream.engine.commands.demo",
    "cacstream.engine.commands.build_engines",
    "cacstream.calibration.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cacstream",
        description="Coronary artery calcium scoring on CT series as they arrive.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cacstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
