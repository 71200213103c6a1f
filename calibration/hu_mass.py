"""``calibrate mass``: the scanner's calcium-mass factor from a scan of a calibration phantom.

Agatston mass (engine/scoring/agatston.py) is mean HU × volume (cm³) × c, with c in mg/(HU·cm³): the
mass of calcium hydroxyapatite per cm³ and per HU on THIS scanner and protocol (~0.7–0.8 at 120 kV).
It is measured by scanning a phantom with inserts of known density (QRM-style: cylinders of e.g.
200 / 400 / 800 mg HA/cm³ in water) and fitting

    density_i  =  c × meanHU_i          (least squares through the origin, the engine's formula)

How the inserts are measured, without knowing where they are:

1. per slice, pixels ≥ ``detect_hu`` (default 100 HU: above water and plastic, below any insert) form
   2D connected components; components of at least ``min_area_mm2`` are insert cross-sections;
2. cross-sections in different slices at the same place (centroids within one insert radius) are one
   insert; an insert must appear in ``min_slices`` slices;
3. only the insert's middle is used: slices where its area is ≥ 80 % of its largest (no partial volume
   at the ends along z), and pixels within half its radius of its centroid (no blur at the rim);
4. the mean HU of those core pixels is the insert's HU; inserts are matched to the given densities by
   rank (the densest insert has the highest HU). When there are more inserts than densities (several
   diameters per density, as in QRM), the largest insert of each HU cluster is used.

The inserts must be large against the scanner's resolution (diameter ≥ ~4× the in-plane blur FWHM and
length ≥ ~2× the slice thickness), or partial volume lowers their core HU and inflates c: on the project's
QA phantom (1 / 3 / 5 mm inserts) scanned realistically, the 5 mm inserts read ~10–25 % low. The
per-insert HU is in the output so an operator can see it.

Water (median HU of the pixels within ±100 HU of 0 inside the phantom) is reported as a check:
a water value far from 0 HU means the scanner's HU calibration is off and the factor is suspect.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


class MassCalibrationError(ValueError):
    """The scan does not allow a fit (message says what was found)."""


@dataclass(frozen=True)
class Insert:
    centroid_rc: tuple[float, float]  # pixel row, column
    slices: tuple[int, ...]  # core slices used
    radius_mm: float
    mean_hu: float
    core_pixels: int
    density_mg_cm3: float | None = None


@dataclass(frozen=True)
class MassCalibration:
    factor_mg_per_hu_cm3: float
    inserts: tuple[Insert, ...]
    water_hu: float
    r_squared: float
    max_relative_residual: float
    densities_mg_cm3: tuple[float, ...]
    series_uid: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inserts"] = [asdict(i) for i in self.inserts]
        return d


def _components(mask2d: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    return ndimage.label(mask2d, structure=np.ones((3, 3), bool))


def find_inserts(
    hu: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    *,
    detect_hu: float = 100.0,
    min_area_mm2: float = 3.0,
    min_slices: int = 2,
) -> list[Insert]:
    """Inserts of a phantom volume (slices, rows, cols) HU, with their core mean HU."""
    px_area = float(pixel_spacing_mm[0] * pixel_spacing_mm[1])
    px = math.sqrt(px_area)
    tracks: list[dict[str, Any]] = []  # each: centroid (r, c), per-slice {k: (area_px, pixels)}
    for k in range(hu.shape[0]):
        lab, n = _components(hu[k] >= detect_hu)
        if n == 0:
            continue
        counts = np.bincount(lab.ravel(), minlength=n + 1)
        for j in range(1, n + 1):
            if counts[j] * px_area < min_area_mm2:
                continue
            rr, cc = np.nonzero(lab == j)
            cen = (float(rr.mean()), float(cc.mean()))
            r_px = math.sqrt(counts[j] / math.pi)
            for t in tracks:
                if math.hypot(t["c"][0] - cen[0], t["c"][1] - cen[1]) <= max(r_px, t["r"]):
                    t["s"][k] = (int(counts[j]), rr, cc)
                    t["r"] = max(t["r"], r_px)
                    break
            else:
                tracks.append({"c": cen, "r": r_px, "s": {k: (int(counts[j]), rr, cc)}})
    inserts = []
    for t in tracks:
        if len(t["s"]) < min_slices:
            continue
        peak = max(a for a, _, _ in t["s"].values())
        core_slices = sorted(k for k, (a, _, _) in t["s"].items() if a >= 0.8 * peak)
        r_px = math.sqrt(peak / math.pi)
        vals = []
        cen_r = np.mean([t["s"][k][1].mean() for k in core_slices])
        cen_c = np.mean([t["s"][k][2].mean() for k in core_slices])
        rows, cols = np.ogrid[: hu.shape[1], : hu.shape[2]]
        core = (rows - cen_r) ** 2 + (cols - cen_c) ** 2 <= max(0.75, r_px / 2) ** 2
        for k in core_slices:
            vals.append(hu[k][core])
        v = np.concatenate(vals)
        inserts.append(
            Insert((float(cen_r), float(cen_c)), tuple(core_slices), r_px * px, float(v.mean()), int(v.size))
        )
    return inserts


def water_hu(hu: np.ndarray) -> float:
    v = hu[(hu > -100) & (hu < 100)]
    if v.size == 0:
        raise MassCalibrationError("no water-like pixels (−100..100 HU): is this a water phantom scan?")
    return float(np.median(v))


def fit_factor(mean_hu: list[float], densities: list[float]) -> tuple[float, float, float]:
    """c = Σ ρ·HU / Σ HU² (through the origin), R² (about the mean), max |residual| / ρ."""
    h = np.asarray(mean_hu, dtype=np.float64)
    rho = np.asarray(densities, dtype=np.float64)
    if np.any(h <= 0):
        raise MassCalibrationError(f"insert mean HU must be > 0 for a mass factor, got {h.tolist()}")
    c = float(np.sum(rho * h) / np.sum(h * h))
    pred = c * h
    ss_res = float(np.sum((rho - pred) ** 2))
    ss_tot = float(np.sum((rho - rho.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return c, r2, float(np.max(np.abs(rho - pred) / rho))


def match_densities(inserts: list[Insert], densities: list[float]) -> list[Insert]:
    """One insert per density by rank; with more inserts, cluster by HU and keep each cluster's largest."""
    if len(inserts) < len(densities):
        raise MassCalibrationError(
            f"found {len(inserts)} insert(s) but {len(densities)} densities were given "
            f"(mean HU {[round(i.mean_hu) for i in inserts]}); lower --min-area or check the scan"
        )
    ins = sorted(inserts, key=lambda i: i.mean_hu)
    if len(ins) > len(densities):
        # split at the len(densities) - 1 largest gaps in mean HU
        gaps = np.diff([i.mean_hu for i in ins])
        cuts = sorted(np.argsort(gaps)[::-1][: len(densities) - 1] + 1)
        groups = np.split(np.arange(len(ins)), cuts)
        ins = [max((ins[j] for j in g), key=lambda i: (i.radius_mm, i.core_pixels)) for g in groups]
    dens = sorted(densities)
    return [
        Insert(i.centroid_rc, i.slices, i.radius_mm, i.mean_hu, i.core_pixels, float(d))
        for i, d in zip(ins, dens)
    ]


def calibrate_volume(
    hu: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    densities: list[float],
    *,
    detect_hu: float = 100.0,
    min_area_mm2: float = 3.0,
    series_uid: str = "",
    source: str = "",
) -> MassCalibration:
    if len(densities) < 1 or any(d <= 0 for d in densities):
        raise MassCalibrationError(f"densities must be positive mg/cm³ values, got {densities}")
    found = find_inserts(hu, pixel_spacing_mm, detect_hu=detect_hu, min_area_mm2=min_area_mm2)
    chosen = match_densities(found, list(densities))
    c, r2, worst = fit_factor([i.mean_hu for i in chosen], [float(i.density_mg_cm3 or 0) for i in chosen])
    return MassCalibration(
        c, tuple(chosen), water_hu(hu), r2, worst, tuple(sorted(densities)), series_uid, source
    )


def calibrate_series_folder(path: Path, densities: list[float], **kw: Any) -> MassCalibration:
    """Fit the factor from the (single, or largest) eligible series under ``path``."""
    from cacstream.calibration.build import find_series
    from cacstream.engine.config import EligibilityConfig
    from cacstream.engine.series import read_volume

    # a phantom scan covers a few centimetres, not a heart: no minimum slice count
    series, rejected, _ = find_series([Path(path)], quiet=True, eligibility=EligibilityConfig(min_slices=1))
    if not series:
        raise MassCalibrationError(
            f"{path}: no eligible CT series" + (f" ({rejected[0]})" if rejected else "")
        )
    s = max(series, key=lambda x: len(x.slices))
    vol = read_volume(s)
    return calibrate_volume(
        vol.hu,
        s.geometry.pixel_spacing_mm,
        densities,
        series_uid=s.uid,
        source=str(s.first.path.parent),
        **kw,
    )


def save(cal: MassCalibration, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cal.to_dict(), indent=1) + "\n")
    return path
