"""Realism check: a real COCA gated slice next to a phantom slice, histograms and statistics.

    python -m cacstream.training.phantom.figure docs/images/phantom_vs_coca.png [--stats-json S.json]

Reads the COCA samples (``$CACSTREAM_DATA/coca-sample`` or ``../shared/data/coca-sample``, or
``--coca-root``), never copies them. The statistics it prints are the ones quoted in
docs/phantom.md: noise σ in fat and soft tissue (local 9×9 standard deviation in homogeneous
regions), lung and bone HU, and calcium lesions (COCA ROI Area/Max of the ROIs ≥ 1 mm², i.e. those
that can be Agatston lesions, vs the phantoms' scored coronary lesions).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PHANTOM_SEEDS = (1, 2, 3, 4, 5, 6)
FIGURE_SEED = 2


def default_coca_root() -> Path:
    env = os.environ.get("CACSTREAM_DATA")
    return (Path(env) if env else REPO_ROOT.parent / "shared" / "data") / "coca-sample"


def homogeneous_stats(vol: np.ndarray, lo: float, hi: float, step: int = 3, win: int = 9) -> tuple[float, float]:
    """(median local mean, median local σ) over 9×9 windows lying entirely within [lo, hi] HU.

    A robust noise estimate that needs no hand-drawn ROI: windows inside one tissue only.
    """
    means, sds = [], []
    for s in vol[::step].astype(np.float64):
        inside = ((s >= lo) & (s <= hi)).astype(np.float64)
        frac = ndi.uniform_filter(inside, win)
        m = ndi.uniform_filter(s, win)
        m2 = ndi.uniform_filter(s * s, win)
        sel = frac > 0.999
        if sel.sum() > 50:
            means.append(np.median(m[sel]))
            sds.append(np.median(np.sqrt(np.maximum(m2 - m * m, 0.0))[sel]))
    if not means:
        return float("nan"), float("nan")
    return float(np.median(means)), float(np.median(sds))


def volume_stats(vol: np.ndarray) -> dict[str, float]:
    """Tissue statistics of one CT volume (HU)."""
    fat = homogeneous_stats(vol, -180.0, -40.0)
    soft = homogeneous_stats(vol, 0.0, 90.0)
    lung = homogeneous_stats(vol, -1000.0, -600.0)
    bone = vol[vol >= 150.0]
    return {
        "fat_mean_hu": fat[0], "fat_noise_sd_hu": fat[1],
        "soft_mean_hu": soft[0], "soft_noise_sd_hu": soft[1],
        "lung_mean_hu": lung[0],
        "bone_median_hu": float(np.median(bone)) if bone.size else float("nan"),
        "bone_p99_9_hu": float(np.percentile(vol, 99.9)),
    }


def _summary(values: list[dict[str, float]]) -> dict[str, list[float]]:
    keys = values[0].keys()
    return {k: [float(np.nanmin([v[k] for v in values])), float(np.nanmax([v[k] for v in values]))] for k in keys}


def lesion_summary(areas: list[float], peaks: list[float]) -> dict[str, float]:
    a, p = np.asarray(areas), np.asarray(peaks)
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size), "area_median_mm2": float(np.median(a)), "area_p10_mm2": float(np.percentile(a, 10)),
        "area_p90_mm2": float(np.percentile(a, 90)), "area_max_mm2": float(a.max()),
        "peak_median_hu": float(np.median(p)), "peak_p10_hu": float(np.percentile(p, 10)),
        "peak_p90_hu": float(np.percentile(p, 90)), "peak_max_hu": float(p.max()),
        "share_peak_below_200": float(np.mean(p < 200)), "share_area_below_5mm2": float(np.mean(a < 5)),
    }


def load_coca(root: Path):
    """The three gated COCA samples (CocaCase list)."""
    from cacstream.training.data.coca import list_gated_patients, load_gated_patient

    if not root.is_dir():
        raise FileNotFoundError(f"COCA samples not found at {root} (set CACSTREAM_DATA or pass --coca-root)")
    return [load_gated_patient(root, pid) for pid in list_gated_patients(root)]


def make_phantoms(seeds: tuple[int, ...]):
    """Gated phantoms with a visible burden (101-400) for the comparison."""
    from cacstream.training.phantom.config import PhantomConfig
    from cacstream.training.phantom.generate import make_phantom

    return [make_phantom(s, PhantomConfig(kind="cardiac_gated", calcium_category="101-400")) for s in seeds]


def realism_stats(coca_cases, phantoms) -> dict:
    """Real vs phantom: tissue HU and noise, and calcium lesion size / peak distributions."""
    # like for like: phantom lesions are scored lesions (≥ 1 mm²), so compare ROIs of ≥ 1 mm²
    real_lesions = [r for c in coca_cases for r in c.rois if r.n_pixels > 0 and r.area_cm2 * 100.0 >= 1.0]
    ph_lesions = [les for p in phantoms for les in p.truth["lesions"] if les["artery"]]
    return {
        "real_volumes": _summary([volume_stats(c.volume.hu) for c in coca_cases]),
        "phantom_volumes": _summary([volume_stats(p.hu) for p in phantoms]),
        "real_lesions": lesion_summary([r.area_cm2 * 100.0 for r in real_lesions], [r.max_hu for r in real_lesions]),
        "phantom_lesions": lesion_summary([les["area_mm2"] for les in ph_lesions], [les["peak_hu"] for les in ph_lesions]),
        "phantom_seeds": [p.seed for p in phantoms],
        "real_patients": [c.patient_id for c in coca_cases],
    }


def _best_slice(labels: np.ndarray) -> int:
    counts = (labels > 0).reshape(labels.shape[0], -1).sum(1)
    return int(np.argmax(counts))


def _crop(img: np.ndarray, labels2d: np.ndarray, ps: float, half_mm: float = 25.0) -> np.ndarray:
    rr, cc = np.nonzero(labels2d)
    r, c = int(np.median(rr)), int(np.median(cc))
    h = int(half_mm / ps)
    r = int(np.clip(r, h, img.shape[0] - h))
    c = int(np.clip(c, h, img.shape[1] - h))
    return img[r - h:r + h, c - h:c + h]


def write_figure(out_png: Path, coca_root: Path | None = None, seeds: tuple[int, ...] = DEFAULT_PHANTOM_SEEDS,
                 stats_json: Path | None = None) -> dict:
    """Draw the comparison PNG (and optionally the statistics JSON); returns the statistics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coca = load_coca(coca_root or default_coca_root())
    phantoms = make_phantoms(seeds)
    stats = realism_stats(coca, phantoms)
    real = max(coca, key=lambda c: (c.labels > 0).sum())
    ph = phantoms[list(seeds).index(FIGURE_SEED)] if FIGURE_SEED in seeds else phantoms[0]
    ri = _best_slice(real.labels)
    # phantom: the most calcified slice within 15 mm of the LM bifurcation (the real slice's level)
    flagged = np.flatnonzero(ph.labels.reshape(ph.labels.shape[0], -1).any(1))
    lm_z = ph.truth["landmarks"]["lm_bifurcation_mm"][2]
    z = np.asarray(ph.geometry.z_mm)
    near = flagged[np.abs(z[flagged] - lm_z) <= 15.0] if len(flagged) else flagged
    if len(near):
        pi = int(near[np.argmax([(ph.labels[k] > 0).sum() for k in near])])
    elif len(flagged):
        pi = int(flagged[np.argmin(np.abs(z[flagged] - lm_z))])
    else:
        pi = _best_slice(ph.labels)
    rimg, pimg = real.volume.hu[ri], ph.hu[pi]
    rps, pps = real.volume.geometry.pixel_spacing_mm[0], ph.geometry.pixel_spacing_mm[0]

    fig, ax = plt.subplots(2, 4, figsize=(22, 11.5))
    cardiac = dict(cmap="gray", vmin=200 - 400, vmax=200 + 400)
    lungw = dict(cmap="gray", vmin=-600 - 750, vmax=-600 + 750)
    ax[0, 0].imshow(rimg, **cardiac)
    ax[0, 0].set_title(f"COCA gated patient {real.patient_id}, slice {ri} (W800/L200)\n"
                       f"{real.volume.series.first.acquisition.model}, {rps:.3f} mm, "
                       f"{real.volume.geometry.slice_thickness_mm:g} mm")
    ax[0, 1].imshow(pimg, **cardiac)
    acq = ph.acquisition
    ax[0, 1].set_title(f"phantom cardiac_gated seed {ph.seed}, slice {pi} (W800/L200)\n"
                       f"{acq.manufacturer} {acq.model} {acq.convolution_kernel}, {pps:.3f} mm, "
                       f"{ph.geometry.slice_thickness_mm:g} mm")
    ax[0, 2].imshow(_crop(rimg, real.labels[ri], rps), **cardiac)
    ax[0, 2].set_title("COCA: 50 mm around the annotated calcium")
    ax[0, 3].imshow(_crop(pimg, ph.labels[pi], pps), **cardiac)
    ax[0, 3].set_title("phantom: 50 mm around the coronary calcium")
    ax[1, 0].imshow(rimg, **lungw)
    ax[1, 0].set_title("COCA (lung window W1500/L-600)")
    ax[1, 1].imshow(pimg, **lungw)
    ax[1, 1].set_title("phantom (lung window W1500/L-600)")
    for a in list(ax[0]) + list(ax[1, :2]):
        a.axis("off")
    bins = np.arange(-1100, 1600, 10)
    for vols, name, color in (([c.volume.hu for c in coca], "COCA gated (3 patients)", "tab:blue"),
                              ([p.hu for p in phantoms], f"phantoms ({len(phantoms)} gated)", "tab:orange")):
        h = sum(np.histogram(v, bins=bins)[0] for v in vols).astype(np.float64)
        ax[1, 2].plot(bins[:-1] + 5, h / h.sum(), label=name, color=color)
    ax[1, 2].set_yscale("log")
    ax[1, 2].set_xlabel("HU")
    ax[1, 2].set_ylabel("fraction of voxels")
    ax[1, 2].set_title("HU histograms (whole volumes)")
    ax[1, 2].legend()
    rv, pv, rl, pl = stats["real_volumes"], stats["phantom_volumes"], stats["real_lesions"], stats["phantom_lesions"]
    rows = [
        ("noise σ fat (HU)", rv["fat_noise_sd_hu"], pv["fat_noise_sd_hu"]),
        ("noise σ soft tissue (HU)", rv["soft_noise_sd_hu"], pv["soft_noise_sd_hu"]),
        ("fat mean (HU)", rv["fat_mean_hu"], pv["fat_mean_hu"]),
        ("soft tissue mean (HU)", rv["soft_mean_hu"], pv["soft_mean_hu"]),
        ("lung mean (HU)", rv["lung_mean_hu"], pv["lung_mean_hu"]),
        ("bone median ≥150 HU", rv["bone_median_hu"], pv["bone_median_hu"]),
        ("99.9th percentile (HU)", rv["bone_p99_9_hu"], pv["bone_p99_9_hu"]),
    ]
    text = ["                          COCA            phantom"]
    for name, r, p in rows:
        text.append(f"{name:24s} {r[0]:6.0f}–{r[1]:<6.0f}  {p[0]:6.0f}–{p[1]:<6.0f}")
    text.append("")
    text.append("lesions ≥ 1 mm²            COCA ROIs  phantom")
    for key, label in (("n", "count"), ("area_median_mm2", "area median mm²"), ("area_p90_mm2", "area p90 mm²"),
                       ("area_max_mm2", "area max mm²"), ("peak_median_hu", "peak median HU"),
                       ("peak_p90_hu", "peak p90 HU"), ("peak_max_hu", "peak max HU"),
                       ("share_peak_below_200", "share peak < 200")):
        text.append(f"{label:24s} {rl.get(key, float('nan')):9.2f}  {pl.get(key, float('nan')):9.2f}")
    ax[1, 3].text(0.0, 1.0, "\n".join(text), family="monospace", fontsize=10, va="top")
    ax[1, 3].axis("off")
    ax[1, 3].set_title("statistics (ranges over volumes)")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=70)
    plt.close(fig)
    if stats_json is not None:
        Path(stats_json).write_text(json.dumps(stats, indent=1))
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Real COCA slice vs phantom slice, histograms and statistics (PNG).")
    p.add_argument("out", type=Path, help="PNG to write (docs/images/phantom_vs_coca.png in the repository)")
    p.add_argument("--coca-root", type=Path, default=None, help="folder holding Gated_release_final/ (default: "
                   "$CACSTREAM_DATA/coca-sample or ../shared/data/coca-sample)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_PHANTOM_SEEDS),
                   help="phantom seeds for the statistics (the figure shows seed 2 when listed)")
    p.add_argument("--stats-json", type=Path, default=None, help="also write the statistics as JSON")
    args = p.parse_args(argv)
    try:
        stats = write_figure(args.out, args.coca_root, tuple(args.seeds), args.stats_json)
    except FileNotFoundError as exc:
        print(f"error: {exc}")
        return 1
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
