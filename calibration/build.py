"""``calibrate build``: series folders → population statistics → stratified, seeded choice → a set on disk.

Two passes keep memory flat whatever the population size:

1. every eligible series is decoded once; per slice the kernels give HU min/max and the calcium-candidate
   count (the same statistics the engine computes), numpy the 99th HU percentile and mean, and the FP32
   slice filter its probability (the engine's runtime, so "flagged" means what the engine would flag);
   phantom truth (``truth.json``) adds whether the slice really holds coronary calcium;
2. only the chosen slices are decoded again and preprocessed for each model role with the weights'
   own PreprocessConfig (kernels, C++ on the CPU) — exactly the input the models get when serving.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cacstream.calibration.progress import progress_bar
from cacstream.calibration.select import Candidate, Selection, SelectionConfig, axis_counts, select_slices
from cacstream.calibration.sets import CalibrationSet, SliceRecord, write_set
from cacstream.engine.series.types import Series

log = logging.getLogger(__name__)

#: Fixed HU edges of the population / set histograms of slice max HU (comparable across sets).
HU_MAX_EDGES: tuple[float, ...] = tuple(float(v) for v in np.arange(-1100, 3201, 100))


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``calibrate build`` needs besides the sources and the output folder.

    Attributes:
        selection: how many slices and which strata (see select.SelectionConfig).
        name: the set's name (first half of its id).
        version: the set's version number, chosen by the operator (bump it when a set is rebuilt for the
            same purpose); the id's hash part changes whenever the content does.
        backend: runtime backend for the FP32 filter probabilities ("auto" = the fastest here).
        batch_size: slices per filter call.
        decode_threads: DICOM decoding threads (0 = one per core).
    """

    selection: SelectionConfig = field(default_factory=SelectionConfig)
    name: str = "calib"
    version: int = 1
    backend: str = "auto"
    batch_size: int = 16
    decode_threads: int = 0


@dataclass
class Population:
    """Pass-1 results: every eligible slice with its facts, in deterministic order."""

    series: list[Series]
    cands: list[Candidate]
    where: list[tuple[int, int]]  # (series position, slice index) of each candidate
    stats: list[dict[str, Any]]
    rejected: list[str]
    skipped: int
    sources: list[str]


def find_series(
    sources: list[Path], quiet: bool = False, eligibility: Any = None
) -> tuple[list[Series], list[str], int]:
    """Eligible series under every source (sorted by UID, duplicates dropped), rejection messages, skipped files."""
    from cacstream.engine.config import EligibilityConfig
    from cacstream.engine.series import scan_path

    found: dict[str, Series] = {}
    rejected: list[str] = []
    skipped = 0
    for src in sources:
        if not Path(src).exists():
            raise FileNotFoundError(f"{src}: no such file or folder")
        res = scan_path(Path(src), eligibility or EligibilityConfig(), progress=not quiet)
        for s in res.series:
            found.setdefault(s.uid, s)
        rejected += [r.message for r in res.rejected]
        skipped += len(res.skipped)
    return [found[k] for k in sorted(found)], rejected, skipped


def slice_stats(hu: np.ndarray, config: Any) -> dict[str, np.ndarray]:
    """Per-slice HU statistics: kernels min/max and calcium candidates, numpy p99 and mean."""
    from cacstream.kernels import calcium_counts, hu_minmax

    mm = np.asarray(hu_minmax(hu))
    flat = hu.reshape(len(hu), -1)
    return {
        "hu_min": mm[:, 0],
        "hu_max": mm[:, 1],
        "hu_p99": np.percentile(flat, 99, axis=1),
        "hu_mean": flat.mean(axis=1),
        "calcium_count": np.asarray(calcium_counts(hu, config)),
    }


def gather_population(
    series: list[Series],
    models: Any,
    *,
    quiet: bool = False,
    decode_threads: int = 0,
    need_filter: bool = True,
) -> tuple[list[Candidate], list[tuple[int, int]], list[dict[str, Any]]]:
    """Pass 1: decode each series once and compute every slice's facts."""
    from cacstream.calibration.truth import TruthError, find_truth
    from cacstream.engine.series import read_volume

    cands: list[Candidate] = []
    where: list[tuple[int, int]] = []
    stats: list[dict[str, Any]] = []
    total = sum(len(s.slices) for s in series)
    with progress_bar(quiet) as bar:
        task = bar.add_task("population: decode + statistics + FP32 filter", total=total)
        for si, s in enumerate(series):
            hu = read_volume(s, threads=decode_threads).hu
            st = slice_stats(hu, models.filter_config)
            probs = (models.filter_probabilities(hu, s.geometry.pixel_spacing_mm) if need_filter
                     else [None] * len(hu))
            try:
                truth = find_truth(s, with_labels=False)
            except TruthError as e:
                log.warning("%s", e)
                truth = None
            g = s.geometry
            acq = s.first.acquisition
            for k in range(len(hu)):
                p = None if probs[k] is None else float(probs[k])
                cands.append(
                    Candidate(
                        s.uid,
                        k,
                        float(st["hu_max"][k]),
                        int(st["calcium_count"][k]),
                        acq.manufacturer,
                        acq.model,
                        acq.kvp,
                        float(g.slice_thickness_mm),
                        p,
                    )
                )
                where.append((si, k))
                stats.append(
                    {
                        "hu_min": float(st["hu_min"][k]),
                        "hu_max": float(st["hu_max"][k]),
                        "hu_p99": round(float(st["hu_p99"][k]), 2),
                        "hu_mean": round(float(st["hu_mean"][k]), 2),
                        "calcium_count": int(st["calcium_count"][k]),
                        "filter_probability": p,
                        "truth_calcium": None if truth is None else bool(truth.slice_flags[k]),
                        "manufacturer": acq.manufacturer,
                        "model": acq.model,
                        "kvp": acq.kvp,
                        "thickness_mm": float(g.slice_thickness_mm),
                        "increment_mm": float(g.slice_increment_mm),
                        "pixel_spacing_mm": list(g.pixel_spacing_mm),
                        "rows": g.rows,
                        "columns": g.columns,
                        "z_mm": float(g.z_mm[k]),
                    }
                )
            bar.advance(task, len(hu))
    return cands, where, stats


def preprocess_chosen(
    series: list[Series], chosen: list[tuple[int, int]], configs: dict[str, Any], quiet: bool = False
) -> dict[str, np.ndarray]:
    """Pass 2: decode only the chosen slices and make each role's model input (float32, kernels)."""
    import dataclasses

    from cacstream.engine.pipeline.stages import decode_hu
    from cacstream.kernels import preprocess

    out = {
        role: np.empty((len(chosen), 1, c.input_size, c.input_size), np.float32)
        for role, c in configs.items()
    }
    by_series: dict[int, list[tuple[int, int]]] = {}
    for pos, (si, k) in enumerate(chosen):
        by_series.setdefault(si, []).append((pos, k))
    with progress_bar(quiet) as bar:
        task = bar.add_task("set: decode + preprocess chosen slices", total=len(chosen))
        for si in sorted(by_series):
            items = by_series[si]
            hu = np.stack([decode_hu(series[si].slices[k]) for _, k in items]).astype(np.float32, copy=False)
            pos = [p for p, _ in items]
            for role, cfg in configs.items():
                cfg32 = dataclasses.replace(cfg, output_dtype="float32")
                out[role][pos] = np.asarray(
                    preprocess(hu, 1.0, 0.0, config=cfg32).model_input, dtype=np.float32
                )
            bar.advance(task, len(items))
    return out


def _histogram(values: list[float]) -> dict[str, Any]:
    counts, edges = np.histogram(
        np.clip(values, HU_MAX_EDGES[0], HU_MAX_EDGES[-1]), bins=np.asarray(HU_MAX_EDGES)
    )
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def population_summary(series: list[Series], stats: list[dict[str, Any]], sel: Selection) -> dict[str, Any]:
    return {
        "series": len(series),
        "slices": len(stats),
        "strata": sel.population_strata,
        "allocation": sel.allocation,
        "axes": axis_counts(sel.labels),
        "binning": sel.binning,
        "hu_max_hist": _histogram([s["hu_max"] for s in stats]),
        "truth_calcium": dict(Counter(str(s["truth_calcium"]) for s in stats)),
    }


def build_set(
    sources: list[Path],
    out_dir: Path,
    weights_dir: Path,
    config: BuildConfig = BuildConfig(),
    *,
    quiet: bool = False,
    overwrite: bool = False,
    command: list[str] | None = None,
) -> CalibrationSet:
    """Build a calibration set from the series under ``sources`` for the models of ``weights_dir``."""
    from cacstream.engine.inference.runtime import CalciumModels

    models = CalciumModels.load(
        weights_dir, backend=config.backend, precision="fp32", batch_size=config.batch_size
    )
    try:
        series, rejected, skipped = find_series([Path(s) for s in sources], quiet)
        if not series:
            why = f"; rejected: {rejected[:3]}" if rejected else ""
            raise ValueError(
                f"no eligible CT series under {', '.join(map(str, sources))} ({skipped} files skipped{why})"
            )
        for msg in rejected:
            log.warning("not used: %s", msg)
        cands, where, stats = gather_population(
            series, models, quiet=quiet, decode_threads=config.decode_threads
        )
        sel = select_slices(cands, config.selection, models.filter_threshold)
        configs = {"filter": models.filter_config, "segmenter": models.segmenter_config}
        chosen = [where[i] for i in sel.indices]
        inputs = preprocess_chosen(series, chosen, configs, quiet)
        records = []
        for i, stratum in zip(sel.indices, sel.strata):
            si, k = where[i]
            h = series[si].slices[k]
            records.append(
                SliceRecord(
                    str(h.path),
                    h.sop_instance_uid,
                    series[si].uid,
                    k,
                    h.frame,
                    stratum,
                    sel.labels[i],
                    stats[i],
                )
            )
        population = population_summary(series, stats, sel)
        population["rejected_series"] = rejected
        population["skipped_files"] = skipped
        set_counts = {
            "strata": dict(Counter(sel.strata)),
            "axes": axis_counts(sel.labels, sel.indices),
            "hu_max_hist": _histogram([stats[i]["hu_max"] for i in sel.indices]),
        }
        return write_set(
            out_dir,
            name=config.name,
            version=config.version,
            strategy=config.selection.to_dict(),
            seed=config.selection.seed,
            weights_id=models.spec.weights_id,
            weights_dir=str(Path(weights_dir).resolve()),
            preprocess=configs,
            filter_threshold=models.filter_threshold,
            slices=records,
            inputs=inputs,
            population=population,
            sources=[str(Path(s).resolve()) for s in sources],
            command=command if command is not None else list(sys.argv),
            overwrite=overwrite,
            extra={"set_counts": set_counts, "filter_backend": models.info.backend},
        )
    finally:
        models.close()
