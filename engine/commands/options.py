"""Option groups shared by `score`, `watch` and `demo`, so one flag means one thing everywhere."""

from __future__ import annotations

import argparse

from cacstream.engine.config import AgatstonConfig, EligibilityConfig

_A = AgatstonConfig()
_E = EligibilityConfig()


def add_mode_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("models")
    g.add_argument(
        "--mode",
        choices=("model", "threshold"),
        default="model",
        help="model: the DINO-LG slice filter and the per-artery U-Net decide what is coronary calcium "
        "(recommended for patients). threshold: every lesion >= 130 HU in the whole slice counts, bone "
        "included, no models (phantoms and QA only).",
    )
    g.add_argument(
        "--weights",
        default=None,
        metavar="DIR",
        help="weights folder (config.json + *.safetensors [+ *.onnx]). Default: $CACSTREAM_WEIGHTS, "
        "else the weights shipped with the package.",
    )
    g.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "tensorrt"),
        default="auto",
        help="inference backend; auto picks the fastest present (TensorRT > ONNX Runtime > PyTorch).",
    )
    g.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8"),
        default="fp32",
        help="numeric precision of the models. fp32 on CPU; fp16 on GPUs; int8 only with a "
        "calibrated Q/DQ model whose evaluate report passed.",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="slices per model call; larger is faster on GPUs, 8-16 is best on a CPU workstation.",
    )
    add_segment_regions_option(g)


def add_segment_regions_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--segment-regions",
        choices=("patches", "components", "slice"),
        default="patches",
        help="what the U-Net sees of a flagged slice. patches (recommended): only 160² tiles around the "
        "slice filter's flagged patches (~0.4 of the work, far fewer bone/aortic false positives); "
        "components: also the tiles the calcium components of flagged patches reach, so no lesion is cut "
        "at a tile border (~2x the tiles; scored no better on development phantoms, docs/models.md); "
        "slice: the whole slice, as in the DINO-LG paper. Weights without patch logits always use slice.",
    )
    parser.add_argument(
        "--no-skeletal-gate",
        action="store_true",
        help="let bone-sized calcium flag slices for the U-Net. By default (recommended) calcium in a 3D "
        "component above --skeletal-component-mm3 cannot make the slice filter flag a patch, decided once "
        "the series is complete: the scorer excludes such calcium anyway, and on development phantoms this "
        "raised the filter's specificity from 0.64 to 0.89 at the same sensitivity (docs/models.md).",
    )


def add_agatston_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Agatston convention (every value is recorded in the report)")
    g.add_argument("--threshold-hu", type=float, default=_A.threshold_hu,
                   help="calcium threshold in HU; 130 is the Agatston standard, change only for research.")
    g.add_argument("--connectivity", type=int, choices=(4, 8), default=_A.connectivity,
                   help="2D connectivity of a lesion within a slice; 8 is the common convention.")
    g.add_argument("--min-area-mm2", type=float, default=_A.min_area_mm2,
                   help="lesions smaller than this are noise; 1 mm² is standard.")
    g.add_argument("--reference-thickness-mm", type=float, default=_A.reference_thickness_mm,
                   help="the total is scaled by effective slice thickness / this; 3 mm is standard.")
    g.add_argument("--no-thickness-normalisation", action="store_true",
                   help="report the raw sum of lesion scores, without the thickness/3 mm scaling.")
    g.add_argument("--mass-calibration", type=float, default=None, metavar="MG_PER_HU_CM3",
                   help="scanner calibration factor for the mass score (from a calibration phantom); "
                   "mass is only reported when this is given.")
    add_skeletal_option(g)


def add_skeletal_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--skeletal-component-mm3", type=float, default=_A.skeletal_component_mm3, metavar="MM3",
                        help="model mode: a lesion whose 3D calcium component (26-connected) is larger than "
                        "this is bone the segmenter put in an artery (rib, sternum, vertebra); it is excluded "
                        "and listed in the report's excluded_lesions. 2000 is recommended (true coronary "
                        "components measured <= 500 mm³, a scan's spine and ribs 146,000-491,000); 0 turns the check off.")
    parser.add_argument("--min-claimed-share", type=float, default=_A.min_claimed_share, metavar="SHARE",
                        help="model mode: a lesion whose 2D calcium component the segmenter labels only in part "
                        "(below this share of its pixels) is calcium it split between an artery and aortic wall, "
                        "valve or bone; it is excluded and listed in the report's excluded_lesions. 0.75 is "
                        "recommended (true coronary lesions measured >= 81 %% claimed); 0 turns the rule off.")
    parser.add_argument("--min-bone-distance-mm", type=float, default=_A.min_bone_distance_mm, metavar="MM",
                        help="model mode: a lesion with a pixel closer than this (3D) to calcium of a component "
                        "above --skeletal-component-mm3 is chest-wall or spinal calcium (costal cartilage, rib "
                        "edges), not coronary; it is excluded and listed in the report's excluded_lesions. 8 is "
                        "recommended (true coronary lesions measured >= 20 mm from bone on the COCA scans, >= 10 "
                        "mm on phantoms); 0 turns the rule off.")
    parser.add_argument("--no-cardiac-levels", action="store_true",
                        help="model mode: also count lesions above or below the levels the heart can occupy. "
                        "By default, in a scan that shows the lungs whole (chest CT), a lesion more than 50 mm "
                        "below the lung apices' level or 15 mm below where the lung bases thin out is neck or "
                        "abdominal calcium, excluded and listed in the report's excluded_lesions with the levels "
                        "found. Keeping the rule on is recommended.")


def add_eligibility_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("series eligibility")
    g.add_argument("--max-tilt-deg", type=float, default=_E.max_gantry_tilt_deg,
                   help="reject series whose slices are tilted more than this from axial.")
    g.add_argument("--min-slices", type=int, default=_E.min_slices,
                   help="reject series with fewer slices (too short to cover the heart).")
    g.add_argument("--max-thickness-mm", type=float, default=_E.max_slice_thickness_mm,
                   help="reject series with thicker slices; Agatston is defined for ≤ 3-5 mm.")


def agatston_config_from_args(args: argparse.Namespace) -> AgatstonConfig:
    """The Agatston options as a config; a value the config refuses ends the command with its reason."""
    try:
        return _agatston_config(args)
    except ValueError as e:
        raise SystemExit(f"error: Agatston option: {e}") from None


def _agatston_config(args: argparse.Namespace) -> AgatstonConfig:
    return AgatstonConfig(
        threshold_hu=args.threshold_hu,
        connectivity=args.connectivity,
        min_area_mm2=args.min_area_mm2,
        reference_thickness_mm=args.reference_thickness_mm,
        normalise_thickness=not args.no_thickness_normalisation,
        mass_calibration_mg_per_hu_cm3=args.mass_calibration,
        skeletal_component_mm3=args.skeletal_component_mm3 or None,
        min_claimed_share=args.min_claimed_share or None,
        min_bone_distance_mm=args.min_bone_distance_mm or None,
        cardiac_levels=not getattr(args, "no_cardiac_levels", False),
    )


def eligibility_config_from_args(args: argparse.Namespace) -> EligibilityConfig:
    return EligibilityConfig(
        max_gantry_tilt_deg=args.max_tilt_deg,
        min_slices=args.min_slices,
        max_slice_thickness_mm=args.max_thickness_mm,
    )
