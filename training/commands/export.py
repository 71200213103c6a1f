"""`cacstream export --classifier RUN --segmenter RUN --out DIR`: write a weights folder.

Exit codes: 0 written and every ONNX file matched PyTorch; 2 bad arguments; 3 a run folder is unusable;
4 an ONNX file differs from PyTorch beyond the tolerance (removed, nothing served from it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "export"
HELP = "export trained runs to a weights folder (config.json + safetensors + checked ONNX)"
DESCRIPTION = (
    "Collect a finished classifier run (DINO-LG backbone + linear head) and a finished U-Net run into one "
    "weights folder that `cacstream score --weights DIR` serves: config.json (architectures, input sizes, "
    "preprocessing, operating threshold, training data, commands, metrics), safetensors weights, and ONNX "
    "files with a fixed input size and a dynamic batch axis, each checked against PyTorch with ONNX Runtime."
)

EXIT_OK, EXIT_USAGE, EXIT_RUN, EXIT_MISMATCH = 0, 2, 3, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--classifier",
        type=Path,
        default=None,
        metavar="RUN",
        help="finished `cacstream train classifier` run folder (the slice filter).",
    )
    parser.add_argument(
        "--segmenter",
        type=Path,
        default=None,
        metavar="RUN",
        help="finished `cacstream train unet` run folder (the per-artery segmenter).",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="weights folder to write.")
    parser.add_argument(
        "--opset",
        type=int,
        default=18,
        help="ONNX opset (>= 17). 18 is the dynamo exporter's native opset (recommended; "
        "ONNX Runtime and TensorRT 10 read it); 17 needs --exporter torchscript.",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest accepted |ONNX Runtime - PyTorch| on the logits; fp32 exports "
        "differ by ~1e-5, so 1e-3 only trips on a real export bug.",
    )
    parser.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        default="dynamo",
        help="torch.onnx exporter: dynamo (torch.export, the maintained one; recommended) or "
        "the legacy TorchScript tracer (fallback).",
    )
    parser.add_argument(
        "--no-onnx",
        action="store_true",
        help="write config.json + safetensors only (PyTorch serving); ONNX can be added later.",
    )
    parser.add_argument(
        "--id",
        default=None,
        help="weights id recorded in config.json and in every report (default: the folder name).",
    )


def run(args: argparse.Namespace) -> int:
    if args.classifier is None and args.segmenter is None:
        print("cacstream export: error: give --classifier RUN and/or --segmenter RUN", file=sys.stderr)
        return EXIT_USAGE
    if args.opset < 17:
        print("cacstream export: error: --opset must be >= 17", file=sys.stderr)
        return EXIT_USAGE
    from cacstream.training.classifier_trainer import RunError
    from cacstream.training.export import ExportError, export_weights
    from cacstream.training.weights import WeightsError

    try:
        cfg = export_weights(
            args.out,
            args.classifier,
            args.segmenter,
            onnx=not args.no_onnx,
            opset=args.opset,
            tolerance=args.tolerance,
            exporter=args.exporter,
            weights_id=args.id,
            command=["cacstream", "export", *sys.argv[2:]] if len(sys.argv) > 1 else None,
        )
    except ExportError as e:
        print(f"cacstream export: {e}", file=sys.stderr)
        return EXIT_MISMATCH
    except (RunError, WeightsError, FileNotFoundError, KeyError) as e:
        print(f"cacstream export: unusable run folder: {e}", file=sys.stderr)
        return EXIT_RUN
    for part in ("slice_filter", "segmenter"):
        if part in cfg:
            chk = cfg[part].get("onnx_check")
            diff = (
                f", ONNX max |diff| {chk['max_abs_diff']:.2e} (tolerance {chk['tolerance']:.0e})"
                if chk
                else ""
            )
            print(f"{part}: {cfg[part]['weights']}{diff}")
    print(f"weights folder: {args.out}")
    return EXIT_OK
