"""How the claim rule's share was chosen: risk-category accuracy and score error on development phantoms
for several ``min_claimed_share`` values (engine/scoring/claims.py), all from one filter + U-Net pass.

    python scripts/claim-rule-choice.py --first 6000 --n 40 --cache runs/dev-cache

Use seeds neither training (1000..1399) nor the held-out evaluation (5000..5039) saw: the held-out set is
for measuring the chosen value once, not for choosing it. Scores go through ``score_volume`` with the
engine's own rules (skeletal check included), so each row is what the engine would report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def main() -> int:
    from cacstream.training.evaluate_default import add_dev_set_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_arguments(ap)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.5, 0.75, 1.0],
                    help="min_claimed_share values to compare (0: the rule off)")
    ap.add_argument("--out", type=Path, default=None, help="per-series results (JSON)")
    args = ap.parse_args()
    if 5000 < args.first + args.n and args.first < 5040:
        raise SystemExit("error: seeds 5000..5039 are the held-out set; choose on other seeds (e.g. --first 6000)")

    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.inference.runtime import CalciumModels
    from cacstream.engine.scoring.agatston import score_volume
    from cacstream.training.evaluate_default import heldout_cases

    models = CalciumModels.load(args.weights, backend="onnxruntime")
    rows = []
    for case in heldout_cases(args.first, args.n, args.cache):
        p, patches = models.filter_decisions(case.hu, case.geometry.pixel_spacing_mm)
        flags = p >= models.filter_threshold
        labels = np.zeros(case.hu.shape, np.uint8)
        if flags.any():
            labels[flags] = models.segment(case.hu[flags], None if patches is None else patches[flags])
        row = {"seed": case.seed, "truth": float(case.truth["agatston_total"]),
               "truth_risk": str(case.truth["risk_category"])}
        for share in args.shares:
            cfg = dataclasses.replace(AgatstonConfig(), min_claimed_share=share or None)
            r = score_volume(case.hu, case.geometry, labels, cfg)
            row[str(share)] = [float(r.agatston_total), r.risk_category]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print("| min_claimed_share | risk-category accuracy | mean model − truth | within 1 pt or 5 % |")
    print("|---:|---:|---:|---:|")
    for share in args.shares:
        k = str(share)
        err = np.array([r[k][0] - r["truth"] for r in rows])
        acc = np.mean([r[k][1] == r["truth_risk"] for r in rows])
        within = np.mean([abs(e) <= max(1.0, 0.05 * r["truth"]) for e, r in zip(err, rows)])
        print(f"| {share:g}{' (off)' if not share else ''} | {100 * acc:.1f} % | {err.mean():+.1f} | {100 * within:.0f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
