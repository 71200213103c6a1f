"""Shared, session-cached inputs of the calibration tests: a few small phantom series on disk and a
calibration set built from them for the tiny weights (tests/_tiny_weights.py).

Small on purpose: 64² phantoms of ~10 slices (the tiny models take 32²), so building, quantising and
evaluating take seconds. Seeds are disjoint from the tiny weights' training seeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _tiny_weights import MATRIX, tiny_weights_dir

_CACHE: dict[str, Path] = {}

#: (seed, kind, forced risk category) of the series written for the calibration tests.
SERIES = (
    (9500, "cardiac_gated", "101-400"),
    (9501, "chest", "0"),
    (9502, "cardiac_gated", ">400"),
    (9504, "chest", "11-100"),
)
Z_COVERAGE_MM = 30.0


def phantom_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of small DICOM phantom series (+ truth.json, labels.npz), written once per session."""
    if "phantoms" not in _CACHE:
        from cacstream.training.phantom import PhantomConfig, make_phantom, write_series

        root = tmp_path_factory.mktemp("calib_phantoms")
        for seed, kind, cat in SERIES:
            case = make_phantom(
                seed,
                PhantomConfig(
                    kind=kind,
                    matrix=MATRIX,
                    z_coverage_mm=Z_COVERAGE_MM,  # type: ignore[arg-type]
                    calcium_category=cat,
                    thickness_mm=3.0,
                ),
            )
            write_series(case, root)
        _CACHE["phantoms"] = root
    return _CACHE["phantoms"]


def calibration_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-slice stratified set (seed 7) built from :func:`phantom_folder` for the tiny weights."""
    if "set" not in _CACHE:
        from cacstream.calibration.build import BuildConfig, build_set
        from cacstream.calibration.select import SelectionConfig

        out = tmp_path_factory.mktemp("calib_set") / "set"
        build_set(
            [phantom_folder(tmp_path_factory)],
            out,
            tiny_weights_dir(tmp_path_factory),
            BuildConfig(SelectionConfig(n=24, seed=7), name="test"),
            quiet=True,
        )
        _CACHE["set"] = out
    return _CACHE["set"]
