"""The model lesions of the COCA scans that lie within a few millimetres of the skeleton, for the
bone-distance rule (engine/scoring/juxta_skeletal.py; docs/models.md, "Calcium beside bone").

    python scripts/bone-distance-figure.py --coca ../shared/data/coca-sample --out docs/images/beside_bone_coca.png

The lesions are the engine path's with the bone-distance rule off (what it would exclude); the skeleton
(calcium of components above 2,000 mm³) is outlined in yellow, the lesion in red, on a 120-pixel crop
around it at a [-200, 600] HU window. Distances are measured by scipy over the whole volume.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

ARTERY_NAMES = {1: "LM", 2: "LAD", 3: "LCX", 4: "RCA"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coca", type=Path, required=True, help="COCA folder (../shared/data/coca-sample)")
    ap.add_argument("--weights", type=Path, default=Path("engine/weights/default"), help="weights folder")
    ap.add_argument("--within-mm", type=float, default=10.0, help="show lesions closer than this to the skeleton")
    ap.add_argument("--out", type=Path, default=Path("docs/images/beside_bone_coca.png"), help="PNG to write")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.inference.candidates import skeletal_calcium
    from cacstream.training.data import coca
    from cacstream.training.evaluate_default import load_runtime

    models = load_runtime(args.weights)
    rule_off = dataclasses.replace(AgatstonConfig(), min_bone_distance_mm=None)
    scans = [(f"non-gated {p}", coca.load_nongated_patient(args.coca, p)) for p in coca.list_nongated_patients(args.coca)]
    scans += [(f"gated {p}", coca.load_gated_patient(args.coca, p)) for p in coca.list_gated_patients(args.coca)]
    items = []
    for name, case in scans:
        hu, g = case.volume.hu, case.volume.geometry
        bone = skeletal_calcium(hu, g.voxel_volume_mm3, 2000.0)
        if not bone.any():
            continue
        gap = ndi.distance_transform_edt(~bone, sampling=(g.slice_increment_mm, *g.pixel_spacing_mm))
        labels = run_engine_path(models, hu, g, rule_off).labels
        for z in np.nonzero((labels > 0).any(axis=(1, 2)))[0]:
            lab, n = ndi.label((labels[z] > 0) & (hu[z] >= 130), structure=np.ones((3, 3)))
            for k in range(1, n + 1):
                comp = lab == k
                d = float(gap[z][comp].min())
                if comp.sum() * g.pixel_area_mm2 >= 1.0 and d < args.within_mm:
                    ys, xs = np.nonzero(comp)
                    art = ARTERY_NAMES.get(int(np.bincount(labels[z][comp]).argmax()), "?")
                    items.append((f"{name}, slice {z}: {art}, {d:.1f} mm", hu[z], bone[z], comp,
                                  int(ys.mean()), int(xs.mean())))
    if not items:
        print("no model lesion that close to the skeleton")
        return 0
    cols = 6
    rows = (len(items) + cols - 1) // cols
    fig, axs = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.75), squeeze=False)
    for ax in axs.ravel():
        ax.axis("off")
    for ax, (title, h, b, comp, y, x) in zip(axs.ravel(), items):
        y0, x0 = max(0, y - 60), max(0, x - 60)
        crop = (slice(y0, y + 60), slice(x0, x + 60))
        ax.imshow(np.clip(h[crop], -200, 600), cmap="gray")
        ax.contour(b[crop], [0.5], colors="yellow", linewidths=0.6)
        ax.contour(comp[crop], [0.5], colors="red", linewidths=0.9)
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"model lesions within {args.within_mm:g} mm of the skeleton (red; skeleton yellow)", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"{len(items)} lesions: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
