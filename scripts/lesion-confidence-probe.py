#!/usr/bin/env python
"""How sure is the U-Net of each lesion it counts? The softmax probability of the winning class, averaged
over the lesion's calcium, for counted lesions on the development phantoms (on coronary truth, on other
calcium, elsewhere) and on the COCA samples (on an expert ROI or not).

Why: a lesion-confidence cut (nnU-Net-style post-processing) is the obvious next rule after the claim
rule; it only helps if real plaques are as confident as phantom plaques. Measured 2026-11-25 with v1.3:
they are not (docs/models.md, "Two more tries at the aortic-root lesions").

    python scripts/lesion-confidence-probe.py --first 6000 --n 40 --cache runs/dev-cache \
        --coca ../shared/data/coca-sample --out runs/lesion-confidence.json

The engine path is the evaluation's (``run_engine_path``: filter, regions, U-Net, the model-mode rules);
only the label step is wrapped so that it also returns the winning probability, quantised to 1/49.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cacstream.calibration.evaluate import run_engine_path
from cacstream.engine.config import AgatstonConfig
from cacstream.engine.inference.runtime import CalciumModels, nearest_indices
from cacstream.training.evaluate_default import coca_scans, heldout_cases, load_runtime

LEVELS = 49  # a label and its probability share one uint8 through the tile pasting: label * 50 + level


def _encoded_labels(seg_logits: Any, native_hw: tuple[int, int]) -> np.ndarray:
    """Argmax label and the winning softmax probability, packed as label * 50 + round(p * 49)."""
    z = np.asarray(seg_logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    enc = (p.argmax(axis=1) * (LEVELS + 1) + np.round(p.max(axis=1) * LEVELS)).astype(np.uint8)
    h, w = int(native_hw[0]), int(native_hw[1])
    if enc.shape[1:] != (h, w):
        enc = enc[:, nearest_indices(enc.shape[1], h)][:, :, nearest_indices(enc.shape[2], w)]
    return np.ascontiguousarray(enc)


class ConfidenceTap:
    """Wraps one loaded model set so that ``segment`` keeps the confidence of its last call."""

    def __init__(self, models: CalciumModels) -> None:
        self.models, self.last = models, np.zeros((0, 0, 0), np.float32)
        models.labels_from_logits = _encoded_labels  # type: ignore[method-assign]
        segment = CalciumModels.segment

        def tapped(hu: Any, regions: Any = None) -> np.ndarray:
            enc = segment(models, hu, regions)
            self.last = (enc % (LEVELS + 1)).astype(np.float32) / LEVELS
            return (enc // (LEVELS + 1)).astype(np.uint8)

        models.segment = tapped  # type: ignore[method-assign]

    def run(self, hu: np.ndarray, geometry: Any) -> tuple[np.ndarray, np.ndarray]:
        """Counted labels and the confidence volume (0 on unsegmented slices)."""
        res = run_engine_path(self.models, hu, geometry, AgatstonConfig())
        conf = np.zeros(hu.shape, np.float32)
        if res.flags.any():
            conf[res.flags] = self.last
        return res.labels, conf


def lesions(hu: np.ndarray, labels: np.ndarray, conf: np.ndarray, truth: np.ndarray | None,
            other: np.ndarray | None) -> list[dict[str, Any]]:
    """Every counted 2D lesion (HU ≥ 130, labelled, 8-connected) with its mean confidence."""
    rows = []
    for s in np.flatnonzero(labels.reshape(len(labels), -1).max(axis=1) > 0):
        lab, k = ndi.label((hu[s] >= 130) & (labels[s] > 0), np.ones((3, 3)))
        for i in range(1, k + 1):
            pix = lab == i
            rows.append({"slice": int(s), "area_px": int(pix.sum()), "confidence": float(conf[s][pix].mean()),
                         "on_truth": bool(truth is not None and (truth[s][pix] > 0).any()),
                         "on_other": bool(other is not None and other[s][pix].any())})
    return rows


def summary(name: str, rows: list[dict[str, Any]], cuts: tuple[float, ...]) -> str:
    if not rows:
        return f"| {name} | 0 |" + " |" * (1 + len(cuts))
    c = np.array([r["confidence"] for r in rows])
    q = np.percentile(c, [25, 50, 75])
    below = " | ".join(f"{int((c < t).sum())}" for t in cuts)
    return f"| {name} | {len(rows)} | {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} | {below} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=Path("engine/weights/default"), help="weights folder")
    ap.add_argument("--first", type=int, default=6000,
                    help="first phantom seed (default 6000, the development set; 5000 is the held-out set)")
    ap.add_argument("--n", type=int, default=40, help="phantoms, seeds FIRST..FIRST+n-1 (0: COCA only)")
    ap.add_argument("--cache", type=Path, default=Path("runs/dev-cache"), help="phantom cache folder")
    ap.add_argument("--coca", type=Path, default=None, help="COCA sample folder (also measure the real scans)")
    ap.add_argument("--out", type=Path, default=None, help="write every lesion's row here (JSON)")
    args = ap.parse_args()

    tap = ConfidenceTap(load_runtime(args.weights))
    rows: list[dict[str, Any]] = []
    for case in heldout_cases(args.first, args.n, args.cache) if args.n else []:
        labels, conf = tap.run(case.hu, case.geometry)
        rows += [{"source": "phantom", "case": case.seed, **r}
                 for r in lesions(case.hu, labels, conf, case.labels, case.other_calcium)]
    for scan in coca_scans(args.coca) if args.coca else []:
        labels, conf = tap.run(scan.volume.hu, scan.volume.geometry)
        rows += [{"source": f"coca {scan.kind}", "case": scan.name, **r}
                 for r in lesions(scan.volume.hu, labels, conf, scan.roi_labels, None)]
    if args.out:
        args.out.write_text(json.dumps(rows))

    cuts = (0.6, 0.7, 0.8, 0.9)
    print("| counted lesions | n | confidence 25th / 50th / 75th pct | " + " | ".join(f"below {t}" for t in cuts) + " |")
    print("|---|---:|---|" + "---:|" * len(cuts))
    ph = [r for r in rows if r["source"] == "phantom"]
    gated = [r for r in rows if r["source"] == "coca gated"]
    for name, sel in (("phantoms, on coronary truth", [r for r in ph if r["on_truth"]]),
                      ("phantoms, on aortic / valve / bone calcium", [r for r in ph if r["on_other"] and not r["on_truth"]]),
                      ("phantoms, elsewhere (noise)", [r for r in ph if not r["on_other"] and not r["on_truth"]]),
                      ("COCA gated, on an expert ROI", [r for r in gated if r["on_truth"]]),
                      ("COCA gated, not on an ROI", [r for r in gated if not r["on_truth"]]),
                      ("COCA non-gated (all)", [r for r in rows if r["source"] == "coca non-gated"])):
        if sel or name.startswith("phantoms") and ph or name.startswith("COCA") and args.coca:
            print(summary(name, sel, cuts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
