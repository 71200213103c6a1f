"""`cacstream train dino|classifier|unet --config FILE [--resume] [--out DIR]`.

Exit codes: 0 finished (or paused by --stop-after-epochs), 2 bad config or arguments, 3 data or run-folder
problem (named in the message), 4 training diverged (non-finite loss).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

NAME = "train"
HELP = "train a model stage: DINO-LG backbone, slice classifier or per-artery U-Net"
DESCRIPTION = (
    "Train one stage of the model pipeline from a JSON or TOML config (examples in training/configs/): "
    "`dino` pretrains the ViT backbone with label-guided DINO (DINO-LG), `classifier` fits the linear slice "
    "filter on its frozen features, `unet` trains the per-artery calcium segmenter. Runs write a resumable "
    "checkpoint, metrics.json and curves.png every epoch; export finished runs with `cacstream export`."
)

EXIT_OK, EXIT_CONFIG, EXIT_DATA, EXIT_DIVERGED = 0, 2, 3, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "stage",
        choices=("dino", "classifier", "unet"),
        help="dino: self-supervised backbone (first); classifier: needs a dino run; "
        "unet: independent of the other two.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="stage config (.json or .toml); every key is documented by --show-config. "
        "Start from training/configs/<profile>_<stage>.toml.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="run folder (checkpoints, metrics, final model). Default: runs/<stage>-<time>. "
        "With --resume, the folder of the interrupted run.",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, exactly where it stopped "
        "(same config required; only runtime device/threads/workers/compile may change).",
    )
    parser.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        metavar="N",
        help="run at most N epochs in this invocation, checkpoint and exit (time-sliced "
        "training on a shared machine); continue later with --resume.",
    )
    parser.add_argument(
        "--show-config",
        action="store_true",
        help="print every config key of the stage with its default and meaning, and exit.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars, only the final summary.")


def run(args: argparse.Namespace) -> int:
    from cacstream.training.config import STAGES, ConfigError, describe_config, load_config

    if args.show_config:
        print(f"# cacstream train {args.stage}: config keys, defaults and meaning (JSON or TOML)\n")
        print(describe_config(STAGES[args.stage]))
        return EXIT_OK
    if args.config is None:
        print("cacstream train: error: --config FILE is required (see --show-config)", file=sys.stderr)
        return EXIT_CONFIG
    if args.resume and args.out is None:
        print(
            "cacstream train: error: --resume needs --out DIR (the interrupted run's folder)", file=sys.stderr
        )
        return EXIT_CONFIG
    try:
        cfg = load_config(args.stage, args.config)
    except ConfigError as e:
        print(f"cacstream train: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    out = args.out or Path("runs") / f"{args.stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = (
        ["cacstream", *sys.argv[1:]]
        if sys.argv and "cacstream" in Path(sys.argv[0]).name
        else ["cacstream", "train", args.stage, "--config", str(args.config), "--out", str(out)]
    )

    from cacstream.training.checkpoint import CheckpointError
    from cacstream.training.classifier_trainer import RunError, train_classifier
    from cacstream.training.datasets.cases import CaseError
    from cacstream.training.datasets.sources import SourceError
    from cacstream.training.dino.trainer import train_dino
    from cacstream.training.unet_trainer import train_unet

    trainer = {"dino": train_dino, "classifier": train_classifier, "unet": train_unet}[args.stage]
    try:
        result = trainer(
            cfg,
            out,
            resume=args.resume,
            stop_after_epochs=args.stop_after_epochs,  # type: ignore[arg-type]
            quiet=args.quiet,
            command=command,
        )
    except FloatingPointError as e:
        print(f"cacstream train: diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (
        CaseError,
        SourceError,
        RunError,
        CheckpointError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
    ) as e:
        print(f"cacstream train: {e}", file=sys.stderr)
        return EXIT_DATA
    last = result.metrics[-1] if result.metrics else {}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float) and k != "time_s")
    print(
        f"{args.stage}: {result.status} after {result.epochs_done} epoch(s), {result.iterations} iterations "
        f"this run -> {out}" + (f"\nlast epoch: {shown}" if shown else "")
    )
    if result.status == "paused":
        print(f"resume with: cacstream train {args.stage} --config {args.config} --out {out} --resume")
    return EXIT_OK
