"""Whether the skeletal gate (engine/pipeline/skeletal_gate.py) should be on: the slice filter's
sensitivity / specificity, risk-category accuracy, score error and seconds of the engine path on
development phantoms, without and with it, interleaved per series so the host's load hits both alike.

    python scripts/skeletal-gate-choice.py --first 6000 --n 40 --cache runs/dev-cache --out runs/dev-skeletal-gate.json

Use seeds neither training (1000..1399) nor the held-out evaluation (5000..5039) saw. Each series is
scored by ``calibration.evaluate.run_engine_path`` (filter → regions → U-Net → ``score_volume`` with the
claim rule and the skeletal check), i.e. what `cacstream score` would report; the per-slice truth is the
phantom's "slice holds coronary calcium".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> int:
    from cacstream.training.evaluate_default import add_dev_set_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_arguments(ap)
    ap.add_argument("--out", type=Path, default=None, help="per-series results (JSON)")
    args = ap.parse_args()
    if 5000 < args.first + args.n and args.first < 5040:
        print("note: seeds 5000..5039 are the held-out set: measure there, do not choose on it")

    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.agatston import risk_category
    from cacstream.training.evaluate_default import heldout_cases, load_runtime

    arms = {"candidate gate only": load_runtime(args.weights, skeletal_gate=False),
            "+ skeletal gate": load_runtime(args.weights, skeletal_gate=True)}
    agatston = AgatstonConfig()
    conf = {k: np.zeros(4, np.int64) for k in arms}  # TP, FN, TN, FP
    rows = []
    for case in heldout_cases(args.first, args.n, args.cache):
        truth = case.flags
        row: dict[str, object] = {"seed": case.seed, "kind": case.kind, "truth": round(float(case.truth["agatston_total"]), 2)}
        for name, m in arms.items():
            t0 = time.perf_counter()
            res = run_engine_path(m, case.hu, case.geometry, agatston)
            row[f"{name} s"] = round(time.perf_counter() - t0, 3)
            row[name] = round(res.agatston_total, 2)
            f = np.asarray(res.flags, bool)
            conf[name] += [int((f & truth).sum()), int((~f & truth).sum()), int((~f & ~truth).sum()),
                           int((f & ~truth).sum())]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{len(rows)} series, seeds {args.first}..{args.first + args.n - 1}")
    print("| filter | sensitivity | specificity | risk categories right | mean abs error | median s per series |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in arms:
        tp, fn, tn, fp = conf[name]
        right = sum(risk_category(r[name]) == risk_category(r["truth"]) for r in rows)  # type: ignore[arg-type]
        mae = float(np.mean([abs(r[name] - r["truth"]) for r in rows]))  # type: ignore[operator]
        secs = float(np.median([r[f"{name} s"] for r in rows]))
        print(f"| {name} | {tp / max(tp + fn, 1):.3f} | {tn / max(tn + fp, 1):.3f} | {right} of {len(rows)} | "
              f"{mae:.1f} | {secs:.2f} |")
    changed = [r for r in rows if r["candidate gate only"] != r["+ skeletal gate"]]
    for r in changed:
        print(f"series {r['seed']} ({r['kind']}): {r['candidate gate only']} -> {r['+ skeletal gate']} (truth {r['truth']})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
