"""Picture of the candidate gate on a held-out gated phantom: which filter patches flag a slice without
the gate (one weights folder) and with it (another), over the CT, with the candidate patches outlined.

    python scripts/candidate-gate-figure.py --plain engine/weights/default --gated runs/default/export-v12 \
        --seed 5021 --out docs/images/candidate_gate.png

Two slices are shown: a calcium-free one the ungated filter flags (the most confident such slice) and
the calcified slice with the most lesion pixels. Patches: red fill = flagged, yellow outline = holds a
calcium candidate (a 2D component >= 130 HU and >= 1 mm²), cyan = true coronary calcium.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plain", type=Path, required=True, help="weights folder scored without the gate")
    ap.add_argument("--gated", type=Path, required=True, help="weights folder trained with the gate")
    ap.add_argument("--seed", type=int, default=5021, help="held-out phantom seed (5000..5039)")
    ap.add_argument("--cache", type=Path, default=Path("runs/heldout-cache"), help="held-out phantom cache")
    ap.add_argument("--out", type=Path, default=Path("docs/images/candidate_gate.png"))
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from cacstream.engine.inference.runtime import CalciumModels
    from cacstream.training.evaluate_default import HELDOUT_FIRST, heldout_cases

    case = list(heldout_cases(args.seed, 1, args.cache))[0]
    assert case.seed == args.seed and args.seed >= HELDOUT_FIRST
    spacing = case.geometry.pixel_spacing_mm
    plain = CalciumModels.load(args.plain, backend="onnxruntime", threads=2, candidate_gate=False)
    gated = CalciumModels.load(args.gated, backend="onnxruntime", threads=2)
    if gated.candidate_rule is None:
        raise SystemExit(f"{args.gated}: these weights do not record a candidate gate")
    p0, f0 = plain.filter_decisions(case.hu)
    p1, f1 = gated.filter_decisions(case.hu, spacing)
    cand = gated.candidate_patches(case.hu, spacing)
    truth = case.flags
    free = np.flatnonzero(~truth & (p0 >= plain.filter_threshold))
    picks = [int(free[np.argmax(p0[free])])] if len(free) else []
    lesion_px = (case.labels > 0).reshape(len(case.hu), -1).sum(axis=1)
    picks.append(int(np.argmax(lesion_px)))
    g = cand.shape[1]
    side = case.hu.shape[1] / g

    fig, axes = plt.subplots(len(picks), 2, figsize=(9, 4.6 * len(picks)), squeeze=False)
    for row, z in enumerate(picks):
        for col, (name, flags, p, thr) in enumerate(
            (("no gate (v1.1 filter)", f0, p0, plain.filter_threshold),
             ("candidate gate (v1.2 filter)", f1, p1, gated.filter_threshold))
        ):
            ax = axes[row, col]
            ax.imshow(np.clip(case.hu[z], -300, 500), cmap="gray")
            ys, xs = np.nonzero(case.labels[z] > 0)
            ax.scatter(xs, ys, s=2, c="cyan", linewidths=0)
            for i in range(g):
                for j in range(g):
                    if flags is not None and flags[z, i, j]:
                        ax.add_patch(Rectangle((j * side, i * side), side, side, color="red", alpha=0.35))
                    if cand[z, i, j]:
                        ax.add_patch(Rectangle((j * side, i * side), side, side, fill=False, ec="yellow", lw=1))
            verdict = "flagged" if p[z] >= thr else "not flagged"
            kind = "calcified" if truth[z] else "calcium-free"
            ax.set_title(f"slice {z} ({kind}): {name}\np = {p[z]:.2f}, threshold {thr:.2f} → {verdict}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"held-out phantom {case.seed} ({case.kind}): red = flagged patch, yellow = calcium candidate, "
                 "cyan = coronary calcium", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
