"""What makes the gated slice filter flag a slice without coronary calcium, and what capping the size of a
calcium candidate would buy: measured on development phantoms (and the COCA ROIs for the cap's margin).

    python scripts/filter-false-positives-probe.py --first 6000 --n 40 --cache runs/dev-cache \\
        --coca ../shared/data/coca-sample

For every calcium-free slice the filter flags, the candidate component (>= 130 HU, >= 1 mm², 8-connected)
with the highest patch probability is the one that flagged it; the phantom truth says whether it lies on
bone / aortic / valve calcium or is a noise cluster. Then the filter's sensitivity and specificity when
components larger than a cap cannot flag (the gate of engine/inference/candidates.py plus an upper area
limit), against the largest 2D coronary calcium components of the phantoms and of the COCA expert ROIs:
a cap must stay far above those, or a heavy plaque's slice would go unsegmented without a trace in the
report. Components are labelled with scipy.ndimage, independently of the engine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

CAPS_MM2 = (float("inf"), 1000.0, 300.0, 200.0, 100.0, 60.0)


def slice_components(hu2d: np.ndarray, pixel_area: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, area in mm² per label) of the 2D calcium candidates of one slice (label 0: none)."""
    lab, _ = ndi.label(hu2d >= 130, structure=np.ones((3, 3)))
    area = np.bincount(lab.ravel()) * pixel_area
    area[0] = 0.0
    return lab, area


def component_probabilities(lab: np.ndarray, patch_prob: np.ndarray) -> np.ndarray:
    """(n + 1,) the highest patch probability over the patches each component touches (index 0 unused)."""
    g = patch_prob.shape[0]
    side = lab.shape[0] // g
    per_pixel = np.kron(patch_prob, np.ones((side, side), patch_prob.dtype))
    n = int(lab.max())
    out = np.zeros(n + 1)
    if n:
        out[1:] = ndi.maximum(per_pixel, lab, index=np.arange(1, n + 1))
    return out


def gated_probability(area: np.ndarray, comp_prob: np.ndarray, cap: float) -> tuple[float, int]:
    """(highest probability over candidates of 1 mm²..``cap``, the component that has it; 0 if none)."""
    ok = (area >= 1.0) & (area <= cap)
    if not ok.any():
        return 0.0, 0
    c = int(np.flatnonzero(ok)[np.argmax(comp_prob[ok])])
    return float(comp_prob[c]), c


def coca_roi_component_areas(root: Path) -> list[float]:
    """2D areas (mm²) of the calcium components that hold the gated COCA scans' expert ROI pixels."""
    from cacstream.training.data import coca

    out = []
    for pid in coca.list_gated_patients(root):
        c = coca.load_gated_patient(root, pid)
        pa = float(np.prod(c.volume.geometry.pixel_spacing_mm))
        for z in np.flatnonzero((c.labels > 0).any(axis=(1, 2))):
            lab, area = slice_components(c.volume.hu[z], pa)
            out += [float(area[i]) for i in np.unique(lab[(c.labels[z] > 0) & (lab > 0)])]
    return out


def main() -> int:
    from cacstream.training.evaluate_default import add_dev_set_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_arguments(ap)
    ap.add_argument("--coca", type=Path, default=None, help="COCA folder: also list its ROI components' 2D areas")
    args = ap.parse_args()

    from cacstream.engine.inference.regions import split_filter_logits
    from cacstream.engine.inference.runtime import CalciumModels, sigmoid
    from cacstream.training.evaluate_default import heldout_cases

    m = CalciumModels.load(args.weights, backend="onnxruntime", candidate_gate=False)
    thr = m.filter_threshold
    probs: list[np.ndarray] = []  # per slice, the gated probability under each cap
    truth: list[bool] = []
    causes: list[tuple[str, str, float, float]] = []  # (kind, on other calcium / noise, area, probability)
    coronary_areas: list[float] = []
    for case in heldout_cases(args.first, args.n, args.cache):
        _, patches = split_filter_logits(np.asarray(m._filter_result(case.hu)[0], np.float32))
        pp = sigmoid(patches)
        pa = float(np.prod(case.geometry.pixel_spacing_mm))
        for z, flag in enumerate(case.flags):
            lab, area = slice_components(case.hu[z], pa)
            cp = component_probabilities(lab, pp[z])
            row = [gated_probability(area, cp, cap) for cap in CAPS_MM2]
            probs.append(np.array([p for p, _ in row]))
            truth.append(bool(flag))
            if flag:
                coronary_areas += [float(area[i]) for i in np.unique(lab[(case.labels[z] > 0) & (lab > 0)])]
            elif row[0][0] >= thr:
                c = row[0][1]
                other = bool(case.other_calcium[z][lab == c].any())
                causes.append((case.kind, "bone / aortic / valve calcium" if other else "noise cluster",
                               float(area[c]), row[0][0]))
    p, t = np.stack(probs), np.array(truth)
    print(f"{args.weights}: {args.n} phantoms from seed {args.first}, {len(t)} slices ({t.sum()} with coronary "
          f"calcium), threshold {thr:.3f}")
    print("\n| flagged calcium-free slices, flagged by | kind | slices | median area mm² | median probability |")
    print("|---|---|---:|---:|---:|")
    for kind in ("cardiac_gated", "chest"):
        for what in ("bone / aortic / valve calcium", "noise cluster"):
            sel = [c for c in causes if c[0] == kind and c[1] == what]
            if sel:
                print(f"| {what} | {kind} | {len(sel)} | {np.median([c[2] for c in sel]):.1f} | "
                      f"{np.median([c[3] for c in sel]):.2f} |")
    print("\n| candidates up to (mm²) | sensitivity | specificity |")
    print("|---:|---:|---:|")
    for i, cap in enumerate(CAPS_MM2):
        f = p[:, i] >= thr
        print(f"| {cap:g} | {(f & t).sum() / t.sum():.3f} | {(~f & ~t).sum() / (~t).sum():.3f} |")
    print(f"\nlargest 2D coronary calcium components, phantoms: 99th percentile "
          f"{np.percentile(coronary_areas, 99):.1f} mm², max {max(coronary_areas):.1f} mm²")
    if args.coca is not None:
        roi = coca_roi_component_areas(args.coca)
        print(f"COCA expert ROI components: {len(roi)}, median {np.median(roi):.1f} mm², max {max(roi):.1f} mm²")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
