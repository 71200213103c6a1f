"""`cacstream build-engines WEIGHTS_DIR [--precision fp16 int8 fp32] [--max-batch N] [--out DIR]`.

Compiles each model's ONNX graph of each precision into a TensorRT ``.plan`` for the GPU of this
machine, with a batch-size optimisation profile, a shared timing cache and a cache key (GPU name,
compute capability, TensorRT version, ONNX sha256) stored beside the plan; an engine whose key still
matches is kept, a stale one is rebuilt. The inputs are checked before TensorRT is needed, so a
missing or mistyped ONNX file is reported on any machine.

Exit codes: 0 every engine fresh or built; 2 bad arguments or weights folder; 3 an input ONNX file is
missing or does not hold the precision it is named for; 4 TensorRT or a GPU is not available here;
5 TensorRT failed to build an engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "build-engines"
HELP = "compile the models' ONNX files into TensorRT engines for this GPU (cached, rebuilt when stale)"
DESCRIPTION = (
    "Build TensorRT engines (.plan) from a weights folder's ONNX files, one per model and precision. TensorRT "
    "11 takes precision from the graph (strongly typed): fp32 = the exported ONNX, fp16 = <model>.fp16.onnx "
    "(converted here with calibration/fp16.py when absent), int8 = <model>.int8.onnx (explicit Q/DQ from "
    "`cacstream calibrate`). Each plan gets a JSON key beside it; an engine built for another GPU, TensorRT "
    "version or ONNX file is rebuilt, never loaded."
)

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_UNAVAILABLE, EXIT_BUILD = 0, 2, 3, 4, 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=Path, metavar="WEIGHTS_DIR",
                        help="weights folder (config.json + *.safetensors + *.onnx) from `cacstream export`.")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "fp16", "int8"), default=["fp16"],
                        help="engine precisions to build. fp16 is the recommended GPU default; int8 needs a "
                        "calibrated <model>.int8.onnx whose `cacstream calibrate evaluate` report passed; fp32 "
                        "is the accuracy reference.")
    parser.add_argument("--max-batch", type=int, default=32, metavar="N",
                        help="largest batch the engines accept (profile max); larger inputs are chunked. "
                        "32 suits streaming (a series' flagged slices rarely exceed it).")
    parser.add_argument("--opt-batch", type=int, default=None, metavar="N",
                        help="batch size TensorRT tunes kernels for (profile opt). Default: the largest power "
                        "of two <= --max-batch; set it to --batch-size of `cacstream score`.")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="engine folder. Default: $CACSTREAM_ENGINES/<weights folder name> when set, else "
                        "WEIGHTS_DIR/engines (where `cacstream score --backend tensorrt` looks).")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild even engines whose key matches (e.g. after a driver update that the key "
                        "cannot see).")
    parser.add_argument("--workspace-gb", type=float, default=4.0,
                        help="TensorRT builder workspace limit in GiB; 4 is plenty for these models.")
    parser.add_argument("--gpu", type=int, default=0, help="CUDA device index to build for.")
    parser.add_argument("--no-convert", action="store_true",
                        help="do not make missing fp16 graphs; fail instead (when FP16 ONNX files are managed "
                        "by the calibration tooling).")


def _inputs(args: argparse.Namespace, engine_dir: Path) -> list[tuple[object, str, Path]] | int:
    """(model spec, precision, ONNX path) for every requested engine, or an exit code after a message."""
    from cacstream.engine.inference.engines import EngineBuildError, check_graph_precision
    from cacstream.engine.inference.weights_spec import WeightsFolderError, read_weights_spec

    try:
        spec = read_weights_spec(args.weights)
    except WeightsFolderError as e:
        print(f"cacstream build-engines: {e}", file=sys.stderr)
        return EXIT_USAGE
    jobs: list[tuple[object, str, Path]] = []
    for precision in dict.fromkeys(args.precision):
        for model in (spec.model("filter"), spec.model("segmenter")):
            try:
                onnx = model.onnx_path(precision, (engine_dir,))
            except WeightsFolderError as e:
                if precision != "fp16" or args.no_convert:
                    print(f"cacstream build-engines: {e}", file=sys.stderr)
                    return EXIT_INPUT
                from cacstream.calibration.fp16 import Fp16ConversionError, convert_onnx_fp16

                try:
                    src = model.onnx_path("fp32")
                    rec = convert_onnx_fp16(src, engine_dir / model.onnx_name("fp16"))
                except (WeightsFolderError, Fp16ConversionError) as e2:
                    print(f"cacstream build-engines: cannot make the fp16 graph: {e2}", file=sys.stderr)
                    return EXIT_INPUT
                onnx = engine_dir / rec.output
                print(f"{model.section}: converted {src.name} -> {onnx} (max |fp16 - fp32| {rec.max_abs_diff:.2g})")
            try:
                check_graph_precision(onnx, precision)
            except EngineBuildError as e:
                print(f"cacstream build-engines: {e}", file=sys.stderr)
                return EXIT_INPUT
            jobs.append((model, precision, onnx))
            if model.role == "segmenter":
                tile = _tile_job(spec, model, precision, onnx, engine_dir)
                if tile is not None:
                    jobs.append(tile)
    return jobs


def _tile_job(spec: object, seg: object, precision: str, onnx: Path, engine_dir: Path) -> tuple[object, str, Path] | None:
    """The segmenter at the tile size of the default segmentation regions (engine/inference/regions.py),
    when the filter's config declares its patch grid; the same engine the runtime would build on load."""
    from cacstream.engine.inference.regions import RegionConfig, tile_grid
    from cacstream.engine.inference.runtime import tile_model

    output = spec.model("filter").config.get("output") or {}  # type: ignore[attr-defined]
    patch_grid = output.get("patch_grid") if isinstance(output, dict) else None
    grid = tile_grid(RegionConfig(), int(patch_grid[0]) if patch_grid else None, int(seg.input_shape[-1]))  # type: ignore[attr-defined]
    if grid is None:
        return None
    tile_spec, tile_onnx = tile_model(seg, onnx, precision, grid.tile, engine_dir)  # type: ignore[arg-type]
    return tile_spec, precision, tile_onnx


def run(args: argparse.Namespace) -> int:
    if args.max_batch < 1 or (args.opt_batch is not None and not 1 <= args.opt_batch <= args.max_batch):
        print("cacstream build-engines: error: need 1 <= --opt-batch <= --max-batch", file=sys.stderr)
        return EXIT_USAGE
    from cacstream.engine.backends.base import BackendUnavailable
    from cacstream.engine.inference.engines import (
        BatchProfile,
        EngineBuildError,
        default_engine_dir,
        ensure_engine,
    )

    engine_dir = Path(args.out) if args.out else default_engine_dir(args.weights)
    engine_dir.mkdir(parents=True, exist_ok=True)
    jobs = _inputs(args, engine_dir)
    if isinstance(jobs, int):
        return jobs
    profile = BatchProfile.for_max(args.max_batch, args.opt_batch)
    try:
        from cacstream.engine.inference.engines import current_gpu, import_tensorrt

        trt = import_tensorrt()
        gpu = current_gpu(args.gpu)
    except BackendUnavailable as e:
        print(f"cacstream build-engines: {e}. The inputs are valid ({len(jobs)} engine(s) to build); run this "
              "command on the GPU machine that will serve them.", file=sys.stderr)
        return EXIT_UNAVAILABLE
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"TensorRT {trt.__version__} on {gpu.name} (sm {gpu.compute_capability}); engines in {engine_dir}; "
                  f"batch profile {profile.min}/{profile.opt}/{profile.max}")
    table = Table("model", "precision", "before", "action", "seconds", "plan")
    for model, precision, onnx in jobs:
        with console.status(f"{model.section} {precision}: checking / building (minutes on first build)"):  # type: ignore[attr-defined]
            try:
                done = ensure_engine(onnx, engine_dir, model.section, precision, model.input_shape, profile,  # type: ignore[attr-defined]
                                     gpu_index=args.gpu, rebuild=args.rebuild, exact_profile=True,
                                     workspace_gb=args.workspace_gb)
            except EngineBuildError as e:
                console.print(table)
                print(f"cacstream build-engines: {e}", file=sys.stderr)
                return EXIT_BUILD
        table.add_row(model.section, precision, done.status_before.describe(),  # type: ignore[attr-defined]
                      "built" if done.built else "kept", f"{done.seconds:.1f}", str(done.files.plan))
    console.print(table)
    return EXIT_OK
