"""Which segmentation region mode to ship: risk-category accuracy, score error, tiles and seconds of the
engine path on development phantoms for ``--segment-regions patches`` and ``components``
(engine/inference/regions.py), interleaved per series so the host's load hits both alike.

    python scripts/region-mode-choice.py --first 6000 --n 40 --cache runs/dev-cache
    python scripts/region-mode-choice.py --modes patches patches:32 --coca ../shared/data/coca-sample

A mode may name its context around a core as ``MODE:HALO`` (served pixels; 16 is the default, a 160²
tile; 32 gives the U-Net's 192² training crop). ``--coca`` also scores the COCA samples per mode.

Use seeds neither training (1000..1399) nor the held-out evaluation (5000..5039) saw. Each series is
scored by ``calibration.evaluate.run_engine_path`` (filter → regions → U-Net → ``score_volume`` with the
claim rule and the skeletal check), i.e. what the engine would report.
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
    ap.add_argument("--modes", nargs="+", default=["patches", "components"],
                    help="region modes to compare, each MODE or MODE:HALO (e.g. patches:32)")
    ap.add_argument("--coca", type=Path, default=None,
                    help="COCA folder (../shared/data/coca-sample): also score its scans per mode against the references")
    ap.add_argument("--out", type=Path, default=None, help="per-series results (JSON)")
    args = ap.parse_args()
    if 5000 < args.first + args.n and args.first < 5040:
        print("note: seeds 5000..5039 are the held-out set: measure a chosen mode there, do not choose on it")

    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.agatston import risk_category
    from cacstream.training.evaluate_default import heldout_cases, load_runtime

    def parse(spec: str) -> tuple[str, int | None]:
        mode, _, halo = spec.partition(":")
        return mode, int(halo) if halo else None

    models = {m: load_runtime(args.weights, regions=parse(m)[0], halo_px=parse(m)[1]) for m in args.modes}
    if args.coca is not None:
        from cacstream.training.evaluate_default import evaluate_coca
        coca = {m: evaluate_coca(models[m], args.coca) for m in args.modes}
        print("| scan | reference (risk) | " + " | ".join(args.modes) + " |")
        print("|---|---:|" + "---:|" * len(args.modes))
        for i, ref in enumerate(coca[args.modes[0]]):
            cells = [f"{coca[m][i]['model_total']:.1f} ({coca[m][i]['model_risk']})" for m in args.modes]
            print(f"| {ref['scan']} | {ref['reference_total']:.1f} ({ref['reference_risk']}) | " + " | ".join(cells) + " |")
    agatston = AgatstonConfig()
    rows = []
    for case in heldout_cases(args.first, args.n, args.cache):
        truth = float(case.truth["agatston_total"])
        row: dict[str, object] = {"seed": case.seed, "truth": round(truth, 2)}
        for mode, m in models.items():
            t0 = time.perf_counter()
            res = run_engine_path(m, case.hu, case.geometry, agatston)
            row[f"{mode}_s"] = round(time.perf_counter() - t0, 3)
            row[mode] = round(res.agatston_total, 2)
            p, regions = m.filter_decisions(case.hu, case.geometry.pixel_spacing_mm)  # untimed: the count
            flagged = np.asarray(p) >= m.filter_threshold
            row[f"{mode}_patches"] = int(sum(int(np.sum(regions[i])) for i in np.nonzero(flagged)[0])) if regions is not None else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{len(rows)} series, seeds {args.first}..{args.first + args.n - 1}")
    print("| mode | risk categories right | mean abs error | segmented patches | median s |")
    print("|---|---:|---:|---:|---:|")
    for mode in args.modes:
        right = sum(risk_category(r[mode]) == risk_category(r["truth"]) for r in rows)  # type: ignore[arg-type]
        mae = float(np.mean([abs(r[mode] - r["truth"]) for r in rows]))  # type: ignore[operator]
        patches = sum(int(r[f"{mode}_patches"] or 0) for r in rows)
        secs = float(np.median([r[f"{mode}_s"] for r in rows]))
        print(f"| {mode} | {right} of {len(rows)} ({100 * right / len(rows):.1f} %) | {mae:.1f} | {patches} | {secs:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
