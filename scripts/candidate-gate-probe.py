"""What the candidate gate does to a slice filter's decisions, on held-out phantoms, with its weights as
they are (no retraining): ROC AUC and sensitivity / specificity at the weights' threshold, per kind,
without the gate (the maximum over all patches) and with it (over candidate patches only).

    python scripts/candidate-gate-probe.py --weights runs/default/export-v11 --n 40

Candidates are computed independently of the engine here (scipy.ndimage.label, 8-connected, area from
the pixel count): a patch is a candidate when a pixel of a >= 130 HU component of >= 1 mm² lies in it.
Slice truth is the phantom's own "slice holds coronary calcium".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi


def candidate_grid(hu2d: np.ndarray, pixel_area: float, grid: int) -> np.ndarray:
    lab, n = ndi.label(hu2d >= 130, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros((grid, grid), bool)
    ok = np.bincount(lab.ravel()) * pixel_area >= 1.0
    ok[0] = False
    h, w = hu2d.shape
    return ok[lab].reshape(grid, h // grid, grid, w // grid).any(axis=(1, 3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="weights folder with a patch_max filter")
    ap.add_argument("--n", type=int, default=40, help="held-out phantoms (seeds 5000..)")
    ap.add_argument("--cache", type=Path, default=Path("runs/heldout-cache"), help="held-out phantom cache")
    args = ap.parse_args()

    from cacstream.engine.inference.regions import split_filter_logits
    from cacstream.engine.inference.runtime import CalciumModels, sigmoid
    from cacstream.training.evaluate_default import HELDOUT_FIRST, heldout_cases
    from cacstream.training.metrics import roc_auc

    m = CalciumModels.load(args.weights, backend="onnxruntime", candidate_gate=False)
    thr = m.filter_threshold
    rows = []
    for case in heldout_cases(HELDOUT_FIRST, args.n, args.cache):
        _, patches = split_filter_logits(np.asarray(m._filter_result(case.hu)[0], np.float32))
        if patches is None:
            raise SystemExit(f"{args.weights}: the filter has no patch logits, so no gate applies")
        g = patches.shape[1]
        area = float(np.prod(case.geometry.pixel_spacing_mm))
        cand = np.stack([candidate_grid(h, area, g) for h in case.hu])
        pp = sigmoid(patches)
        rows.append((case.kind, case.flags, pp.max(axis=(1, 2)), np.where(cand, pp, 0.0).max(axis=(1, 2))))
    print(f"{args.weights}: {len(rows)} held-out phantoms, threshold {thr:.3f}")
    print("| slices | gate | ROC AUC | sensitivity | specificity |")
    print("|---|---|---:|---:|---:|")
    for kind in ("all", "cardiac_gated", "chest"):
        sel = [r for r in rows if kind == "all" or r[0] == kind]
        t = np.concatenate([r[1] for r in sel])
        for name, k in (("none", 2), ("candidates", 3)):
            s = np.concatenate([r[k] for r in sel])
            f = s >= thr
            sens, spec = (f & t).sum() / t.sum(), (~f & ~t).sum() / (~t).sum()
            print(f"| {kind} | {name} | {roc_auc(s, t.astype(float)):.3f} | {sens:.3f} | {spec:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
