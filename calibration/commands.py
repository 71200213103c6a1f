"""``cacstream calibrate build|inspect|quantize|evaluate|compare|mass``: INT8 calibration sets and scanner
mass calibration, from the command line.

Exit codes: 0 done (evaluate: gate passed); 1 evaluate's gate failed; 2 bad arguments or unusable input
(the message names the file and the reason); 3 the tool itself failed (quantisation error, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cacstream.engine.commands.help_format import HelpFormatter

NAME = "calibrate"
HELP = "INT8 calibration sets (build, inspect, quantize, evaluate, compare) and scanner mass calibration"
DESCRIPTION = (
    "Tools for INT8 deployment. `build` chooses a stratified, seeded calibration set of preprocessed slices from "
    "series folders; `inspect` shows what a set covers and misses (tables, histograms, per-layer activation ranges); "
    "`quantize` writes explicit Q/DQ INT8 ONNX graphs from a set (ONNX Runtime CPU and strongly typed TensorRT), "
    "keeping in FP32 the few layers a per-layer sensitivity analysis finds dominant (ranking and bar chart kept); "
    "`evaluate` measures INT8 against FP32 on validation series with a pass/fail gate and a report; `compare` puts "
    "two sets side by side; `mass` fits the scanner's calcium-mass factor from a calibration-phantom scan."
)

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_TOOL = 0, 1, 2, 3


def _weights_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    if required:
        p.add_argument(
            "weights",
            type=Path,
            metavar="WEIGHTS",
            help="weights folder (config.json + safetensors + ONNX, from `cacstream export`)",
        )
    else:
        p.add_argument(
            "--weights",
            type=Path,
            default=None,
            metavar="DIR",
            help="weights folder for the activation ranges (default: the one the set was built for)",
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cacstream.calibration.quantize import QuantizeConfig  # its defaults are the CLI's (numpy only)

    sub = parser.add_subparsers(dest="calibrate_command", metavar="ACTION")
    fmt = HelpFormatter

    b = sub.add_parser(
        "build",
        help="choose N preprocessed slices from series folders into a versioned set",
        description="Scan SOURCES for CT series, compute every slice's statistics (kernels HU stats, "
        "FP32 slice-filter probability, scanner, thickness, phantom truth when present), choose N slices "
        "with the strategy and seed, and write OUT/manifest.json + the preprocessed inputs per model role.",
        formatter_class=fmt,
    )
    b.add_argument(
        "sources",
        type=Path,
        nargs="+",
        metavar="SOURCE",
        help="folders (searched recursively) of DICOM series",
    )
    b.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="SET",
        help="the set's folder (must not exist unless --overwrite)",
    )
    b.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="DIR",
        help="weights the set is for (their preprocessing and FP32 filter); default: --weights resolution of "
        "the engine ($CACSTREAM_WEIGHTS, then the packaged default)",
    )
    b.add_argument(
        "-n",
        "--slices",
        type=int,
        default=256,
        help="slices in the set. 256-512 is recommended for INT8 PTQ (more adds time, rarely accuracy)",
    )
    b.add_argument(
        "--strategy",
        default="stratified",
        help="stratified (filter outcome x scanner|kVp|thickness x HU bin; recommended), filter, scanner, hu, "
        "random, or axes joined with '+' (e.g. filter+hu)",
    )
    b.add_argument(
        "--allocation",
        choices=("balanced", "proportional"),
        default="balanced",
        help="balanced: equal share per stratum (rare strata such as calcified or near-threshold slices are "
        "over-represented; recommended); proportional: the population's mix",
    )
    b.add_argument(
        "--seed", type=int, default=0, help="seed of every random choice (same seed + sources = same set)"
    )
    b.add_argument(
        "--near-band",
        type=float,
        default=0.1,
        help="half-width (probability) of the 'near_threshold' filter stratum around the weights' threshold",
    )
    b.add_argument("--hu-bins", type=int, default=4, help="percentile bins of slice max HU for the hu axis")
    b.add_argument("--name", default="calib", help="the set's name: first half of its id (name@contenthash)")
    b.add_argument(
        "--version",
        type=int,
        default=1,
        help="the set's version number (bump it when you rebuild a set for the same purpose)",
    )
    b.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "onnxruntime", "torch", "tensorrt"),
        help="backend of the FP32 filter used for the strata (auto = fastest here)",
    )
    b.add_argument("--batch-size", type=int, default=16, help="slices per filter call")
    b.add_argument("--overwrite", action="store_true", help="replace an existing set folder")
    b.add_argument("--quiet", action="store_true", help="no progress bars")

    i = sub.add_parser(
        "inspect",
        help="coverage table, histograms and per-layer activation ranges of a set",
        description="Print and write (SET/inspect/) what the set covers and misses against its "
        "population, input histograms, and per-layer activation ranges of the FP32 models over it.",
        formatter_class=fmt,
    )
    i.add_argument("set", type=Path, metavar="SET", help="a calibration set folder")
    _weights_arg(i, required=False)
    i.add_argument(
        "--no-activations",
        action="store_true",
        help="skip the activation ranges (no model run; coverage and input histograms only)",
    )
    i.add_argument(
        "--min-per-stratum",
        type=int,
        default=5,
        help="a stratum with fewer slices than this (and more in the population) is reported as 'few'",
    )
    i.add_argument(
        "--max-slices", type=int, default=None, help="use at most this many slices for the activation ranges"
    )
    i.add_argument("--quiet", action="store_true", help="no table or progress bars (files are still written)")

    q = sub.add_parser(
        "quantize",
        help="explicit Q/DQ INT8 ONNX graphs of the weights from a set",
        description="Write <stem>.int8.onnx for each model role (INT8 symmetric Q/DQ, ONNX Runtime static "
        "PTQ, TensorRT-compatible) and int8.json (method, set id, tool versions, checks vs FP32).",
        formatter_class=fmt,
    )
    _weights_arg(q)
    q.add_argument(
        "--set", type=Path, required=True, metavar="SET", help="calibration set built for these weights"
    )
    q.add_argument(
        "--method",
        choices=("entropy", "max", "percentile"),
        default="entropy",
        help="range calibration: entropy (KL divergence; recommended), max (min/max of the set), percentile",
    )
    q.add_argument("--percentile", type=float, default=99.999, help="percentile for --method percentile")
    pc = q.add_mutually_exclusive_group()
    pc.add_argument(
        "--per-channel",
        dest="per_channel",
        action="store_true",
        default=True,
        help="one weight scale per output channel (default; recommended)",
    )
    pc.add_argument(
        "--per-tensor",
        dest="per_channel",
        action="store_false",
        default=argparse.SUPPRESS,
        help="one weight scale per tensor",
    )
    q.add_argument(
        "--quantize-first-last",
        action="store_true",
        help="also quantize the first and last weighted layers (default: kept FP32 for accuracy)",
    )
    q.add_argument(
        "--quantize-attention",
        action="store_true",
        help="also quantize MatMuls of two activations (the ViT's q·kᵀ and attention·v); default: kept FP32, "
        "they hold no weights and 8-bit attention scores moved the filter's decisions the most",
    )
    q.add_argument(
        "--max-fp32-layers",
        type=int,
        default=QuantizeConfig().max_fp32_layers,
        metavar="N",
        help="measure each weighted layer's INT8 error alone on the set and keep up to N dominant ones in "
        "FP32 (0: no analysis; default and recommended %(default)s: the v1.3 U-Net has four dominant layers and "
        "failed the accuracy gate with two of them in FP32; on the v1 filter one layer made 93 %% of the INT8 "
        "error). The ranking and a bar chart go next to the graphs",
    )
    q.add_argument(
        "--fp32-share",
        type=float,
        default=0.25,
        metavar="F",
        help="a layer is dominant when quantizing it alone gives at least this fraction of the fully "
        "quantized graph's output error (default 0.25)",
    )
    q.add_argument(
        "--sensitivity-slices",
        type=int,
        default=32,
        metavar="N",
        help="slices of the set (spread evenly) each layer is measured on; more is steadier and slower",
    )
    q.add_argument(
        "--roles",
        nargs="+",
        choices=("filter", "segmenter"),
        default=["filter", "segmenter"],
        help="which models to quantize",
    )
    q.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for the INT8 graphs and int8.json (default: the weights folder, where the engine looks)",
    )
    q.add_argument(
        "--max-slices", type=int, default=None, help="calibrate on at most this many slices of the set"
    )
    q.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per calibration run (default 8, or 2 for inputs >= 384², to bound memory)",
    )
    q.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser(
        "evaluate",
        help="INT8 vs FP32 on validation series, with a pass/fail gate and a report",
        description="Score validation series with FP32 and INT8 through the engine's model path (ONNX "
        "Runtime CPU) and compare: slice-filter sensitivity/specificity, Dice per artery, Agatston and "
        "risk-category agreement. Exit 0 when the gate passes, 1 when it fails.",
        formatter_class=fmt,
    )
    _weights_arg(e)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--set",
        type=Path,
        metavar="VALSET",
        dest="valset",
        help="folder of validation SERIES (e.g. from `cacstream phantom`; truth.json/labels.npz used when present)",
    )
    src.add_argument("--phantoms", type=int, metavar="N", help="generate N validation phantoms in memory")
    e.add_argument(
        "--seed",
        type=int,
        default=100000,
        help="first phantom seed; keep it disjoint from training and calibration seeds (held-out)",
    )
    e.add_argument(
        "--phantom-kind",
        choices=("chest", "cardiac_gated", "mixed"),
        default="mixed",
        help="kind of validation phantoms (mixed = gated or chest per seed, like training)",
    )
    e.add_argument("--matrix", type=int, default=512, help="phantom matrix (512 as scanners write)")
    e.add_argument(
        "--z-coverage", type=float, default=None, help="phantom scan length in mm (default: realistic)"
    )
    e.add_argument(
        "--no-balanced-categories",
        action="store_true",
        help="draw calcium burdens freely (default: cycle the five risk categories over the seeds)",
    )
    e.add_argument(
        "--int8",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder holding <stem>.int8.onnx (default: the weights folder, through the engine's loader)",
    )
    e.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="report folder (markdown, JSON, CSV, PNGs)"
    )
    e.add_argument(
        "--max-sensitivity-diff",
        type=float,
        default=1.0,
        help="gate: largest |INT8 - FP32| slice-filter sensitivity vs truth, in percentage points",
    )
    e.add_argument(
        "--min-risk-agreement",
        type=float,
        default=98.0,
        help="gate: smallest INT8-vs-FP32 risk-category agreement, in percent",
    )
    e.add_argument("--batch-size", type=int, default=16, help="slices per model call")
    e.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = its default)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser(
        "compare",
        help="two calibration sets side by side",
        description="Coverage per stratum, input histograms overlaid and per-layer activation-range "
        "differences of two sets.",
        formatter_class=fmt,
    )
    c.add_argument("set_a", type=Path, metavar="SET_A", help="first set (reference)")
    c.add_argument("set_b", type=Path, metavar="SET_B", help="second set")
    _weights_arg(c, required=False)
    c.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default SET_A/inspect/compare_<B>)",
    )
    c.add_argument("--no-activations", action="store_true", help="skip the activation ranges")
    c.add_argument("--quiet", action="store_true", help="no table or progress bars")

    m = sub.add_parser(
        "mass",
        help="fit the scanner's mass factor mg/(HU·cm³) from a calibration-phantom scan",
        description="Find the inserts of a calibration phantom scan, measure their core HU and fit "
        "density = c x HU; prints the --mass-calibration value to give `cacstream score`.",
        formatter_class=fmt,
    )
    m.add_argument(
        "series",
        type=Path,
        metavar="SERIES_DIR",
        help="folder of the phantom scan (its largest series is used)",
    )
    m.add_argument(
        "--densities",
        type=float,
        nargs="+",
        required=True,
        metavar="MG_CM3",
        help="known insert densities in mg HA/cm³ (e.g. 200 400 800 for QRM-style inserts)",
    )
    m.add_argument("--detect-hu", type=float, default=100.0, help="HU above which pixels belong to an insert")
    m.add_argument(
        "--min-area", type=float, default=3.0, help="smallest insert cross-section in mm² that is used"
    )
    m.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the fit and inserts to FILE"
    )
    parser.set_defaults(_calibrate_parser=parser)


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"cacstream calibrate: {msg}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "calibrate_command", None)
    if action is None:
        args._calibrate_parser.print_help(sys.stderr)
        return EXIT_USAGE
    from cacstream.calibration.sets import CalibrationSetError

    try:
        return {
            "build": _build,
            "inspect": _inspect,
            "quantize": _quantize,
            "evaluate": _evaluate,
            "compare": _compare,
            "mass": _mass,
        }[action](args)
    except (CalibrationSetError, FileNotFoundError, ValueError) as e:
        return _fail(str(e))


def _build(args: argparse.Namespace) -> int:
    from cacstream.calibration.build import BuildConfig, build_set
    from cacstream.calibration.select import SelectionConfig
    from cacstream.engine.weights_location import WeightsNotFound, resolve_weights_dir

    try:
        weights = resolve_weights_dir(args.weights)
    except WeightsNotFound as e:
        return _fail(str(e))
    sel = SelectionConfig(
        n=args.slices,
        strategy=args.strategy,
        seed=args.seed,
        allocation=args.allocation,
        near_band=args.near_band,
        hu_bins=args.hu_bins,
    )
    cfg = BuildConfig(
        selection=sel, name=args.name, version=args.version, backend=args.backend, batch_size=args.batch_size
    )
    cs = build_set(
        args.sources,
        args.out,
        weights,
        cfg,
        quiet=args.quiet,
        overwrite=args.overwrite,
        command=["cacstream", *sys.argv[1:]],
    )
    pop = cs.manifest["population"]
    print(f"{cs.set_id}: {len(cs)} slices from {pop['slices']} in {pop['series']} series -> {cs.directory}")
    print(f"next: cacstream calibrate inspect {cs.directory}")
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from cacstream.calibration.inspect import inspect_set
    from cacstream.calibration.sets import load_set

    cs = load_set(args.set)
    r = inspect_set(
        cs,
        weights=args.weights,
        activations=not args.no_activations,
        min_per_stratum=args.min_per_stratum,
        quiet=args.quiet,
        max_slices=args.max_slices,
    )
    print(f"{cs.set_id}: {len(r['coverage'].gaps)} gap(s); files in {cs.inspect_dir}")
    return EXIT_OK


def _quantize(args: argparse.Namespace) -> int:
    from cacstream.calibration.quantize import QuantizeConfig, QuantizeError, quantize_weights
    from cacstream.calibration.sets import load_set

    cs = load_set(args.set)
    cfg = QuantizeConfig(
        method=args.method,
        per_channel=args.per_channel,
        percentile=args.percentile,
        max_slices=args.max_slices,
        batch_size=args.batch_size,
        keep_first_last=not args.quantize_first_last,
        quantize_activation_matmuls=args.quantize_attention,
        max_fp32_layers=args.max_fp32_layers,
        fp32_share=args.fp32_share,
        sensitivity_slices=args.sensitivity_slices,
    )
    try:
        rec = quantize_weights(args.weights, cs, args.out, cfg, roles=tuple(args.roles), quiet=args.quiet)
    except QuantizeError as e:
        return _fail(str(e), EXIT_TOOL)
    out = args.out or args.weights
    for section, m in rec["models"].items():
        chk = m["check_vs_fp32"]
        agree = chk.get("decision_agreement", chk.get("argmax_pixel_agreement"))
        warn = f"; TensorRT problems: {m['tensorrt_qdq_problems']}" if m["tensorrt_qdq_problems"] else ""
        print(
            f"{section}: {Path(out) / m['output']} ({m['qdq_nodes']} Q/DQ nodes; vs FP32 on the set: agreement "
            f"{100 * agree:.2f} %, max |logit diff| {chk['max_abs_logit_diff']:.3g}{warn})"
        )
        sens = m.get("sensitivity")
        if sens:
            share = {x["node"]: x["share"] for x in sens["layers"]}
            kept = ", ".join(f"{n} ({100 * share[n]:.0f} % of the error)" for n in sens["kept_fp32"]) or "none"
            print(f"  kept FP32 by sensitivity: {kept}; ranking: {Path(out) / sens['plot']}")
    int8_opt = f" --int8 {args.out}" if args.out else ""
    print(
        f"next: cacstream calibrate evaluate {args.weights} --phantoms 40 --seed 100000{int8_opt} --out REPORT_DIR"
    )
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from cacstream.calibration.evaluate import (
        FolderSource,
        GateConfig,
        PhantomSource,
        evaluate,
        load_models,
        seen_seeds,
        write_report,
    )
    from cacstream.calibration.quantize import read_int8_record

    if args.phantoms is not None and args.phantoms < 1:
        return _fail("--phantoms must be >= 1")
    if args.phantoms is not None and (seen := seen_seeds(args.weights, args.seed, args.phantoms)):
        return _fail(
            f"phantom seeds {seen[0]}..{seen[-1]} ({len(seen)} of them) were used to train these weights "
            f"({args.weights}/config.json); choose held-out seeds with --seed"
        )
    models = load_models(args.weights, args.int8, args.batch_size, args.threads)
    if args.phantoms is not None:
        src = PhantomSource(
            args.phantoms,
            args.seed,
            args.phantom_kind,
            args.matrix,
            args.z_coverage,
            not args.no_balanced_categories,
        )
        cases, n = src.cases(), args.phantoms
        validation = (
            f"{args.phantoms} phantoms ({args.phantom_kind}, {args.matrix}², seeds {args.seed}.."
            f"{args.seed + args.phantoms - 1}, risk categories {'cycled' if src.balanced_categories else 'drawn'})"
        )
    else:
        fsrc = FolderSource(args.valset)
        n = len(fsrc.series())
        cases, validation = fsrc.cases(), f"series under {args.valset}"
    gate = GateConfig(args.max_sensitivity_diff, args.min_risk_agreement)
    metrics, rows = evaluate(models, cases, n, gate=gate, quiet=args.quiet)
    int8_dir = args.int8 or args.weights
    rec = read_int8_record(int8_dir)
    context = {
        "weights_id": models["fp32"].spec.weights_id,
        "weights_dir": str(Path(args.weights).resolve()),
        "int8_source": str(Path(int8_dir).resolve()),
        "int8_record": rec,
        "int8_record_summary": (
            f"{rec['method']} on set {rec['calibration_set']['set_id']} "
            f"(v{rec['calibration_set'].get('version')}), {rec['tool']['name']} "
            f"onnxruntime {rec['tool']['onnxruntime']}"
        )
        if rec
        else "no int8.json beside the graphs",
        "validation": validation,
        "command": "cacstream " + " ".join(sys.argv[1:]),
    }
    files = write_report(args.out, metrics, rows, context)
    for c in metrics["gate"]["checks"]:
        print(
            f"{'pass' if c['passed'] else 'FAIL'}: {c['name']}: {c['value']:.2f} {c['unit']} ({c['threshold']}; {c['detail']})"
        )
    print(f"gate {'PASSED' if metrics['gate']['passed'] else 'FAILED'}; report: {files['report']}")
    return EXIT_OK if metrics["gate"]["passed"] else EXIT_GATE_FAILED


def _compare(args: argparse.Namespace) -> int:
    from cacstream.calibration.compare import compare_sets
    from cacstream.calibration.sets import load_set

    s = compare_sets(
        load_set(args.set_a),
        load_set(args.set_b),
        out=args.out,
        weights=args.weights,
        activations=not args.no_activations,
        quiet=args.quiet,
    )
    print(f"written: {s['files']['compare_md']}")
    return EXIT_OK


def _mass(args: argparse.Namespace) -> int:
    from cacstream.calibration.hu_mass import MassCalibrationError, calibrate_series_folder, save

    try:
        cal = calibrate_series_folder(
            args.series, args.densities, detect_hu=args.detect_hu, min_area_mm2=args.min_area
        )
    except MassCalibrationError as e:
        return _fail(f"{args.series}: {e}")
    for ins in cal.inserts:
        print(
            f"insert {ins.density_mg_cm3:g} mg/cm³: core mean {ins.mean_hu:.1f} HU over {ins.core_pixels} px in "
            f"{len(ins.slices)} slice(s), radius {ins.radius_mm:.2f} mm"
        )
    print(
        f"water: {cal.water_hu:.1f} HU; fit R² {cal.r_squared:.4f}, max residual {100 * cal.max_relative_residual:.1f} %"
    )
    if abs(cal.water_hu) > 10:
        print(
            "warning: water is more than 10 HU from 0: check the scanner's HU calibration first",
            file=sys.stderr,
        )
    if args.json:
        save(cal, args.json)
    print(f"--mass-calibration {cal.factor_mg_per_hu_cm3:.4f}")
    return EXIT_OK
