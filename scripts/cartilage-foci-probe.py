"""Does a model count patchy costal-cartilage calcium as coronary? The same phantoms with and without
the generator's cartilage foci (``PhantomConfig.cartilage_foci_probability``), scored through the
engine's model path (filter → regions → U-Net → Agatston with the claim rule and the skeletal check).

    python scripts/cartilage-foci-probe.py --weights engine/weights/default --first 6000 --n 20

The foci never change the phantom's coronary truth, so every Agatston point a series gains with them
is calcium on the cartilage that the model counted. Use seeds neither training (1000..1399) nor the
held-out evaluation (5000..5039) uses. Why: COCA gated patient 0's anterior chest wall (docs/models.md),
which the shipped U-Net labels LM and the phantoms of its training did not contain.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> int:
    from cacstream.training.evaluate_default import add_dev_set_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_arguments(ap, n=20, cache=False)  # mixed gated / chest, 512², made twice each
    ap.add_argument("--out", type=Path, default=None, help="per-series results (JSON)")
    args = ap.parse_args()

    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.agatston import risk_category
    from cacstream.training.evaluate_default import load_runtime
    from cacstream.training.phantom import PhantomConfig, make_phantom

    models = load_runtime(args.weights)
    agatston = AgatstonConfig()
    rows = []
    for seed in range(args.first, args.first + args.n):
        plain = make_phantom(seed, PhantomConfig(kind="mixed"))
        foci = make_phantom(seed, PhantomConfig(kind="mixed", cartilage_foci_probability=1.0))
        new = (foci.hu >= 130) & (plain.hu < 130)
        a = run_engine_path(models, plain.hu, plain.geometry, agatston)
        b = run_engine_path(models, foci.hu, foci.geometry, agatston)
        truth = float(plain.truth["agatston_total"])
        row = {"seed": seed, "kind": plain.kind, "truth": round(truth, 2), "focus_voxels": int(new.sum()),
               "focus_voxels_labelled": int((b.labels[new] > 0).sum()),
               "without_foci": round(a.agatston_total, 2), "with_foci": round(b.agatston_total, 2),
               "right_without": risk_category(a.agatston_total) == risk_category(truth),
               "right_with": risk_category(b.agatston_total) == risk_category(truth)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:  # every series, before the summary
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
    n = len(rows)
    hit = [r for r in rows if r["focus_voxels_labelled"]]
    print(f"\n{n} phantoms, seeds {args.first}..{args.first + n - 1}, foci in {sum(r['focus_voxels'] > 0 for r in rows)}")
    print("| | risk categories right | mean Agatston | series with focus calcium counted |")
    print("|---|---:|---:|---:|")
    print(f"| without foci | {sum(r['right_without'] for r in rows)} of {n} | "
          f"{np.mean([r['without_foci'] for r in rows]):.1f} | - |")
    print(f"| with foci | {sum(r['right_with'] for r in rows)} of {n} | "
          f"{np.mean([r['with_foci'] for r in rows]):.1f} | {len(hit)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
