"""`cacstream score PATH --out DIR`: score every eligible CT series found under PATH.

Exit codes (documented in the README):
  0  every eligible series was scored (rejected series and skipped files are reported, not errors)
  1  unexpected error before any series could be handled
  2  usage error (bad options)
  3  nothing to score: no eligible series under PATH (see the rejected/skipped lists)
  4  at least one eligible series failed while scoring (the others were written)
  5  --mode model but no usable model weights
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cacstream.engine.commands.options import (
    add_agatston_options,
    add_eligibility_options,
    add_mode_options,
)

NAME = "score"
HELP = "score every eligible CT series under PATH and write DIR/<SeriesInstanceUID>.json (+ SR, SEG, key image)"
DESCRIPTION = (
    "Find every CT series under PATH (files in any order, nested folders), reject the ones that cannot "
    "be scored with a reason, score the rest slice by slice (the same stages as `cacstream watch`, so both give "
    "the same scores), and write per series a JSON report, a DICOM SR with the scores, a DICOM SEG with the "
    "lesion masks and a key-image PNG, plus a CSV ledger and a run summary listing every file skipped and why."
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOTHING, EXIT_SERIES_FAILED, EXIT_NO_WEIGHTS = 0, 1, 2, 3, 4, 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, metavar="PATH", help="a DICOM file or a folder searched recursively")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the reports")
    parser.add_argument("--ledger", type=Path, default=None, metavar="CSV",
                        help="CSV ledger to append one line per report to (default: DIR/ledger.csv)")
    parser.add_argument("--threads", type=int, default=0,
                        help="decoding threads; 0 = one per CPU core (recommended)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables, only errors")
    g = parser.add_argument_group("outputs (besides DIR/<SeriesInstanceUID>.json, the ledger and run-summary.json)")
    g.add_argument("--no-sr", action="store_true", help="do not write DIR/<uid>.sr.dcm (DICOM SR with the scores)")
    g.add_argument("--no-seg", action="store_true",
                   help="do not write DIR/<uid>.seg.dcm (DICOM SEG with the lesion masks by artery)")
    g.add_argument("--no-key-image", action="store_true", help="do not write DIR/<uid>.key.png (key image)")
    g.add_argument("--max-batch-wait-ms", type=float, default=50.0,
                   help="model mode: how long a partial batch waits for more slices (across series); the "
                   "default suits CPUs and GPUs alike for a folder scored at once.")
    add_mode_options(parser)
    add_agatston_options(parser)
    add_eligibility_options(parser)


def run(args: argparse.Namespace) -> int:
    from cacstream.engine.commands.options import agatston_config_from_args, eligibility_config_from_args
    from cacstream.engine.config import ScoreConfig
    from cacstream.engine.pipeline.batch import score_folder

    if args.batch_size < 1:
        raise SystemExit("cacstream score: error: --batch-size must be >= 1")
    config = ScoreConfig(
        mode=args.mode,
        agatston=agatston_config_from_args(args),
        eligibility=eligibility_config_from_args(args),
        weights_dir=args.weights,
        backend=args.backend,
        precision=args.precision,
        batch_size=args.batch_size,
        decode_threads=args.threads,
        segment_regions=args.segment_regions,
        skeletal_gate=not args.no_skeletal_gate,
    )
    from cacstream.engine.pipeline.outputs import OutputConfig

    outputs = OutputConfig(sr=not args.no_sr, seg=not args.no_seg, key_image=not args.no_key_image)
    return score_folder(args.path, args.out, config, ledger=args.ledger, quiet=args.quiet, outputs=outputs,
                        max_batch_wait_ms=args.max_batch_wait_ms)
