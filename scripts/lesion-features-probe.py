"""Lesion by lesion, what tells the model's true coronary lesions from the ones it puts on other calcium?
Runs the engine's model path on held-out phantoms and, for every counted 2D lesion, measures: area,
peak HU, the share of its 2D calcium component the U-Net labelled, the volume of its 3D calcium
component, and the filter's highest patch probability over the patches it covers.

    python scripts/lesion-features-probe.py --weights engine/weights/default --n 40 --out lesions.json
    python scripts/lesion-features-probe.py --first 6000 --n 40 --cache runs/dev-cache   # development set
    python scripts/lesion-features-probe.py --coca ../shared/data/coca-sample --n 0      # real scans' 3D shares
    python scripts/lesion-features-probe.py --coca ../shared/data/coca-sample --ring --first 6000 --n 40 \
        --cache runs/dev-cache     # the tissue around real ROI plaques vs phantom lesions (fat share)

It runs the engine path as shipped: with the claim rule on, the partly claimed lesions it measures are
already gone, so to see the rule's evidence again run it with the rule off (as the figures in
docs/models.md were measured): add ``--no-claim-rule``.

A lesion is "true" when it overlaps the phantom's coronary labels; the others all lie on bone, aortic
or valve calcium. Components are measured with scipy.ndimage, independently of the engine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi


def claimed_3d(calc: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """26-connected 3D components of the calcium mask ``calc`` → (their label volume, labelled voxels
    per component, voxels per component): the share a 3D claim rule would read."""
    lab3, n = ndi.label(calc, structure=np.ones((3, 3, 3)))
    claimed = np.bincount(lab3[calc & (labels > 0)], minlength=n + 1)
    total = np.bincount(lab3[calc], minlength=n + 1)
    return lab3, claimed, total


def ring_tissue(hu2d: np.ndarray, component: np.ndarray, spacing: tuple[float, float],
                inner_mm: float = 1.0, outer_mm: float = 3.0) -> tuple[float, float]:
    """(fat share, median HU) of the non-calcium tissue ``inner_mm``..``outer_mm`` around a 2D calcium
    component: what surrounds a plaque (epicardial fat, vessel, myocardium) in this slice."""
    d = ndi.distance_transform_edt(~component, sampling=spacing)
    ring = (d > inner_mm) & (d <= outer_mm) & (hu2d < 130)
    v = hu2d[ring]
    return (float((v < -30).mean()), float(np.median(v))) if v.size else (float("nan"), float("nan"))


def coca_roi_rings(models: object, root: Path) -> list[dict[str, object]]:
    """Every expert ROI lesion (2D calcium component holding ROI pixels) of the gated COCA scans: the fat
    share around it and the share of it the model labels (engine path as shipped)."""
    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.training.data import coca

    out = []
    for pid in coca.list_gated_patients(root):
        c = coca.load_gated_patient(root, pid)
        hu, sp = c.volume.hu, tuple(c.volume.geometry.pixel_spacing_mm)
        res = run_engine_path(models, hu, c.volume.geometry, AgatstonConfig())
        for z in np.flatnonzero((c.labels > 0).any(axis=(1, 2))):
            lab, k = ndi.label((hu[z] >= 130) & (c.labels[z] > 0), structure=np.ones((3, 3)))
            for i in range(1, k + 1):
                pix = lab == i
                fat, med = ring_tissue(hu[z], pix, sp)
                out.append({"scan": f"gated {pid}", "slice": int(z), "area_mm2": float(pix.sum() * np.prod(sp)),
                            "fat_1_3mm": fat, "median_hu_1_3mm": med,
                            "model_share": float((res.labels[z][pix] > 0).mean())})
    return out


def lesions_of_case(models: object, case: object, claim_rule: bool = True) -> list[dict[str, object]]:
    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.inference.regions import split_filter_logits
    from cacstream.engine.inference.runtime import sigmoid

    cfg = AgatstonConfig() if claim_rule else AgatstonConfig(min_claimed_share=None)
    res = run_engine_path(models, case.hu, case.geometry, cfg)
    _, patches = split_filter_logits(np.asarray(models._filter_result(case.hu)[0], np.float32))
    pp = sigmoid(patches) if patches is not None else None
    side = case.hu.shape[1] // (pp.shape[1] if pp is not None else 1)
    pa = float(np.prod(case.geometry.pixel_spacing_mm))
    calc = case.hu >= 130
    lab3, claimed3, total3 = claimed_3d(calc, res.labels)
    vol3 = total3 * case.geometry.voxel_volume_mm3
    zs = np.nonzero(calc)[0]
    z_lo = np.full(len(vol3), len(calc), int)
    z_hi = np.full(len(vol3), -1, int)
    np.minimum.at(z_lo, lab3[calc], zs)
    np.maximum.at(z_hi, lab3[calc], zs)
    out = []
    for z in np.flatnonzero(res.labels.reshape(len(res.labels), -1).max(axis=1) > 0):
        lab, k = ndi.label(calc[z] & (res.labels[z] > 0), structure=np.ones((3, 3)))
        comp2, _ = ndi.label(calc[z], structure=np.ones((3, 3)))
        area2 = np.bincount(comp2.ravel())
        for i in range(1, k + 1):
            pix = lab == i
            if pix.sum() * pa < 1.0:
                continue
            comps = np.unique(comp2[pix])
            yy, xx = np.nonzero(pix)
            out.append({
                "seed": case.seed, "kind": case.kind, "slice": int(z),
                "true": bool((case.labels[z][pix] > 0).any()), "on_other": bool(case.other_calcium[z][pix].any()),
                "area_mm2": float(pix.sum() * pa), "peak_hu": float(case.hu[z][pix].max()),
                # area × Agatston weight, before the slice-thickness normalisation the engine applies
                "area_x_weight": float(pix.sum() * pa * min(4, int(case.hu[z][pix].max() // 100))),
                "share_of_component": float(pix.sum() / area2[comps[comps > 0]].sum()),
                "component_mm3": float(vol3[np.unique(lab3[z][pix])].max()),
                "share_of_component_3d": float(min(claimed3[c] / total3[c] for c in np.unique(lab3[z][pix]) if c > 0)),
                "component_slices": int(max(z_hi[c] - z_lo[c] + 1 for c in np.unique(lab3[z][pix]) if c > 0)),
                "patch_probability": float(pp[z][yy // side, xx // side].max()) if pp is not None else None,
                "fat_1_3mm": ring_tissue(case.hu[z], np.isin(comp2, comps[comps > 0]), tuple(case.geometry.pixel_spacing_mm))[0],
            })
    return out


def coca_component_shares(models: object, root: Path) -> list[dict[str, object]]:
    """Every 3D calcium component the model labels in a gated COCA scan: the share of it labelled and
    whether it holds ROI (reference coronary) calcium. What a rule on that share would remove on real scans."""
    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.training.data import coca

    out = []
    for pid in coca.list_gated_patients(root):
        c = coca.load_gated_patient(root, pid)
        res = run_engine_path(models, c.volume.hu, c.volume.geometry, AgatstonConfig())
        calc = c.volume.hu >= 130
        lab3, claimed, total = claimed_3d(calc, res.labels)
        on_roi = np.bincount(lab3[calc & (c.labels > 0)], minlength=len(total)) > 0
        for comp in np.flatnonzero(claimed[1:]) + 1:
            out.append({"scan": f"gated {pid}", "component_voxels": int(total[comp]),
                        "share_3d": float(claimed[comp] / total[comp]), "holds_roi_calcium": bool(on_roi[comp])})
    return out


def print_share_table(title: str, key: str, below: tuple[float, ...], true: list[dict[str, object]],
                      false: list[dict[str, object]]) -> None:
    """How many lesions of each kind have ``key`` below each of ``below``, and the smallest value."""
    print(f"\n{title}")
    print("| lesions | n | " + " | ".join(f"share < {t:g}" for t in below) + " | smallest |")
    print("|---|---:|" + "---:|" * (len(below) + 1))
    for name, grp in (("on coronary calcium", true), ("elsewhere", false)):
        sh = np.array([r[key] for r in grp], float)
        cells = " | ".join(str(int((sh < t).sum())) for t in below)
        print(f"| {name} | {len(sh)} | {cells} | {sh.min() if len(sh) else float('nan'):.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=Path("engine/weights/default"), help="weights folder")
    ap.add_argument("--n", type=int, default=40, help="phantoms, seeds FIRST..FIRST+n-1")
    ap.add_argument("--first", type=int, default=5000, help="first seed: 5000 (default) is the held-out set; pick a "
                    "range used by neither training (1000..1399) nor the held-out set, e.g. 6000, to design a rule "
                    "before checking it on the held-out set")
    ap.add_argument("--cache", type=Path, default=Path("runs/heldout-cache"), help="held-out phantom cache")
    ap.add_argument("--out", type=Path, default=None, help="write every lesion's features here (JSON)")
    ap.add_argument("--coca", type=Path, default=None,
                    help="COCA folder: also list the 3D claimed share of every model-labelled component of its gated "
                         "scans and whether it holds ROI calcium (a rule designed on phantoms must not remove those)")
    ap.add_argument("--ring", action="store_true",
                    help="with --coca: the fat share 1-3 mm around every expert ROI lesion of the gated scans and "
                         "whether the model finds it (phantom plaques sit in far more fat than real ones)")
    ap.add_argument("--no-claim-rule", action="store_true",
                    help="score without the claim rule (min_claimed_share None), to measure what it acts on")
    args = ap.parse_args()

    from cacstream.engine.inference.runtime import CalciumModels
    from cacstream.training.evaluate_default import heldout_cases

    models = CalciumModels.load(args.weights, backend="onnxruntime")
    if args.coca is not None:
        comps = coca_component_shares(models, args.coca)
        print("| scan | model-labelled 3D components | holding ROI calcium: their 3D shares | others with share < 0.5 |")
        print("|---|---:|---|---:|")
        for scan in sorted({str(r["scan"]) for r in comps}):
            grp = [r for r in comps if r["scan"] == scan]
            roi = sorted(f"{r['share_3d']:.2f}" for r in grp if r["holds_roi_calcium"])
            low = sum(1 for r in grp if not r["holds_roi_calcium"] and float(r["share_3d"]) < 0.5)  # type: ignore[arg-type]
            print(f"| {scan} | {len(grp)} | {', '.join(roi) or '-'} | {low} |")
        if args.ring:
            rings = coca_roi_rings(models, args.coca)
            found = [r for r in rings if float(r["model_share"]) >= 0.5]  # type: ignore[arg-type]
            missed = [r for r in rings if float(r["model_share"]) < 0.5]  # type: ignore[arg-type]
            print("\n| COCA ROI lesions | n | fat share 1-3 mm around: 25th / 50th / 75th percentile |")
            print("|---|---:|---|")
            for name, grp in (("all", rings), ("found by the model (>= half labelled)", found), ("missed", missed)):
                x = [float(r["fat_1_3mm"]) for r in grp]  # type: ignore[arg-type]
                cells = " / ".join(f"{v:.2f}" for v in np.percentile(x, [25, 50, 75])) if x else "-"
                print(f"| {name} | {len(grp)} | {cells} |")
        if args.n == 0:
            return 0
    rows: list[dict[str, object]] = []
    for case in heldout_cases(args.first, args.n, args.cache):
        rows.extend(lesions_of_case(models, case, claim_rule=not args.no_claim_rule))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    true = [r for r in rows if r["true"]]
    false = [r for r in rows if not r["true"]]
    print(f"{len(rows)} lesions: {len(true)} on coronary calcium, {len(false)} elsewhere "
          f"({sum(r['on_other'] for r in false)} on bone / aortic / valve calcium)")
    print("| feature | true: 5th / 50th / 95th percentile | false: 5th / 50th / 95th percentile |")
    print("|---|---|---|")
    for key in ("area_mm2", "peak_hu", "share_of_component", "component_mm3", "share_of_component_3d",
                "component_slices", "patch_probability", "fat_1_3mm"):
        vals = [[r[key] for r in grp if r[key] is not None] for grp in (true, false)]
        cells = [" / ".join(f"{v:.3g}" for v in np.percentile(x, [5, 50, 95])) if x else "-" for x in vals]
        print(f"| {key} | {cells[0]} | {cells[1]} |")
    print_share_table("share of the lesion's calcium component the U-Net labelled (the claim rule, "
                      "engine/scoring/claims.py):", "share_of_component", (0.5, 0.75, 0.8, 1.0), true, false)
    print_share_table("share of the lesion's 3D calcium component (all slices) the U-Net labelled:",
                      "share_of_component_3d", (0.25, 0.5, 0.75, 1.0), true, false)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
