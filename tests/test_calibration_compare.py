"""``calibrate compare`` (calibration/compare.py): coverage side by side and activation-range ratios."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cacstream.calibration.activations import TensorRange
from cacstream.calibration.compare import activation_differences, coverage_side_by_side


def _tr(name: str, order: int, lo: float, hi: float) -> TensorRange:
    return TensorRange(name, f"n_{name}", "Conv", order, lo, hi, {"p99.9": hi}, max(abs(lo), abs(hi)))


def test_activation_differences_by_hand() -> None:
    a = [_tr("t2", 2, -1.0, 4.0), _tr("t1", 1, 0.0, 1.0), _tr("only_a", 3, 0, 1)]
    b = [_tr("t1", 1, -0.5, 2.0), _tr("t2", 2, -1.0, 1.0), _tr("zero", 4, 0.0, 0.0)]
    d = activation_differences(a, b)
    assert [r["tensor"] for r in d] == ["t1", "t2"]  # graph order, tensors present in both only
    assert d[0]["log2_absmax_ratio"] == pytest.approx(1.0)  # |max| 2 vs 1
    assert d[1]["log2_absmax_ratio"] == pytest.approx(-2.0)  # 1 vs 4


def test_compare_two_built_sets(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from _calibration_data import calibration_set, phantom_folder
    from _tiny_weights import tiny_weights_dir
    from cacstream.calibration.build import BuildConfig, build_set
    from cacstream.calibration.select import SelectionConfig
    from cacstream.calibration.sets import load_set
    from cacstream.engine.cli import main

    a = load_set(calibration_set(tmp_path_factory))
    b = build_set(
        [phantom_folder(tmp_path_factory)],
        tmp_path / "b",
        tiny_weights_dir(tmp_path_factory),
        BuildConfig(SelectionConfig(n=10, strategy="random", seed=1), name="rnd"),
        quiet=True,
    )
    rows = coverage_side_by_side(a, b)
    for axis in ("filter", "scanner", "hu", "stratum"):
        ra = [r for r in rows if r["axis"] == axis]
        assert sum(r["a"] for r in ra) == len(a) and sum(r["b"] for r in ra) == len(b)
        assert all((r["only_in"] == "A") == (r["b"] == 0) for r in ra)
    out = tmp_path / "cmp"
    assert (
        main(["calibrate", "compare", str(a.directory), str(b.directory), "--out", str(out), "--quiet"]) == 0
    )
    for f in (
        "compare.md",
        "compare.json",
        "inputs.png",
        "activations_filter.png",
        "activations_segmenter.png",
        "activation_ratio.png",
    ):
        assert (out / f).is_file(), f
    s = json.loads((out / "compare.json").read_text())
    shared = {(x.series_instance_uid, x.sop_instance_uid) for x in a.slices} & {
        (x.series_instance_uid, x.sop_instance_uid) for x in b.slices
    }
    assert s["shared_slices"] == len(shared) and not s["same_slices"]
    # the ratios come from the two cached range files, one per set
    ra = {
        t["name"]: t for t in json.loads((a.inspect_dir / "activations_filter.json").read_text())["tensors"]
    }
    rb = {
        t["name"]: t for t in json.loads((b.inspect_dir / "activations_filter.json").read_text())["tensors"]
    }
    for r in s["activations"]["filter"]:
        want = np.log2(rb[r["tensor"]]["absmax"] / ra[r["tensor"]]["absmax"])
        assert r["log2_absmax_ratio"] == pytest.approx(want)
