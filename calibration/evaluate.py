"""``calibrate evaluate``: what INT8 costs in accuracy, measured on whole SERIES the way the engine scores them.

For every validation series, FP32 and INT8 run the engine's own model path
(:class:`~cacstream.engine.inference.runtime.CalciumModels`, ONNX Runtime on the CPU):

    HU ─► slice filter ─► p ≥ threshold? ─► U-Net on the flagged slices only ─► labels ─► Agatston

and the results are compared with each other and, where the series has phantom truth, with the truth:

* slice filter: sensitivity / specificity per precision against the truth's per-slice calcium flags,
  and INT8 against FP32 decisions (agreement; INT8 sensitivity / specificity taking FP32 as reference);
* Dice per artery of the scored calcium mask (label > 0 and HU ≥ 130: what Agatston counts), pooled
  over all series: INT8 vs truth, FP32 vs truth, INT8 vs FP32;
* Agatston (Bland–Altman style, INT8 − FP32 per series): mean difference, SD, 95 % limits of agreement,
  max |difference|, share of series within 1 point or 5 % (whichever is larger);
* risk category: INT8 vs FP32 agreement and the confusion matrix; each vs truth.

Gate (defaults = the issue's acceptance): |INT8 − FP32 slice-filter sensitivity| ≤ 1 percentage point
(against truth flags; without truth, INT8 must keep ≥ 99 % of the FP32-flagged slices) and risk-category
agreement INT8 vs FP32 ≥ 98 %. A report folder gets ``report.md``, ``metrics.json``, ``per_series.csv``
and three PNGs (INT8 vs FP32 Agatston scatter + Bland–Altman, risk-category confusion, Dice bars).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cacstream.engine.domain import ARTERIES, RISK_CATEGORIES

PRECISIONS: tuple[str, ...] = ("fp32", "int8")


@dataclass(frozen=True)
class GateConfig:
    """Pass/fail thresholds. Defaults: issue 6's INT8-on-CPU acceptance."""

    max_sensitivity_diff_points: float = 1.0
    min_risk_agreement_pct: float = 98.0
    min_relative_sensitivity_pct: float = 99.0  # used only when no series has truth flags


@dataclass
class ValidationCase:
    """One series to evaluate: HU, geometry and (when known) truth."""

    name: str
    hu: np.ndarray
    geometry: Any
    truth_flags: np.ndarray | None = None
    truth_labels: np.ndarray | None = None
    truth_agatston: float | None = None
    truth_risk: str | None = None
    source: str = ""


@dataclass
class PrecisionResult:
    probabilities: np.ndarray
    flags: np.ndarray
    labels: np.ndarray
    agatston_total: float
    agatston_per_artery: dict[str, float]
    risk: str
    seconds: float
    excluded_lesions: int = 0  # lesions the claim rule / skeletal check took out (not in ``labels``)
    excluded_by_reason: dict[str, int] = field(default_factory=dict)  # the same, per reason


@dataclass
class SeriesRow:
    name: str
    slices: int
    truth_flagged: int | None
    truth_agatston: float | None
    truth_risk: str | None
    flagged: dict[str, int]
    agatston: dict[str, float]
    risk: dict[str, str]
    seconds: dict[str, float]


@dataclass
class Counts:
    """Accumulated confusion counts and Dice sums over the whole validation set."""

    filt: dict[str, dict[str, int]] = field(default_factory=dict)  # "<prec>_vs_truth" / "int8_vs_fp32"
    dice: dict[str, dict[str, list[int]]] = field(
        default_factory=dict
    )  # comparison -> artery -> [2|A∩B|, |A|+|B|]

    def add_confusion(self, key: str, pred: np.ndarray, ref: np.ndarray) -> None:
        c = self.filt.setdefault(key, {"tp": 0, "fn": 0, "tn": 0, "fp": 0})
        c["tp"] += int(np.sum(pred & ref))
        c["fn"] += int(np.sum(~pred & ref))
        c["tn"] += int(np.sum(~pred & ~ref))
        c["fp"] += int(np.sum(pred & ~ref))

    def add_dice(self, key: str, a: np.ndarray, b: np.ndarray) -> None:
        d = self.dice.setdefault(key, {art: [0, 0] for art in ARTERIES})
        for i, art in enumerate(ARTERIES, start=1):
            ma, mb = a == i, b == i
            d[art][0] += 2 * int(np.count_nonzero(ma & mb))
            d[art][1] += int(np.count_nonzero(ma)) + int(np.count_nonzero(mb))


def run_engine_path(models: Any, hu: np.ndarray, geometry: Any, agatston: Any) -> PrecisionResult:
    """Filter → segment flagged slices (around their flagged patches, when the models tile) → Agatston,
    as the pipeline does (unflagged slices: no calcium). ``labels`` are what was scored: the calcium of
    lesions the model-mode rules excluded (claim rule, skeletal check, bone distance, cardiac levels) is
    taken out of them."""
    from cacstream.engine.scoring.agatston import score_volume_and_labels

    t0 = time.perf_counter()
    if getattr(models, "skeletal_gate", False):  # bone-sized calcium flags nothing (pipeline/skeletal_gate.py)
        p, patches = models.filter_decisions(hu, geometry.pixel_spacing_mm,
                                             exclude=models.skeletal_exclusion(hu, geometry))
    else:
        p, patches = models.filter_decisions(hu, geometry.pixel_spacing_mm)
    p = np.asarray(p, dtype=np.float64)
    flags = p >= models.filter_threshold
    labels = np.zeros(hu.shape, np.uint8)
    if flags.any():
        labels[flags] = models.segment(hu[flags], None if patches is None else patches[flags])
    res, scored = score_volume_and_labels(hu, geometry, labels, agatston)
    if scored is not None:
        labels = scored
    return PrecisionResult(
        p,
        flags,
        labels,
        float(res.agatston_total),
        dict(res.agatston_per_artery),
        res.risk_category,
        time.perf_counter() - t0,
        len(res.excluded_lesions),
        dict(Counter(why for _, why in res.excluded_lesions)),
    )


def scored_mask(labels: np.ndarray, hu: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Artery labels where Agatston counts calcium (label > 0 and HU ≥ threshold), 0 elsewhere."""
    return np.where(hu >= threshold_hu, labels, 0).astype(np.uint8)


# ------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class PhantomSource:
    """Validation phantoms made in memory (no DICOM round trip; the same HU the writer would store)."""

    n: int
    seed: int
    kind: str = "mixed"
    matrix: int = 512
    z_coverage_mm: float | None = None
    balanced_categories: bool = True

    def cases(self) -> Iterator[ValidationCase]:
        from cacstream.training.phantom import PhantomConfig, make_phantom

        for i in range(self.n):
            cat = RISK_CATEGORIES[i % len(RISK_CATEGORIES)] if self.balanced_categories else None
            cfg = PhantomConfig(
                kind=self.kind,
                matrix=self.matrix,
                z_coverage_mm=self.z_coverage_mm,  # type: ignore[arg-type]
                calcium_category=cat,
            )
            case = make_phantom(self.seed + i, cfg)
            t = case.truth
            yield ValidationCase(
                f"phantom {case.kind} seed {case.seed}",
                case.hu,
                case.geometry,
                np.asarray(t["slice_has_coronary_calcium"], dtype=bool),
                case.labels,
                float(t["agatston_total"]),
                str(t["risk_category"]),
                f"make_phantom({case.seed})",
            )


@dataclass(frozen=True)
class FolderSource:
    """Validation series from folders (e.g. written by ``cacstream phantom``); truth from truth.json / labels.npz."""

    path: Path

    def series(self) -> list[Any]:
        from cacstream.calibration.build import find_series

        series, _, _ = find_series([self.path], quiet=True)
        if not series:
            raise ValueError(f"{self.path}: no eligible CT series to evaluate on")
        return series

    def cases(self) -> Iterator[ValidationCase]:
        from cacstream.calibration.truth import find_truth
        from cacstream.engine.series import read_volume

        for s in self.series():
            hu = read_volume(s).hu
            tr = find_truth(s)
            folder = str(s.first.path.parent)
            if tr is None:
                yield ValidationCase(s.first.series_description or s.uid, hu, s.geometry, source=folder)
            else:
                yield ValidationCase(
                    s.first.series_description or s.uid,
                    hu,
                    s.geometry,
                    tr.slice_flags,
                    tr.labels,
                    tr.agatston_total,
                    tr.risk_category,
                    folder,
                )


# ------------------------------------------------------------------------------------- models


def training_phantom_seeds(weights_dir: Path) -> list[tuple[int, int]]:
    """Inclusive phantom seed ranges the weights were trained / validated on, as their config.json records
    them ("phantom seeds A..B" in the training data sources of any stage)."""
    import re

    text = (Path(weights_dir) / "config.json").read_text(encoding="utf-8")
    return sorted({(int(a), int(b)) for a, b in re.findall(r"phantom seeds (\d+)\.\.(\d+)", text)})


def seen_seeds(weights_dir: Path, first: int, n: int) -> list[int]:
    """Evaluation seeds first..first+n-1 that the weights have already seen (must be empty: held-out)."""
    ranges = training_phantom_seeds(weights_dir)
    return [s for s in range(first, first + n) if any(a <= s <= b for a, b in ranges)]


def load_models(
    weights_dir: Path, int8_dir: Path | None, batch_size: int = 16, threads: int = 0,
    skeletal_gate_mm3: float | None = 2000.0,
) -> dict[str, Any]:
    """FP32 and INT8 CalciumModels on ONNX Runtime CPU, with the engine's rules (candidate gate, regions,
    the skeletal gate at ``skeletal_gate_mm3``, None: off). INT8 files come from ``int8_dir`` when given
    (``<stem>.int8.onnx`` there), else from the weights folder through the engine's own loader."""
    from cacstream.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from cacstream.engine.backends.select import BackendChoice
    from cacstream.engine.inference.runtime import CalciumModels
    from cacstream.engine.inference.weights_spec import read_weights_spec

    fp32 = CalciumModels.load(
        weights_dir,
        backend="onnxruntime",
        precision="fp32",
        batch_size=batch_size,
        device="cpu",
        threads=threads or None,
        skeletal_gate_mm3=skeletal_gate_mm3,
    )
    if int8_dir is None or Path(int8_dir).resolve() == Path(weights_dir).resolve():
        int8 = CalciumModels.load(
            weights_dir,
            backend="onnxruntime",
            precision="int8",
            batch_size=batch_size,
            device="cpu",
            threads=threads or None,
            skeletal_gate_mm3=skeletal_gate_mm3,
        )
    else:
        spec = read_weights_spec(weights_dir)
        be = {}
        for role in ("filter", "segmenter"):
            m = spec.model(role)
            path = Path(int8_dir) / m.onnx_name("int8")
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: INT8 graph of the {m.section} not found; quantize it with "
                    f"`cacstream calibrate quantize {weights_dir} --set SET --out {int8_dir}`"
                )
            be[role] = OnnxRuntimeBackend(
                path,
                role,
                device="cpu",
                precision="int8",
                max_batch_size=batch_size,
                threads=threads,
                expected_input_shape=m.input_shape,
            )
        int8 = CalciumModels(
            spec,
            be["filter"],
            be["segmenter"],
            BackendChoice("onnxruntime", "cpu", "int8", f"INT8 graphs from {int8_dir}"),
            regions=fp32.regions,
        )
        # the same rules as the FP32 arm, so the comparison is of the graphs alone
        int8.candidate_rule = fp32.candidate_rule
        int8.skeletal_gate_mm3 = fp32.skeletal_gate_mm3
        int8._set_up_tiles({"batch_size": batch_size, "threads": threads or None, "engine_dir": Path(int8_dir),
                            "build_engines": False, "cuda_graphs": False, "strict": True, "modules": {}})
    return {"fp32": fp32, "int8": int8}


# ------------------------------------------------------------------------------------ metrics


def _rate(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def filter_metrics(c: dict[str, int]) -> dict[str, float | None | int]:
    return {
        **c,
        "sensitivity": _rate(c["tp"], c["tp"] + c["fn"]),
        "specificity": _rate(c["tn"], c["tn"] + c["fp"]),
        "agreement": _rate(c["tp"] + c["tn"], sum(c.values())),
    }


def dice_metrics(d: dict[str, list[int]]) -> dict[str, float | None]:
    """Pooled Dice per artery; None when neither mask has a voxel of that artery anywhere."""
    return {art: (None if den == 0 else num / den) for art, (num, den) in d.items()}


def agatston_agreement(a_fp32: list[float], a_int8: list[float]) -> dict[str, float | None]:
    """Bland–Altman style summary of INT8 − FP32 per series."""
    x = np.asarray(a_fp32, dtype=np.float64)
    y = np.asarray(a_int8, dtype=np.float64)
    if x.size == 0:
        return {"n": 0}
    d = y - x
    sd = float(np.std(d, ddof=1)) if d.size > 1 else 0.0
    within = np.abs(d) <= np.maximum(1.0, 0.05 * np.abs(x))
    return {
        "n": int(d.size),
        "mean_diff": float(d.mean()),
        "sd_diff": sd,
        "loa_low": float(d.mean() - 1.96 * sd),
        "loa_high": float(d.mean() + 1.96 * sd),
        "max_abs_diff": float(np.max(np.abs(d))),
        "within_1pt_or_5pct": float(np.mean(within)),
        "pearson_r": float(np.corrcoef(x, y)[0, 1]) if d.size > 1 and x.std() > 0 and y.std() > 0 else None,
    }


def confusion(ref: list[str], pred: list[str]) -> list[list[int]]:
    idx = {c: i for i, c in enumerate(RISK_CATEGORIES)}
    m = [[0] * len(RISK_CATEGORIES) for _ in RISK_CATEGORIES]
    for r, p in zip(ref, pred):
        m[idx[r]][idx[p]] += 1
    return m


def apply_gate(metrics: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    checks = []
    if (
        metrics["filter"].get("fp32_vs_truth")
        and metrics["filter"]["fp32_vs_truth"]["sensitivity"] is not None
    ):
        s32 = metrics["filter"]["fp32_vs_truth"]["sensitivity"]
        s8 = metrics["filter"]["int8_vs_truth"]["sensitivity"]
        diff = abs(s8 - s32) * 100
        checks.append(
            {
                "name": "slice-filter sensitivity vs truth, absolute difference INT8 − FP32",
                "value": diff,
                "unit": "points",
                "threshold": f"<= {gate.max_sensitivity_diff_points}",
                "passed": diff <= gate.max_sensitivity_diff_points + 1e-12,
                "detail": f"FP32 {100 * s32:.2f} %, INT8 {100 * s8:.2f} %",
            }
        )
    else:
        rel = metrics["filter"]["int8_vs_fp32"]["sensitivity"]
        val = 100.0 if rel is None else 100 * rel
        checks.append(
            {
                "name": "slice-filter sensitivity of INT8 with FP32 decisions as reference (no truth flags)",
                "value": val,
                "unit": "%",
                "threshold": f">= {gate.min_relative_sensitivity_pct}",
                "passed": val >= gate.min_relative_sensitivity_pct - 1e-12,
                "detail": "no validation series carries per-slice truth",
            }
        )
    agree = 100 * metrics["risk"]["int8_vs_fp32_agreement"]
    checks.append(
        {
            "name": "risk-category agreement INT8 vs FP32",
            "value": agree,
            "unit": "%",
            "threshold": f">= {gate.min_risk_agreement_pct}",
            "passed": agree >= gate.min_risk_agreement_pct - 1e-12,
            "detail": f"{metrics['risk']['int8_vs_fp32_same']} of {metrics['series']} series",
        }
    )
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "config": asdict(gate)}


# ------------------------------------------------------------------------------------- driver


def evaluate(
    models: dict[str, Any],
    cases: Iterator[ValidationCase],
    n_cases: int | None,
    *,
    agatston: Any = None,
    gate: GateConfig = GateConfig(),
    quiet: bool = False,
) -> tuple[dict[str, Any], list[SeriesRow]]:
    """Run both precisions over the cases; return (metrics incl. gate, per-series rows)."""
    from cacstream.calibration.progress import progress_bar
    from cacstream.engine.config import AgatstonConfig

    agatston = agatston or AgatstonConfig()
    counts = Counts()
    rows: list[SeriesRow] = []
    with progress_bar(quiet) as bar:
        task = bar.add_task("evaluate FP32 vs INT8 (series)", total=n_cases)
        for case in cases:
            res = {p: run_engine_path(models[p], case.hu, case.geometry, agatston) for p in PRECISIONS}
            masks = {p: scored_mask(r.labels, case.hu, agatston.threshold_hu) for p, r in res.items()}
            counts.add_confusion("int8_vs_fp32", res["int8"].flags, res["fp32"].flags)
            counts.add_dice("int8_vs_fp32", masks["int8"], masks["fp32"])
            if case.truth_flags is not None:
                for p in PRECISIONS:
                    counts.add_confusion(f"{p}_vs_truth", res[p].flags, case.truth_flags)
            if case.truth_labels is not None:
                truth_mask = scored_mask(case.truth_labels, case.hu, agatston.threshold_hu)
                for p in PRECISIONS:
                    counts.add_dice(f"{p}_vs_truth", masks[p], truth_mask)
            rows.append(
                SeriesRow(
                    case.name,
                    int(case.hu.shape[0]),
                    None if case.truth_flags is None else int(case.truth_flags.sum()),
                    case.truth_agatston,
                    case.truth_risk,
                    {p: int(r.flags.sum()) for p, r in res.items()},
                    {p: r.agatston_total for p, r in res.items()},
                    {p: r.risk for p, r in res.items()},
                    {p: round(r.seconds, 3) for p, r in res.items()},
                )
            )
            bar.advance(task)
    if not rows:
        raise ValueError("no validation series")
    fp32 = [r.agatston["fp32"] for r in rows]
    int8 = [r.agatston["int8"] for r in rows]
    same = sum(r.risk["fp32"] == r.risk["int8"] for r in rows)
    with_truth = [r for r in rows if r.truth_risk is not None]
    metrics: dict[str, Any] = {
        "series": len(rows),
        "slices": int(sum(r.slices for r in rows)),
        "filter": {k: filter_metrics(v) for k, v in sorted(counts.filt.items())},
        "dice": {k: dice_metrics(v) for k, v in sorted(counts.dice.items())},
        "agatston": {"int8_vs_fp32": agatston_agreement(fp32, int8)},
        "risk": {
            "int8_vs_fp32_agreement": same / len(rows),
            "int8_vs_fp32_same": same,
            "confusion_fp32_rows_int8_cols": confusion(
                [r.risk["fp32"] for r in rows], [r.risk["int8"] for r in rows]
            ),
            "categories": list(RISK_CATEGORIES),
        },
        "seconds_median": {p: float(np.median([r.seconds[p] for r in rows])) for p in PRECISIONS},
    }
    if with_truth:
        for p in PRECISIONS:
            metrics["agatston"][f"{p}_vs_truth"] = agatston_agreement(
                [r.truth_agatston or 0.0 for r in with_truth], [r.agatston[p] for r in with_truth]
            )
            metrics["risk"][f"{p}_vs_truth_agreement"] = sum(
                r.risk[p] == r.truth_risk for r in with_truth
            ) / len(with_truth)
    metrics["gate"] = apply_gate(metrics, gate)
    return metrics, rows


# ------------------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (a bare | would split the cell)."""
    return text.replace("|", "\\|")


def _num(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def plot_agatston(rows: list[SeriesRow], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([r.agatston["fp32"] for r in rows])
    y = np.array([r.agatston["int8"] for r in rows])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.6))
    hi = max(10.0, float(max(x.max(), y.max())) * 1.1)
    a1.plot([0, hi], [0, hi], color="0.6", linewidth=1, label="identity")
    a1.scatter(x, y, s=22, alpha=0.8, label="series")
    for b in (10, 100, 400):
        a1.axvline(b, color="0.85", linewidth=0.8)
        a1.axhline(b, color="0.85", linewidth=0.8)
    a1.set_xscale("symlog", linthresh=1.0)
    a1.set_yscale("symlog", linthresh=1.0)
    a1.set_xlim(-0.5, hi)
    a1.set_ylim(-0.5, hi)
    a1.set_xlabel("FP32 Agatston")
    a1.set_ylabel("INT8 Agatston")
    a1.set_title("INT8 vs FP32 Agatston per series (risk boundaries in grey)")
    a1.legend(fontsize=8)
    mean = (x + y) / 2
    d = y - x
    a2.scatter(mean, d, s=22, alpha=0.8)
    m, sd = float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else 0.0
    for v, style in ((m, "-"), (m + 1.96 * sd, "--"), (m - 1.96 * sd, "--")):
        a2.axhline(v, color="tab:red", linestyle=style, linewidth=1)
    a2.set_xscale("symlog", linthresh=1.0)
    a2.set_xlabel("mean of FP32 and INT8 Agatston")
    a2.set_ylabel("INT8 − FP32")
    a2.set_title(f"Bland–Altman: mean {m:.2f}, 95 % limits ±{1.96 * sd:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(matrix: list[list[int]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5.4, 4.8))
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                str(m[i, j]),
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
            )
    ax.set_xticks(range(len(RISK_CATEGORIES)), RISK_CATEGORIES)
    ax.set_yticks(range(len(RISK_CATEGORIES)), RISK_CATEGORIES)
    ax.set_xlabel("INT8 risk category")
    ax.set_ylabel("FP32 risk category")
    ax.set_title("Risk categories: FP32 (rows) vs INT8 (columns)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_dice(dice: dict[str, dict[str, float | None]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("fp32_vs_truth", "int8_vs_truth", "int8_vs_fp32") if k in dice]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    w = 0.8 / max(1, len(keys))
    xs = np.arange(len(ARTERIES))
    for j, k in enumerate(keys):
        vals = [dice[k][a] for a in ARTERIES]
        bars = ax.bar(
            xs + (j - (len(keys) - 1) / 2) * w,
            [0 if v is None else v for v in vals],
            w,
            label=k.replace("_", " "),
        )
        for b, v in zip(bars, vals):
            ax.text(
                b.get_x() + b.get_width() / 2,
                (v or 0) + 0.01,
                "n/a" if v is None else f"{v:.2f}",
                ha="center",
                fontsize=7,
            )
    ax.set_xticks(xs, ARTERIES)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("pooled Dice (scored calcium mask)")
    ax.set_title("Dice per artery")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    out: Path, metrics: dict[str, Any], rows: list[SeriesRow], context: dict[str, Any]
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": out / "metrics.json",
        "per_series": out / "per_series.csv",
        "report": out / "report.md",
        "scatter": plot_agatston(rows, out / "agatston_int8_vs_fp32.png"),
        "confusion": plot_confusion(
            metrics["risk"]["confusion_fp32_rows_int8_cols"], out / "risk_confusion.png"
        ),
        "dice": plot_dice(metrics["dice"], out / "dice_per_artery.png"),
    }
    files["metrics"].write_text(
        json.dumps(
            {"context": context, "metrics": metrics, "series": [asdict(r) for r in rows]},
            indent=1,
            default=str,
        )
        + "\n"
    )
    with open(files["per_series"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "series",
                "slices",
                "truth_flagged",
                "fp32_flagged",
                "int8_flagged",
                "truth_agatston",
                "fp32_agatston",
                "int8_agatston",
                "truth_risk",
                "fp32_risk",
                "int8_risk",
            ]
        )
        for r in rows:
            w.writerow(
                [
                    r.name,
                    r.slices,
                    r.truth_flagged,
                    r.flagged["fp32"],
                    r.flagged["int8"],
                    r.truth_agatston,
                    round(r.agatston["fp32"], 3),
                    round(r.agatston["int8"], 3),
                    r.truth_risk,
                    r.risk["fp32"],
                    r.risk["int8"],
                ]
            )
    g = metrics["gate"]
    lines = [
        f"# INT8 vs FP32 evaluation — {'PASS' if g['passed'] else 'FAIL'}",
        "",
        f"- weights: `{context.get('weights_id')}` ({context.get('weights_dir')})",
        f"- INT8 graphs: {context.get('int8_source')}",
        f"- calibration: {context.get('int8_record_summary', 'no int8.json found')}",
        f"- validation: {context.get('validation')} — {metrics['series']} series, {metrics['slices']} slices",
        f"- runtime: ONNX Runtime CPU through the engine's CalciumModels; median seconds per series "
        f"FP32 {metrics['seconds_median']['fp32']:.2f}, INT8 {metrics['seconds_median']['int8']:.2f}",
        f"- command: `{context.get('command')}`",
        "",
        "## Gate",
        "",
        "| check | value | threshold | result |",
        "|---|---:|---|---|",
    ]
    for c in g["checks"]:
        lines.append(
            f"| {_cell(c['name'])} ({_cell(c['detail'])}) | {c['value']:.2f} {c['unit']} | {c['threshold']} | "
            f"{'pass' if c['passed'] else '**FAIL**'} |"
        )
    lines += [
        "",
        "## Slice filter",
        "",
        "| comparison | sensitivity | specificity | agreement | TP | FN | TN | FP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, v in metrics["filter"].items():
        lines.append(
            f"| {k.replace('_', ' ')} | {_pct(v['sensitivity'])} | {_pct(v['specificity'])} | "
            f"{_pct(v['agreement'])} | {v['tp']} | {v['fn']} | {v['tn']} | {v['fp']} |"
        )
    lines += [
        "",
        "## Dice per artery (pooled, scored calcium mask: label > 0 and HU ≥ 130)",
        "",
        "| comparison | " + " | ".join(ARTERIES) + " |",
        "|---|" + "---:|" * len(ARTERIES),
    ]
    for k, v in metrics["dice"].items():
        lines.append(f"| {k.replace('_', ' ')} | " + " | ".join(_num(v[a], 3) for a in ARTERIES) + " |")
    lines += [
        "",
        "## Agatston agreement",
        "",
        "| comparison | n | mean diff | SD | 95 % limits | max abs diff | within 1 pt or 5 % |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for k, v in metrics["agatston"].items():
        if v.get("n"):
            lines.append(
                f"| {k.replace('_', ' ')} | {v['n']} | {_num(v['mean_diff'])} | {_num(v['sd_diff'])} | "
                f"{_num(v['loa_low'])} .. {_num(v['loa_high'])} | {_num(v['max_abs_diff'])} | "
                f"{_pct(v['within_1pt_or_5pct'])} |"
            )
    r = metrics["risk"]
    lines += [
        "",
        "## Risk categories",
        "",
        f"- INT8 vs FP32: {_pct(r['int8_vs_fp32_agreement'])} ({r['int8_vs_fp32_same']} of {metrics['series']})",
    ]
    for p in PRECISIONS:
        if f"{p}_vs_truth_agreement" in r:
            lines.append(f"- {p.upper()} vs truth: {_pct(r[f'{p}_vs_truth_agreement'])}")
    lines += [
        "",
        "![INT8 vs FP32 Agatston](agatston_int8_vs_fp32.png)",
        "",
        "![Risk-category confusion](risk_confusion.png)",
        "",
        "![Dice per artery](dice_per_artery.png)",
        "",
        "Per-series figures: `per_series.csv`; every number: `metrics.json`.",
    ]
    files["report"].write_text("\n".join(lines) + "\n")
    return files
