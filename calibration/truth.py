"""Known truth of a series on disk (phantoms written by ``cacstream phantom``): per-slice calcium flags,
per-artery Agatston, risk category and, when ``labels.npz`` is there, the label volume.

The phantom writer puts ``truth.json`` (+ ``labels.npz``) in the series folder. Truth slice k is the
k-th slice along the normal (its ``geometry.z_mm[k]``); the engine orders a series the same way, and
this module checks the z positions match before trusting the mapping, so a truth file can never be
applied to the wrong slices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cacstream.engine.series.types import Series


class TruthError(ValueError):
    """A truth file that does not belong to / fit the series (message names the file)."""


@dataclass(frozen=True)
class SeriesTruth:
    truth: dict[str, Any]
    slice_flags: np.ndarray  # (N,) bool: slice holds a scored coronary lesion
    labels: np.ndarray | None  # (N, H, W) uint8 artery labels, when labels.npz is present
    path: Path

    @property
    def agatston_total(self) -> float:
        return float(self.truth["agatston_total"])

    @property
    def risk_category(self) -> str:
        return str(self.truth["risk_category"])


def _candidates(series: Series) -> list[Path]:
    folders = sorted({h.path.parent for h in series.slices})
    return [f / "truth.json" for f in folders if (f / "truth.json").is_file()]


def find_truth(series: Series, *, with_labels: bool = True) -> SeriesTruth | None:
    """The truth of ``series`` if its folder holds one for this SeriesInstanceUID, else None.

    Raises TruthError when a truth file names this series but does not fit it (slice count / z)."""
    for path in _candidates(series):
        try:
            truth = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TruthError(f"{path}: unreadable truth file ({e})") from None
        if truth.get("series_instance_uid") != series.uid:
            continue
        flags = np.asarray(truth.get("slice_has_coronary_calcium", []), dtype=bool)
        n = len(series.slices)
        if flags.shape != (n,):
            raise TruthError(f"{path}: {flags.size} per-slice flags for a series of {n} slices")
        z_truth = np.asarray(truth.get("geometry", {}).get("z_mm", []), dtype=np.float64)
        z = np.asarray(series.geometry.z_mm, dtype=np.float64)
        if z_truth.shape == z.shape and not np.allclose(z_truth, z, atol=0.01):
            if np.allclose(z_truth[::-1], z, atol=0.01):
                raise TruthError(f"{path}: truth slices run opposite to the series order; cannot map them")
            raise TruthError(f"{path}: truth z positions do not match the series' slices")
        labels = None
        lab_path = path.with_name("labels.npz")
        if with_labels and lab_path.is_file():
            with np.load(lab_path) as z_file:
                labels = np.asarray(z_file["labels"], dtype=np.uint8)
            if labels.shape != (n, series.geometry.rows, series.geometry.columns):
                raise TruthError(
                    f"{lab_path}: labels of shape {labels.shape} for a series of "
                    f"{(n, series.geometry.rows, series.geometry.columns)}"
                )
        return SeriesTruth(truth, flags, labels, path)
    return None
