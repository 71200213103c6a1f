"""How large is the 3D calcium component under a true coronary lesion, and under a model lesion on bone?

The measurement behind ``AgatstonConfig.skeletal_component_mm3`` (engine/scoring/skeleton.py). For the
held-out phantoms the shipped models run on the engine path with the skeletal check off; each model lesion
(HU >= 130 inside its artery labels, 8-connected per slice, >= 1 mm²) is classed by the phantom truth
(on coronary calcium / on bone, aortic or valve calcium) and measured: the volume of the 26-connected
HU >= 130 component holding it (scipy.ndimage, independent of the engine's Numba labeller). For the COCA
gated scans the same volume is measured under every ROI (the reference lesions) and for the skeleton.
Prints the table of docs/models.md and how many lesions a limit would exclude.

    python scripts/skeletal-calcium-probe.py --n 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage


def component_volumes(hu: np.ndarray, voxel_mm3: float) -> tuple[np.ndarray, np.ndarray]:
    lab, _ = ndimage.label(hu >= 130, structure=np.ones((3, 3, 3)))
    vol = np.bincount(lab.ravel()).astype(np.float64) * voxel_mm3
    vol[0] = 0.0
    return lab, vol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="held-out phantoms (seeds 5000..)")
    ap.add_argument("--weights", type=Path, default=Path("engine/weights/default"))
    ap.add_argument("--cache", type=Path, default=Path("runs/heldout-cache"))
    ap.add_argument("--coca", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/coca-sample")
    ap.add_argument("--limits", type=float, nargs="+", default=[500.0, 1000.0, 2000.0, 5000.0])
    args = ap.parse_args()

    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.agatston import label_slice
    from cacstream.training.evaluate_default import heldout_cases, load_runtime

    cfg = AgatstonConfig(skeletal_component_mm3=None)
    models = load_runtime(args.weights, backend="onnxruntime")
    true_v, other_v = [], []
    for case in heldout_cases(n=args.n, cache=args.cache):
        res = run_engine_path(models, case.hu, case.geometry, cfg)
        g = case.geometry
        lab3, vol = component_volumes(case.hu, g.voxel_volume_mm3)
        for z in np.flatnonzero(res.labels.reshape(len(res.labels), -1).max(axis=1) > 0):
            fg = (case.hu[z] >= 130) & (res.labels[z] > 0)
            lab2, n = label_slice(fg, 8)
            for k in range(1, n + 1):
                pix = lab2 == k
                if pix.sum() * g.pixel_area_mm2 < cfg.min_area_mm2:
                    continue
                v = float(vol[lab3[z][pix][0]])
                (true_v if np.any(case.labels[z][pix] > 0) else other_v).append(v)
        print(f"seed {case.seed}: {len(true_v)} lesions on coronary calcium, {len(other_v)} on other calcium so far",
              flush=True)
    print("\n| model lesions, held-out phantoms | n | component volume mm³: median | max |")
    print("|---|---:|---:|---:|")
    for name, v in (("on coronary calcium", true_v), ("on bone / aortic / valve calcium", other_v)):
        print(f"| {name} | {len(v)} | {np.median(v):.0f} | {np.max(v):.0f} |")
    for lim in args.limits:
        print(f"limit {lim:.0f} mm³: excludes {sum(v > lim for v in other_v)} of {len(other_v)} lesions on other "
              f"calcium and {sum(v > lim for v in true_v)} of {len(true_v)} on coronary calcium")
    if args.coca.is_dir():
        from cacstream.training.data import coca

        for pid in coca.list_gated_patients(args.coca):
            c = coca.load_gated_patient(args.coca, pid)
            lab3, vol = component_volumes(c.volume.hu, c.volume.geometry.voxel_volume_mm3)
            under = np.unique(lab3[(c.labels > 0) & (c.volume.hu >= 130)])
            under = under[under > 0]
            top = np.sort(vol)[::-1][:3]
            print(f"COCA gated {pid}: components under ROIs max {vol[under].max() if under.size else 0:.0f} mm³ "
                  f"({under.size} components); largest components {', '.join(f'{v:.0f}' for v in top)} mm³")


if __name__ == "__main__":
    main()
