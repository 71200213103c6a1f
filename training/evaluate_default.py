"""Evaluate weights the way the engine scores a series, on data they never saw; write the numbers into
the weights' ``config.json`` and the tables of ``docs/models.md``.

    python -m cacstream.training.evaluate_default heldout  --weights DIR --out DIR [--update-config]
    python -m cacstream.training.evaluate_default ablation --runs runs/default --weights DIR --out DIR
    python -m cacstream.training.evaluate_default record   --runs runs/default --out FILE   (training record)

``heldout`` runs the engine's model path (``CalciumModels``, ``--backend auto``; the filter → U-Net on
flagged slices → Numba Agatston chain of ``calibration/evaluate.py``'s :func:`run_engine_path`) on

* 40 held-out phantom series: seeds 5000..5039 (refused if the weights' training record lists any of
  them), kind "mixed" (gated cardiac and non-gated chest, as the engine sees them), target risk
  categories balanced (8 each; the realised category is measured on the image), 512²;
* the five COCA sample scans: gated 0, 1, 2 against their ROI references (per artery, Agatston of the
  ROI interiors), non-gated 1A and 2A against the expert per-artery scores of ``scores.xlsx``. None of
  them was used for training or validation.

and reports slice-filter sensitivity / specificity against the truth's per-slice coronary-calcium
flags, pooled Dice per artery, Agatston agreement, risk-category accuracy and confusion, and the
Agatston of model lesions that overlap bone / aortic / valve calcium (``other_calcium``: must be ~0).

``ablation`` is the paper's Table 6 on the same 40 held-out series: the frozen-[CLS] linear filters on
the DINO-LG (GLC 4) and plain DINO (GLC 0) backbones, confusion counts, sensitivity, specificity,
precision / recall / F1 per class, accuracy (plus the shipped fine-tuned filter for reference).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
from cacstream.engine.domain import ARTERIES, RISK_CATEGORIES

HELDOUT_FIRST, HELDOUT_N = 5000, 40
HELDOUT_KIND, HELDOUT_MATRIX = "mixed", 512
DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"

#: The development phantoms: seeds neither training (1000..1399) nor the held-out set uses, on which
#: the scripts under scripts/ choose a rule before it is measured once on the held-out set.
DEV_FIRST = 6000


def add_dev_set_arguments(ap: argparse.ArgumentParser, n: int = 40, cache: bool = True) -> None:
    """``--weights``, ``--first``, ``--n`` (and ``--cache``) as every development-set script reads them."""
    ap.add_argument("--weights", type=Path, default=Path("engine/weights/default"), help="weights folder")
    ap.add_argument("--first", type=int, default=DEV_FIRST,
                    help=f"first phantom seed ({DEV_FIRST}: the development set)")
    ap.add_argument("--n", type=int, default=n, help="phantoms, seeds FIRST..FIRST+n-1")
    if cache:
        ap.add_argument("--cache", type=Path, default=Path("runs/dev-cache"), help="phantom cache folder")


# ------------------------------------------------------------------------------------------ data


@dataclass
class HeldoutCase:
    seed: int
    kind: str
    hu: np.ndarray
    geometry: Any
    labels: np.ndarray
    other_calcium: np.ndarray
    truth: dict[str, Any]

    @property
    def flags(self) -> np.ndarray:
        return np.asarray(self.truth["slice_has_coronary_calcium"], dtype=bool)


def heldout_config(i: int) -> Any:
    from cacstream.training.phantom import PhantomConfig

    return PhantomConfig(kind=HELDOUT_KIND, matrix=HELDOUT_MATRIX, calcium_category=RISK_CATEGORIES[i % 5])


def heldout_cases(first: int = HELDOUT_FIRST, n: int = HELDOUT_N, cache: Path | None = None):
    """The held-out phantoms, made once and cached as .npz (+ truth and geometry JSON) under ``cache``."""
    from cacstream.engine.series.types import Geometry
    from cacstream.training.phantom import make_phantom

    for i in range(n):
        seed = first + i
        f = Path(cache) / f"heldout-{seed}.npz" if cache else None
        if f is not None and f.is_file():
            z = np.load(f, allow_pickle=False)
            meta = json.loads(str(z["meta"]))
            g = meta["geometry"]
            geometry = Geometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in g.items()})
            yield HeldoutCase(seed, meta["kind"], z["hu"].astype(np.float32), geometry, z["labels"],
                              z["other_calcium"], meta["truth"])
            continue
        case = make_phantom(seed, heldout_config(seed - HELDOUT_FIRST))  # category by seed, not by position
        from dataclasses import asdict

        geo = asdict(case.geometry)
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, hu=case.hu.astype(np.int16), labels=case.labels,
                                other_calcium=case.other_calcium,
                                meta=np.array(json.dumps({"kind": case.kind, "geometry": geo, "truth": case.truth},
                                                         default=str)))
            tmp.replace(f)
        yield HeldoutCase(seed, case.kind, case.hu, case.geometry, case.labels, case.other_calcium, case.truth)


# ---------------------------------------------------------------------------------- lesion overlap


def other_calcium_overlap(hu: np.ndarray, labels: np.ndarray, other: np.ndarray, geometry: Any,
                          config: Any) -> dict[str, float]:
    """Agatston of the model's lesions (HU ≥ 130 inside its artery labels, 8-connected per slice,
    ≥ 1 mm²) that touch non-coronary calcium, and of all its lesions (must equal the engine's total:
    checked by the caller)."""
    from cacstream.engine.scoring.agatston import label_slice, thickness_factor

    ps = geometry.pixel_spacing_mm
    pixel_area = float(ps[0]) * float(ps[1])
    w_lo = np.asarray(config.weight_thresholds_hu, dtype=np.float64)
    factor = thickness_factor(geometry, config)
    total = touching = inside = 0.0
    n_touch = 0
    for z in np.flatnonzero(labels.reshape(labels.shape[0], -1).max(axis=1) > 0):
        fg = (np.asarray(hu[z], np.float64) >= config.threshold_hu) & (labels[z] > 0)
        lab, n = label_slice(fg, config.connectivity)
        for k in range(1, n + 1):
            pix = lab == k
            area = float(pix.sum()) * pixel_area
            if area < config.min_area_mm2:
                continue
            peak = float(hu[z][pix].max())
            score = area * int(np.searchsorted(w_lo, peak, side="right"))
            total += score
            ov = pix & other[z]
            if ov.any():
                touching += score
                inside += score * float(ov.sum()) / float(pix.sum())
                n_touch += 1
    return {"model_total": total * factor, "lesions_touching_other": n_touch,
            "agatston_touching_other": touching * factor, "agatston_share_inside_other": inside * factor}


# ------------------------------------------------------------------------------------- metrics


def rate(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def confusion_metrics(c: dict[str, int]) -> dict[str, Any]:
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    p1, r1 = rate(tp, tp + fp), rate(tp, tp + fn)
    p0, r0 = rate(tn, tn + fn), rate(tn, tn + fp)

    def f1(p: float | None, r: float | None) -> float | None:
        return None if p is None or r is None or p + r == 0 else 2 * p * r / (p + r)

    return {**c, "sensitivity": r1, "specificity": r0, "precision_1": p1, "recall_1": r1, "f1_1": f1(p1, r1),
            "precision_0": p0, "recall_0": r0, "f1_0": f1(p0, r0), "accuracy": rate(tp + tn, tp + tn + fp + fn)}


def add_conf(c: dict[str, int], pred: np.ndarray, ref: np.ndarray) -> None:
    c["tp"] += int(np.sum(pred & ref))
    c["fp"] += int(np.sum(pred & ~ref))
    c["tn"] += int(np.sum(~pred & ~ref))
    c["fn"] += int(np.sum(~pred & ref))


def new_conf() -> dict[str, int]:
    return {"tp": 0, "fp": 0, "tn": 0, "fn": 0}


# ------------------------------------------------------------------------------------ held-out


def seen_heldout_seeds(weights: Path, first: int, n: int) -> list[int]:
    from cacstream.calibration.evaluate import seen_seeds

    return seen_seeds(weights, first, n)


def load_runtime(weights: Path, backend: str = "auto", threads: int | None = None, regions: str = "patches",
                 halo_px: int | None = None, skeletal_gate: bool = True) -> Any:
    """The engine's models as ``score`` loads them (its default Agatston convention, so the skeletal gate
    is on unless ``skeletal_gate`` is False); ``halo_px`` None keeps RegionConfig's default context."""
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.inference.regions import RegionConfig
    from cacstream.engine.inference.runtime import CalciumModels

    region = RegionConfig(mode=regions) if halo_px is None else RegionConfig(mode=regions, halo_px=halo_px)  # type: ignore[arg-type]
    gate = AgatstonConfig().skeletal_component_mm3 if skeletal_gate else None
    return CalciumModels.load(weights, backend=backend, batch_size=16, threads=threads, regions=region,
                              skeletal_gate_mm3=gate)


def evaluate_heldout(models: Any, cases: Any, n: int, quiet: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from cacstream.calibration.evaluate import (
        Counts,
        agatston_agreement,
        dice_metrics,
        run_engine_path,
        scored_mask,
    )
    from cacstream.calibration.progress import progress_bar
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.agatston import score_volume

    cfg = AgatstonConfig()
    counts = Counts()
    conf = {"all": new_conf(), "cardiac_gated": new_conf(), "chest": new_conf()}
    rows: list[dict[str, Any]] = []
    with progress_bar(quiet) as bar:
        task = bar.add_task("held-out phantoms (engine path)", total=n)
        for case in cases:
            res = run_engine_path(models, case.hu, case.geometry, cfg)
            truth = case.flags
            for k in ("all", case.kind):
                add_conf(conf[k], res.flags, truth)
            counts.add_dice("model_vs_truth", scored_mask(res.labels, case.hu, cfg.threshold_hu),
                            scored_mask(case.labels, case.hu, cfg.threshold_hu))
            ov = other_calcium_overlap(case.hu, res.labels, case.other_calcium, case.geometry, cfg)
            if abs(ov["model_total"] - res.agatston_total) > 1e-6 * max(1.0, res.agatston_total):
                raise AssertionError(f"seed {case.seed}: lesion recount {ov['model_total']} != engine "
                                     f"{res.agatston_total}")
            other_present = score_volume(case.hu, case.geometry, case.other_calcium.astype(np.uint8),
                                         cfg.for_reference_labels()).agatston_total  # all of it
            t = case.truth
            rows.append({
                "seed": case.seed, "kind": case.kind, "slices": int(case.hu.shape[0]),
                "thickness_mm": float(case.geometry.slice_thickness_mm),
                "truth_flagged": int(truth.sum()), "model_flagged": int(res.flags.sum()),
                "tp": int(np.sum(res.flags & truth)), "fn": int(np.sum(~res.flags & truth)),
                "fp": int(np.sum(res.flags & ~truth)),
                "truth_agatston": float(t["agatston_total"]), "model_agatston": res.agatston_total,
                "truth_per_artery": {a: float(t["agatston_per_artery"][a]) for a in ARTERIES},
                "model_per_artery": {a: float(res.agatston_per_artery[a]) for a in ARTERIES},
                "truth_risk": str(t["risk_category"]), "model_risk": res.risk,
                "other_calcium_agatston_in_image": float(other_present),
                "model_agatston_touching_other": ov["agatston_touching_other"],
                "model_lesions_touching_other": ov["lesions_touching_other"],
                "model_lesions_excluded_skeletal": res.excluded_by_reason.get("skeletal", 0),
                "model_lesions_excluded_claim": res.excluded_by_reason.get("partial_claim", 0),
                "model_lesions_excluded_beside_bone": res.excluded_by_reason.get("juxta_skeletal", 0),
                "model_lesions_excluded_outside_levels": res.excluded_by_reason.get("outside_cardiac_levels", 0),
                "model_agatston_inside_other": ov["agatston_share_inside_other"],
                "seconds": round(res.seconds, 3),
            })
            bar.advance(task)
    truth_r = [r["truth_risk"] for r in rows]
    model_r = [r["model_risk"] for r in rows]
    from cacstream.calibration.evaluate import confusion

    metrics = {
        "series": len(rows), "seeds": f"{rows[0]['seed']}..{rows[-1]['seed']}" if rows else "",
        "kinds": {k: sum(r["kind"] == k for r in rows) for k in ("cardiac_gated", "chest")},
        "slices": int(sum(r["slices"] for r in rows)),
        "slice_filter": {k: confusion_metrics(v) for k, v in conf.items()},
        "dice_per_artery": dice_metrics(counts.dice["model_vs_truth"]),
        "agatston_vs_truth": agatston_agreement([r["truth_agatston"] for r in rows], [r["model_agatston"] for r in rows]),
        "risk_accuracy": sum(a == b for a, b in zip(truth_r, model_r)) / max(len(rows), 1),
        "risk_confusion_truth_rows_model_cols": confusion(truth_r, model_r),
        "risk_categories": list(RISK_CATEGORIES),
        "zero_calcium_series": {"truth_zero": sum(r["truth_agatston"] == 0 for r in rows),
                                "model_zero_of_those": sum(r["truth_agatston"] == 0 and r["model_agatston"] == 0
                                                           for r in rows)},
        "other_calcium": {
            "agatston_in_images_total": float(sum(r["other_calcium_agatston_in_image"] for r in rows)),
            "series_with_other_calcium": sum(r["other_calcium_agatston_in_image"] > 0 for r in rows),
            "model_agatston_touching_total": float(sum(r["model_agatston_touching_other"] for r in rows)),
            "model_lesions_touching": int(sum(r["model_lesions_touching_other"] for r in rows)),
            "model_agatston_inside_total": float(sum(r["model_agatston_inside_other"] for r in rows)),
            "series_with_touching_lesion": sum(r["model_lesions_touching_other"] > 0 for r in rows),
            "model_lesions_excluded_skeletal": int(sum(r["model_lesions_excluded_skeletal"] for r in rows)),
            "model_lesions_excluded_claim": int(sum(r["model_lesions_excluded_claim"] for r in rows)),
            "model_lesions_excluded_beside_bone": int(sum(r["model_lesions_excluded_beside_bone"] for r in rows)),
            "model_lesions_excluded_outside_levels": int(sum(r["model_lesions_excluded_outside_levels"] for r in rows)),
        },
        "seconds_per_series_median": float(np.median([r["seconds"] for r in rows])) if rows else None,
        "segment_regions": getattr(models, "region_rule", None),
        # the model-mode lesion rules these figures were measured with (a report carries the same values)
        "lesion_rules": {"min_claimed_share": cfg.min_claimed_share, "skeletal_component_mm3": cfg.skeletal_component_mm3,
                         "min_bone_distance_mm": cfg.min_bone_distance_mm, "cardiac_levels": cfg.cardiac_levels},
    }
    return metrics, rows


@dataclass
class CocaScan:
    """One COCA scan with its reference: the ROIs' Agatston (gated; ``roi_labels`` and the slices of
    the ROI lesions kept) or the expert's per-artery scores (non-gated)."""

    kind: str  # "gated" or "non-gated"
    name: str
    volume: Any
    reference_total: float
    reference_per_artery: dict[str, float]
    roi_labels: np.ndarray | None = None
    roi_lesion_slices: np.ndarray | None = None  # bool per slice (gated)

    @property
    def reference_risk(self) -> str:
        from cacstream.engine.domain import risk_category

        return risk_category(self.reference_total)


def coca_scans(root: Path) -> Iterator[CocaScan]:
    """The COCA scans under ``root``, gated first, each with its reference (what the held-out report and
    the choice scripts print next to the model's scores)."""
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.agatston import score_volume
    from cacstream.training.data import coca

    ref_cfg = AgatstonConfig().for_reference_labels()
    for pid in coca.list_gated_patients(root):
        c = coca.load_gated_patient(root, pid)
        ref = score_volume(c.volume.hu, c.volume.geometry, c.labels, ref_cfg)
        slices = np.zeros(c.volume.hu.shape[0], bool)
        slices[[les.slice_index for les in ref.lesions]] = True
        yield CocaScan("gated", f"gated {pid}", c.volume, float(ref.agatston_total),
                       {a: float(ref.agatston_per_artery[a]) for a in ARTERIES}, c.labels, slices)
    expert = coca.load_nongated_scores(root)
    for pid in coca.list_nongated_patients(root):
        n = coca.load_nongated_patient(root, pid)
        r = expert.get(pid, n.expected_scores)
        total = float(r.get("total", sum(r.get(a, 0.0) for a in ARTERIES)))
        yield CocaScan("non-gated", f"non-gated {n.sheet_id}", n.volume, total,
                       {a: float(r.get(a, 0.0)) for a in ARTERIES})


def evaluate_coca(models: Any, root: Path) -> list[dict[str, Any]]:
    """Per COCA scan: model per-artery Agatston and risk next to the reference."""
    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig

    cfg = AgatstonConfig()
    out = []
    for scan in coca_scans(root):
        hu, g = scan.volume.hu, scan.volume.geometry
        res = run_engine_path(models, hu, g, cfg)
        row = {
            "scan": scan.name,
            "reference": ("ROI interiors (Agatston of the COCA ROIs)" if scan.kind == "gated"
                          else "expert per-artery Agatston (scores.xlsx)"),
            "slices": int(hu.shape[0]), "thickness_mm": float(g.slice_thickness_mm),
            "reference_per_artery": scan.reference_per_artery,
            "reference_total": scan.reference_total, "reference_risk": scan.reference_risk,
            "model_per_artery": {a: float(res.agatston_per_artery[a]) for a in ARTERIES},
            "model_total": res.agatston_total, "model_risk": res.risk,
            "slices_flagged": int(res.flags.sum()),
        }
        if scan.roi_lesion_slices is not None:
            conf = new_conf()
            add_conf(conf, res.flags, scan.roi_lesion_slices)
            row.update({"reference_slices": int(scan.roi_lesion_slices.sum()), "filter_vs_roi_slices": conf})
        row["seconds"] = round(res.seconds, 2)
        out.append(row)
    return out


# --------------------------------------------------------------------------------------- plots


def plot_heldout(rows: list[dict[str, Any]], metrics: dict[str, Any], out: Path, prefix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11.5, 4.8))
    x = np.array([r["truth_agatston"] for r in rows])
    y = np.array([r["model_agatston"] for r in rows])
    kinds = np.array([r["kind"] for r in rows])
    hi = max(10.0, float(max(x.max(), y.max())) * 1.2)
    a1.plot([0, hi], [0, hi], color="0.6", lw=1)
    for k, m in (("cardiac_gated", "o"), ("chest", "s")):
        sel = kinds == k
        a1.scatter(x[sel], y[sel], s=26, marker=m, alpha=0.8, label=k.replace("_", " "))
    for b in (10, 100, 400):
        a1.axvline(b, color="0.88", lw=0.8)
        a1.axhline(b, color="0.88", lw=0.8)
    a1.set_xscale("symlog", linthresh=1.0)
    a1.set_yscale("symlog", linthresh=1.0)
    a1.set_xlim(-0.5, hi)
    a1.set_ylim(-0.5, hi)
    a1.set_xlabel("truth Agatston (phantom)")
    a1.set_ylabel("model Agatston (engine path)")
    a1.set_title(f"{len(rows)} held-out phantoms; risk accuracy {100 * metrics['risk_accuracy']:.0f} %")
    a1.legend(fontsize=8)
    m = np.asarray(metrics["risk_confusion_truth_rows_model_cols"])
    a2.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            a2.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    a2.set_xticks(range(5), RISK_CATEGORIES)
    a2.set_yticks(range(5), RISK_CATEGORIES)
    a2.set_xlabel("model risk category")
    a2.set_ylabel("truth risk category")
    a2.set_title("risk categories (rows truth, columns model)")
    fig.tight_layout()
    p = out / f"{prefix}_heldout_agatston.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    return paths


def copy_run_curves(runs: Path, dest: Path, names: dict[str, str]) -> list[Path]:
    """The trainers' curves.png, copied into docs/images under stable names."""
    out = []
    dest.mkdir(parents=True, exist_ok=True)
    for run, name in names.items():
        src = runs / run / "curves.png"
        if src.is_file():
            shutil.copyfile(src, dest / name)
            out.append(dest / name)
    return out


# ----------------------------------------------------------------------------------- markdown


def _f(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def heldout_markdown(metrics: dict[str, Any], command: str) -> str:
    sf = metrics["slice_filter"]
    lines = [
        f"Held-out phantoms: {metrics['series']} series (seeds {metrics['seeds']}, "
        f"{metrics['kinds']['cardiac_gated']} gated + {metrics['kinds']['chest']} non-gated chest), "
        f"{metrics['slices']} slices. Command: `{command}`",
        "",
        "| slice filter | TP | FN | TN | FP | sensitivity | specificity | F1 (calcified) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in ("all", "cardiac_gated", "chest"):
        v = sf[k]
        lines.append(f"| {k.replace('_', ' ')} | {v['tp']} | {v['fn']} | {v['tn']} | {v['fp']} | "
                     f"{_f(v['sensitivity'])} | {_f(v['specificity'])} | {_f(v['f1_1'])} |")
    d = metrics["dice_per_artery"]
    a = metrics["agatston_vs_truth"]
    oc = metrics["other_calcium"]
    lines += [
        "",
        "| metric | value |",
        "|---|---|",
        f"| risk-category accuracy | {100 * metrics['risk_accuracy']:.1f} % |",
        "| Dice per artery (scored mask, pooled) | " + ", ".join(f"{k} {_f(v)}" for k, v in d.items()) + " |",
        f"| Agatston model − truth | mean {a.get('mean_diff', 0):.2f}, 95 % limits {a.get('loa_low', 0):.1f} .. "
        f"{a.get('loa_high', 0):.1f}, within 1 pt or 5 %: {100 * a.get('within_1pt_or_5pct', 0):.0f} % |",
        f"| zero-calcium series scored 0 | {metrics['zero_calcium_series']['model_zero_of_those']} of "
        f"{metrics['zero_calcium_series']['truth_zero']} |",
        f"| bone / aortic / valve calcium in the images (Agatston if it were counted) | "
        f"{oc['agatston_in_images_total']:.0f} over {oc['series_with_other_calcium']} series |",
        f"| model lesions touching that calcium | {oc['model_lesions_touching']} lesions, Agatston "
        f"{oc['model_agatston_touching_total']:.2f} (pixels inside it: {oc['model_agatston_inside_total']:.2f}) |",
        f"| model lesions excluded by the skeletal check (not counted, listed in reports) | "
        f"{oc.get('model_lesions_excluded_skeletal', 0)} |",
        f"| model lesions excluded by the claim rule (calcium the U-Net split; not counted, listed in reports) | "
        f"{oc.get('model_lesions_excluded_claim', 0)} |",
        f"| model lesions excluded by the bone-distance rule (chest-wall calcium; not counted, listed in reports) | "
        f"{oc.get('model_lesions_excluded_beside_bone', 0)} |",
        f"| model lesions excluded by the cardiac levels (neck / abdominal calcium; not counted, listed in reports) | "
        f"{oc.get('model_lesions_excluded_outside_levels', 0)} |",
        f"| median engine-path seconds per series | {metrics['seconds_per_series_median']:.1f} |",
    ]
    return "\n".join(lines)


def coca_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| scan | reference | LM | LAD | LCX | RCA | total | risk | flagged / slices |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        ref, mod = r["reference_per_artery"], r["model_per_artery"]
        cells = [f"{mod[a]:.1f} ({ref[a]:.1f})" for a in ARTERIES]
        lines.append(f"| {r['scan']} | {r['reference'].split(' (')[0]} | " + " | ".join(cells)
                     + f" | {r['model_total']:.1f} ({r['reference_total']:.1f}) | {r['model_risk']} "
                       f"({r['reference_risk']}) | {r['slices_flagged']} / {r['slices']} |")
    lines.append("")
    lines.append("Model value first, reference in brackets.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- record


def training_record(runs: Path, wall_s: float | None, command: str) -> dict[str, Any]:
    """What config.json says about how the weights were made (read from the run folders)."""
    def rec(name: str) -> dict[str, Any]:
        p = runs / name / "run.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    dino, unet, clf, unet_long = rec("dino"), rec("unet"), rec("classifier"), rec("unet-long")
    unet_hardneg = rec("unet-hardneg")  # the optional fine-tune on hard negatives (stage 2c)
    unet_hardneg2 = rec("unet-hardneg2")  # its second round, on all 400 phantoms (stage 2d)
    unet_hardneg3 = rec("unet-hardneg3")  # its third round, more crops on non-coronary calcium (stage 2e)
    clf_gated = rec("classifier-gated")  # the filter fine-tuned with the candidate gate (stage 2b)
    split = json.loads((runs / "unet" / "split.json").read_text()) if (runs / "unet" / "split.json").is_file() else {}

    def epochs_time(r: dict[str, Any], name: str) -> float | None:
        m = runs / name / "metrics.json"
        if not m.is_file():
            return None
        return float(sum(e.get("time_s", 0.0) for e in json.loads(m.read_text()).get("epochs", [])))

    return {
        "command": command,
        "wall_time_s": wall_s,
        "data": {
            "phantoms": "phantom seeds 1000..1399 {'kind': 'mixed', 'matrix': 512} (cacstream.training.phantom); "
                        "DINO-LG used seeds 1000..1079, the U-Net 1000..1159 then 1000..1239 (trained longer, then "
                        "fine-tuned on hard negatives), then 1000..1399 (a second and a third hard-negative round), "
                        "the slice filter 1000..1399 (then fine-tuned with the candidate gate on the same)",
            "phantom_count": 400,
            "kinds": "mixed: gated cardiac or non-gated chest, equal odds per seed",
            "split": {"method": split.get("method"), "train_patients": len(split.get("train", [])),
                      "val_patients": len(split.get("val", [])), "test_patients": len(split.get("test", [])),
                      "val": split.get("val", [])},
            "coca": "not used for training, validation or threshold choice: all five sample scans "
                    "(gated 0, 1, 2; non-gated 1A, 2A) are held out for the report only",
            "heldout_evaluation": f"held-out seeds {HELDOUT_FIRST}..{HELDOUT_FIRST + HELDOUT_N - 1} (never trained on)",
        },
        "stages": {
            "dino": {"config": "training/configs/default_dino.toml", "epochs": dino.get("epochs"),
                     "iterations": dino.get("iterations"), "multicrop": dino.get("multicrop"),
                     "last_epoch": dino.get("metrics"), "train_seconds": epochs_time(dino, "dino"),
                     "command": dino.get("command")},
            "classifier": {"config": "training/configs/default_classifier.toml", "feature": clf.get("feature"),
                           "finetune": clf.get("finetune"), "train_slices": clf.get("train_slices"),
                           "validation_at_threshold": (clf.get("metrics") or {}).get("val"),
                           "train_seconds": epochs_time(clf, "classifier"), "command": clf.get("command")},
            "unet": {"config": "training/configs/default_unet.toml", "epochs": len(unet.get("epochs", [])),
                     "validation": (unet.get("metrics") or {}).get("val"),
                     "train_seconds": epochs_time(unet, "unet"), "command": unet.get("command")},
            "unet_long": {"config": "training/configs/default_long_unet.toml", "init_from": "unet",
                          "epochs": len(unet_long.get("epochs", [])),
                          "validation": (unet_long.get("metrics") or {}).get("val"),
                          "train_seconds": epochs_time(unet_long, "unet-long"), "command": unet_long.get("command")},
            **({"unet_hardneg": {"config": "training/configs/default_hardneg_unet.toml", "init_from": "unet-long",
                                 "epochs": len(unet_hardneg.get("epochs", [])),
                                 "validation": (unet_hardneg.get("metrics") or {}).get("val"),
                                 "train_seconds": epochs_time(unet_hardneg, "unet-hardneg"),
                                 "command": unet_hardneg.get("command")}} if unet_hardneg else {}),
            **({"unet_hardneg2": {"config": "training/configs/default_hardneg2_unet.toml", "init_from": "unet-hardneg",
                                  "epochs": len(unet_hardneg2.get("epochs", [])),
                                  "validation": (unet_hardneg2.get("metrics") or {}).get("val"),
                                  "train_seconds": epochs_time(unet_hardneg2, "unet-hardneg2"),
                                  "command": unet_hardneg2.get("command")}} if unet_hardneg2 else {}),
            **({"unet_hardneg3": {"config": "training/configs/default_hardneg3_unet.toml", "init_from": "unet-hardneg2",
                                  "epochs": len(unet_hardneg3.get("epochs", [])),
                                  "validation": (unet_hardneg3.get("metrics") or {}).get("val"),
                                  "train_seconds": epochs_time(unet_hardneg3, "unet-hardneg3"),
                                  "command": unet_hardneg3.get("command")}} if unet_hardneg3 else {}),
            **({"classifier_gated": {"config": "training/configs/default_gated_classifier.toml",
                                     "init_from": "classifier", "candidate_gate": clf_gated.get("candidate_gate"),
                                     "epochs": len(clf_gated.get("epochs", [])),
                                     "validation_at_threshold": (clf_gated.get("metrics") or {}).get("val"),
                                     "train_seconds": epochs_time(clf_gated, "classifier-gated"),
                                     "command": clf_gated.get("command")}} if clf_gated else {}),
        },
        "deviations_from_paper": DEVIATIONS,
    }


DEVIATIONS = [
    "backbone ViT-Tiny/16 at 224 (paper ViT-B/8): repository size and 2-core CPU latency",
    "DINO-LG for 2 epochs of 29 steps x 16 slices (928 slice-steps, 80 phantoms; paper 150 epochs on "
    "36 k COCA slices) with the DINO maintainers' short-run settings (K 4096, teacher momentum 0.99, "
    "teacher temperature 0.03->0.04, no last-layer freeze, lr 0.004 per 256); at this budget the teacher "
    "ends near the uniform plateau, so the backbone is an initialisation, not a feature extractor",
    "slice filter: a fixed 4x4 max-pool in front of the ViT (served 512², the ViT sees 128²; a bilinear "
    "resize to 224² averages the lesion of 10-28 % of calcified slices below 130 HU), a [-300, 500] HU "
    "window, and one linear layer on every patch token with the slice logit = the maximum (patch_max), "
    "trained with the backbone on the per-patch calcium labels and the slice label (paper: [CLS] only, "
    "frozen backbone, per-slice min-max at 224²); the frozen paper protocol is measured in the ablation",
    "slice filter fine-tuned 4 more epochs with the candidate gate (not in the paper): a patch can flag its "
    "slice only when it holds a 2D calcium component the Agatston rule could count (>= 130 HU, >= 1 mm²); "
    "slice logit = maximum over those patches, patch loss on them only (engine/inference/candidates.py)",
    "slice-filter operating threshold: highest with validation sensitivity >= 0.98 (paper: 0.5)",
    "U-Net: 16 initial filters, 192² patches, loss only on calcium candidates (>= 130 HU, the pixels "
    "scoring reads), Adam 1e-3 cosine for 3 epochs on 160 phantoms, then 5e-4 cosine for 2 more on 240 "
    "(init_from), then 1 epoch at 2e-4 with half the non-coronary patches centred on non-coronary calcium "
    "(hard_negative_crop_p 0.5), then 1 epoch at 1.5e-4 on 400 phantoms with hard_negative_crop_p 0.7, "
    "then 1 more at 1e-4 with hard_negative_crop_p 0.85, "
    "fixed HU window [-300, 1200] (paper: 64 filters, whole 512² slices, all "
    "pixels, Adam 1e-4, 100 epochs, per-slice min-max)",
    "training data: synthetic phantoms only (paper: COCA); the COCA samples are kept for evaluation",
    "weights stored as float16 in safetensors (loaded as float32); ONNX generated on first use",
]


# ----------------------------------------------------------------------------------- ablation


def filter_probabilities_torch(weights_dir: Path, cases: list[HeldoutCase]) -> tuple[list[np.ndarray], float]:
    from cacstream.engine.inference.runtime import CalciumModels

    m = CalciumModels.load(weights_dir, backend="torch", batch_size=16, threads=None)
    return [m.filter_probabilities(c.hu, c.geometry.pixel_spacing_mm) for c in cases], float(m.filter_threshold)


def ablation(runs: Path, out: Path, cases: list[HeldoutCase], shipped: Path | None) -> dict[str, Any]:
    from cacstream.training.export import export_weights

    arms = {"DINO (GLC 0)": "linear-glc0", "DINO-LG (GLC 4)": "linear"}
    truth = np.concatenate([c.flags for c in cases])
    result: dict[str, Any] = {"series": len(cases), "slices": int(truth.size), "calcified_slices": int(truth.sum()),
                              "arms": {}}
    for label, run in arms.items():
        wdir = out / run
        if not (wdir / "config.json").is_file() or (runs / run / "run.json").stat().st_mtime > (wdir / "config.json").stat().st_mtime:
            export_weights(wdir, runs / run, runs / "unet", onnx=False, weights_id=f"ablation-{run}")
        probs, thr = filter_probabilities_torch(wdir, cases)
        p = np.concatenate(probs)
        rec = json.loads((runs / run / "run.json").read_text())
        from cacstream.training.metrics import roc_auc

        arm = {"backbone_run": rec.get("backbone_run"), "glc": (rec.get("dino") or {}).get("multicrop", {}).get("glc"),
               "feature": rec.get("feature"), "val_threshold": thr, "auc": roc_auc(p, truth.astype(float))}
        for name, t in (("at_val_threshold", thr), ("at_0.5", 0.5)):
            c = new_conf()
            add_conf(c, p >= t, truth)
            arm[name] = confusion_metrics(c)
        result["arms"][label] = arm
    if shipped is not None:
        probs, thr = filter_probabilities_torch(shipped, cases)
        p = np.concatenate(probs)
        c = new_conf()
        add_conf(c, p >= thr, truth)
        from cacstream.training.metrics import roc_auc

        result["shipped_filter"] = {"weights": str(shipped), "threshold": thr, "auc": roc_auc(p, truth.astype(float)),
                                    "at_val_threshold": confusion_metrics(c)}
    return result


def ablation_markdown(res: dict[str, Any], command: str) -> str:
    arms = res["arms"]
    names = list(arms)
    rows = [("True negatives (TN)", "tn"), ("False positives (FP)", "fp"), ("False negatives (FN)", "fn"),
            ("True positives (TP)", "tp"), ("Class 0 precision", "precision_0"), ("Class 0 recall", "recall_0"),
            ("Class 0 F1", "f1_0"), ("Class 1 precision", "precision_1"), ("Class 1 recall", "recall_1"),
            ("Class 1 F1", "f1_1"), ("Accuracy", "accuracy"), ("Sensitivity", "sensitivity"),
            ("Specificity", "specificity")]
    lines = [f"{res['series']} held-out phantom series, {res['slices']} slices ({res['calcified_slices']} with "
             f"coronary calcium). Command: `{command}`", "",
             "| metric | " + " | ".join(f"{n} @ val thr." for n in names) + " | " + " | ".join(f"{n} @ 0.5" for n in names) + " |",
             "|---|" + "---:|" * (2 * len(names))]
    for title, key in rows:
        cells = []
        for where in ("at_val_threshold", "at_0.5"):
            for n in names:
                v = arms[n][where][key]
                cells.append(str(v) if isinstance(v, int) else _f(v, 2))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("| ROC AUC | " + " | ".join(_f(arms[n]["auc"], 3) for n in names) + " | " + " | ".join("" for _ in names) + " |")
    lines.append("| operating threshold (val. sens. ≥ 0.98) | " + " | ".join(_f(arms[n]["val_threshold"], 3) for n in names)
                 + " | " + " | ".join("0.5" for _ in names) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- CLI


#: The models issue's acceptance on the held-out phantoms.
TARGETS = {"sensitivity": 0.95, "specificity": 0.90, "risk_accuracy": 0.90}


def validation_verdict(metrics: dict[str, Any]) -> dict[str, Any]:
    """``config.json["validation"]``: passed only when every held-out target holds and no model lesion
    touches bone / aortic / valve calcium; the engine puts the summary into every report otherwise."""
    f = metrics["slice_filter"]["all"]
    sens, spec, risk = f["sensitivity"] or 0.0, f["specificity"] or 0.0, metrics["risk_accuracy"]
    touching = metrics["other_calcium"]["model_lesions_touching"]
    passed = (sens >= TARGETS["sensitivity"] and spec >= TARGETS["specificity"]
              and risk >= TARGETS["risk_accuracy"] and touching == 0)
    summary = (f"on {metrics['series']} held-out phantoms slice-filter sensitivity {sens:.2f} / specificity "
               f"{spec:.2f} (targets {TARGETS['sensitivity']} / {TARGETS['specificity']}), risk-category "
               f"accuracy {risk:.0%} (target {TARGETS['risk_accuracy']:.0%}), {touching} model lesions on "
               "bone / aortic / valve calcium (target 0); see docs/models.md")
    return {"passed": passed, "summary": summary, "targets": TARGETS}


def _update_config(weights: Path, key: str, value: Any, top_level: bool = False) -> None:
    path = Path(weights) / "config.json"
    cfg = json.loads(path.read_text())
    if top_level:
        cfg[key] = value
    else:
        cfg.setdefault("metrics", {})[key] = value
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=1) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cacstream.training.evaluate_default", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("heldout", help="held-out phantoms + COCA through the engine path.")
    h.add_argument("--weights", type=Path, required=True, help="weights folder to evaluate.")
    h.add_argument("--out", type=Path, required=True, help="report folder (metrics.json, tables, PNGs).")
    h.add_argument("--n", type=int, default=HELDOUT_N, help="held-out phantom series (40: the acceptance).")
    h.add_argument("--first-seed", type=int, default=HELDOUT_FIRST, help="first held-out seed (>= 5000).")
    h.add_argument("--cache", type=Path, default=Path("runs/heldout-cache"), help="held-out phantom cache.")
    h.add_argument("--coca", type=Path, default=None, help="COCA sample root (default: ../shared/data/coca-sample).")
    h.add_argument("--backend", default="auto", help="engine backend (auto = ONNX Runtime on a CPU).")
    h.add_argument("--segment-regions", choices=("patches", "components", "slice"), default="patches",
                   help="what the U-Net sees of a flagged slice: patches (the engine's default): the cores "
                        "around the filter's flagged patches; components: those and the cores their calcium "
                        "components reach; slice: the whole slice (the paper). The last two for comparison.")
    h.add_argument("--no-skeletal-gate", action="store_true",
                   help="let bone-sized calcium flag slices (the engine's `score --no-skeletal-gate`), for comparison.")
    h.add_argument("--update-config", action="store_true", help="write the metrics into WEIGHTS/config.json.")
    h.add_argument("--quiet", action="store_true", help="no progress bar.")
    a = sub.add_parser("ablation", help="paper Table 6: linear filters on GLC 0 vs GLC 4 backbones.")
    a.add_argument("--runs", type=Path, default=Path("runs/default"))
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--weights", type=Path, default=None, help="shipped weights (reference row; metrics go there).")
    a.add_argument("--cache", type=Path, default=Path("runs/heldout-cache"))
    a.add_argument("--update-config", action="store_true")
    r = sub.add_parser("record", help="training record (data, stages, deviations) as JSON.")
    r.add_argument("--runs", type=Path, default=Path("runs/default"))
    r.add_argument("--wall-s", type=float, default=None)
    r.add_argument("--command", default="bash scripts/train-default-weights.sh")
    r.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    command = "python -m cacstream.training.evaluate_default " + " ".join(sys.argv[1:] if argv is None else argv)

    if args.cmd == "record":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(training_record(args.runs, args.wall_s, args.command), indent=1) + "\n")
        print(f"training record: {args.out}")
        return 0
    if args.cmd == "heldout":
        if args.first_seed < 5000:
            print("held-out seeds must be >= 5000 (training uses lower seeds)", file=sys.stderr)
            return 2
        seen = seen_heldout_seeds(args.weights, args.first_seed, args.n)
        if seen:
            print(f"{args.weights}: trained on seeds {seen[:5]}...; they are not held out", file=sys.stderr)
            return 2
        args.out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        models = load_runtime(args.weights, args.backend, regions=args.segment_regions,
                              skeletal_gate=not args.no_skeletal_gate)
        metrics, rows = evaluate_heldout(models, heldout_cases(args.first_seed, args.n, args.cache), args.n, args.quiet)
        coca_root = args.coca or Path(__file__).resolve().parents[2] / "shared" / "data" / "coca-sample"
        coca_rows = evaluate_coca(models, coca_root) if coca_root.is_dir() else []
        info = models.info
        context = {"weights": str(args.weights), "weights_id": info.weights_id, "backend": info.backend,
                   "precision": info.precision, "segment_regions": info.segment_regions, "command": command,
                   "seconds": round(time.time() - t0, 1)}
        (args.out / "metrics.json").write_text(json.dumps({"context": context, "heldout": metrics, "series": rows,
                                                           "coca": coca_rows}, indent=1, default=str) + "\n")
        with open(args.out / "heldout_series.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            keys = [k for k in rows[0] if not isinstance(rows[0][k], dict)]
            w.writerow(keys)
            for row in rows:
                w.writerow([row[k] for k in keys])
        md = heldout_markdown(metrics, command) + "\n\n" + (coca_markdown(coca_rows) if coca_rows else "")
        (args.out / "report.md").write_text(md + "\n")
        for p in plot_heldout(rows, metrics, args.out, "default"):
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, DOCS_IMAGES / p.name)
        if args.update_config:
            _update_config(args.weights, "heldout_phantoms", {"command": command, **metrics})
            _update_config(args.weights, "coca", {"command": command, "scans": coca_rows})
            _update_config(args.weights, "validation", validation_verdict(metrics), top_level=True)
        print(md)
        return 0
    # ablation
    cases = list(heldout_cases(HELDOUT_FIRST, HELDOUT_N, args.cache))
    args.out.mkdir(parents=True, exist_ok=True)
    res = ablation(args.runs, args.out, cases, args.weights)
    res["command"] = command
    (args.out / "ablation.json").write_text(json.dumps(res, indent=1) + "\n")
    md = ablation_markdown(res, command)
    (args.out / "ablation.md").write_text(md + "\n")
    copy_run_curves(args.runs, DOCS_IMAGES, {"dino": "default_dino_curves.png", "dino-glc0": "ablation_dino_glc0_curves.png",
                                             "unet": "default_unet_curves.png", "classifier": "default_classifier_curves.png",
                                             "linear": "ablation_linear_glc4_curves.png",
                                             "linear-glc0": "ablation_linear_glc0_curves.png"})
    if args.update_config and args.weights is not None:
        _update_config(args.weights, "ablation_table6", res)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
