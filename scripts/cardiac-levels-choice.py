"""Does the cardiac-levels rule (engine/scoring/cardiac_window.py) keep every heart and remove only neck
and abdominal calcium? On development phantoms: the levels found against each phantom's own heart
(its truth landmarks) and coronary calcium, and the risk categories and score error with the rule off
and on; on the COCA scans: the levels, the totals off and on against their references, the expert ROI
lesions outside the levels (must be none) and a figure.

    python scripts/cardiac-levels-choice.py --first 6000 --n 40 --cache runs/dev-cache \
        --coca ../shared/data/coca-sample --figure docs/images/cardiac_levels_coca.png

Each series is filtered and segmented once, as the engine does (regions, candidate and skeletal gates),
then scored with the rule off and on.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _segment(models, hu: np.ndarray, geometry) -> np.ndarray:  # noqa: ANN001
    from importlib import import_module

    return import_module("bone-distance-choice").segment(models, hu, geometry)


def coronal_panel(ax, hu: np.ndarray, geometry, levels, lesions, title: str) -> None:  # noqa: ANN001
    """A coronal slab (max over 12 rows through the heart's centre) with the levels and the model's
    lesions: kept (green) and excluded for lying outside the levels (red)."""
    z = np.asarray(geometry.z_mm)
    rows = hu.shape[1]
    r0 = int(rows * 0.45)
    slab = np.asarray(hu[:, r0:r0 + 12, :], np.float32).max(axis=1)
    order = np.argsort(z)
    extent = (0, hu.shape[2] * geometry.pixel_spacing_mm[1], float(z.min()), float(z.max()))
    ax.imshow(np.clip(slab[order][::-1], -400, 600), cmap="gray", extent=extent, aspect="auto")
    for bound in (levels.inferior_mm, levels.superior_mm):
        if bound is not None:
            ax.axhline(bound, color="orange", lw=1.5)
    for les, out in lesions:
        ax.plot(les.centroid_rc[1] * geometry.pixel_spacing_mm[1], les.z_mm, "o", ms=5, mfc="none",
                mec="red" if out else "lime")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_ylabel("z (mm)")


def main() -> int:
    from cacstream.training.evaluate_default import add_dev_set_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_arguments(ap)
    ap.add_argument("--coca", type=Path, default=None, help="COCA folder: also score its scans with the rule off and on")
    ap.add_argument("--figure", type=Path, default=None, help="PNG of the COCA non-gated scans with their levels")
    args = ap.parse_args()
    if 5000 < args.first + args.n and args.first < 5040:
        print("note: seeds 5000..5039 are the held-out set: measure there, do not choose on it")

    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.agatston import risk_category, score_volume
    from cacstream.engine.scoring.cardiac_window import cardiac_levels_of_volume, describe
    from cacstream.training.evaluate_default import heldout_cases, load_runtime

    models = load_runtime(args.weights)
    on = AgatstonConfig()
    off = dataclasses.replace(on, cardiac_levels=False)
    rows = []
    worst_below = worst_above = float("inf")
    applied = truth_outside = 0
    for case in heldout_cases(args.first, args.n, args.cache):
        g = case.geometry
        levels = cardiac_levels_of_volume(case.hu, g)
        heart = case.truth["landmarks"]["heart_z_range_mm"]
        if levels.applies:
            applied += 1
            if levels.inferior_mm is not None:  # phantoms: z grows towards the head
                worst_below = min(worst_below, heart[0] - levels.inferior_mm)
            if levels.superior_mm is not None:
                worst_above = min(worst_above, levels.superior_mm - heart[1])
        z = np.asarray(g.z_mm)
        truth_outside += sum(int((case.labels[i] > 0).any()) for i in range(len(z)) if levels.outside(float(z[i])))
        labels = _segment(models, case.hu, g)
        rows.append((float(case.truth["agatston_total"]),
                     score_volume(case.hu, g, labels, off).agatston_total,
                     score_volume(case.hu, g, labels, on)))
    if rows:
        print(f"{len(rows)} phantoms from seed {args.first}; levels applied to {applied} (the others show "
              f"the lungs cut: cardiac field of view)")
        print(f"heart (truth landmarks) inside the levels with at least {worst_below:.1f} mm below and "
              f"{worst_above:.1f} mm above; slices with truth coronary calcium outside the levels: {truth_outside}")
        print("| cardiac levels | risk categories right | mean abs error | lesions excluded by the rule |")
        print("|---|---:|---:|---:|")
        for name, k in (("off", 1), ("on", 2)):
            scores = [r[k] if k == 1 else r[k].agatston_total for r in rows]
            right = sum(risk_category(s) == risk_category(r[0]) for s, r in zip(scores, rows))
            mae = float(np.mean([abs(s - r[0]) for s, r in zip(scores, rows)]))
            n_ex = sum(sum(why == "outside_cardiac_levels" for _, why in r[2].excluded_lesions) for r in rows) if k == 2 else 0
            print(f"| {name} | {right} of {len(rows)} | {mae:.1f} | {n_ex} |")
    if args.coca is None:
        return 0
    from cacstream.training.evaluate_default import coca_scans

    panels = []
    print("\n| scan | levels found | reference | rule off | rule on | lesions outside the levels (Agatston) | expert ROI slices outside |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for scan in coca_scans(args.coca):
        hu, g = scan.volume.hu, scan.volume.geometry
        levels = cardiac_levels_of_volume(hu, g)
        roi_out = "n/a"
        if scan.roi_labels is not None:
            z = np.asarray(g.z_mm)
            roi_out = str(sum(int((scan.roi_labels[i] > 0).any()) for i in range(len(z)) if levels.outside(float(z[i]))))
        labels = _segment(models, hu, g)
        res_on = score_volume(hu, g, labels, on)
        res_off = score_volume(hu, g, labels, off)
        outside = [les for les, why in res_on.excluded_lesions if why == "outside_cardiac_levels"]
        print(f"| {scan.name} | {describe(levels)} | {scan.reference_total:.1f} | {res_off.agatston_total:.1f} "
              f"| {res_on.agatston_total:.1f} | {len(outside)} ({res_off.agatston_total - res_on.agatston_total:.1f}) "
              f"| {roi_out} |")
        if scan.kind == "non-gated":
            panels.append((hu, g, levels, [(les, False) for les in res_on.lesions] + [(les, True) for les in outside],
                           f"{scan.name}: reference {scan.reference_total:.0f}, off {res_off.agatston_total:.0f}, "
                           f"on {res_on.agatston_total:.0f}"))
    if args.figure is not None and panels:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axs = plt.subplots(1, len(panels), figsize=(5 * len(panels), 6))
        for ax, p in zip(np.atleast_1d(axs), panels):
            coronal_panel(ax, *p)
        fig.suptitle("Cardiac levels (orange) from the lungs; model lesions kept (green) and excluded (red)", fontsize=10)
        fig.tight_layout()
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=80)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
