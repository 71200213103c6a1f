"""``calibrate inspect`` (calibration/inspect.py, calibration/activations.py): coverage against the population,
and per-layer activation ranges checked against a model whose every tensor is computed here by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cacstream.calibration.activations import activation_ranges
from cacstream.calibration.inspect import coverage
from cacstream.calibration.sets import SliceRecord, write_set
from cacstream.kernels.config import PreprocessConfig


def _tiny_graph(path: Path) -> Path:
    """y = relu(x * 3 - 1) + 0.5, as three nodes whose outputs numpy can compute."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Mul", ["x", "three"], ["m"], name="mul"),
        helper.make_node("Sub", ["m", "one"], ["s"], name="sub"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "half"], ["y"], name="add"),
    ]
    inits = [
        numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("three", 3.0), ("one", 1.0), ("half", 0.5))
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1, 4, 4])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_activation_ranges_equal_hand_computed_tensors(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (10, 1, 4, 4)).astype(np.float32)
    ranges = {r.name: r for r in activation_ranges(_tiny_graph(tmp_path / "g.onnx"), x, batch_size=3)}
    m = x * 3
    s = m - 1
    r = np.maximum(s, 0)
    y = r + 0.5
    assert [ranges[k].op_type for k in ("m", "s", "r", "y")] == ["Mul", "Sub", "Relu", "Add"]
    assert [ranges[k].order for k in ("m", "s", "r", "y")] == [0, 1, 2, 3]
    for name, ref in (("m", m), ("s", s), ("r", r), ("y", y)):
        assert ranges[name].min == pytest.approx(float(ref.min()), abs=1e-6)
        assert ranges[name].max == pytest.approx(float(ref.max()), abs=1e-6)
        # 160 values < the per-batch sample size: the percentiles are exact
        assert ranges[name].percentiles["p50"] == pytest.approx(float(np.percentile(ref, 50)), abs=1e-6)
        assert ranges[name].absmax == pytest.approx(float(np.abs(ref).max()), abs=1e-6)


def _set_with(tmp_path: Path, strata: list[dict[str, str]], population: dict) -> object:
    n = len(strata)
    pre = {"filter": PreprocessConfig(input_size=8), "segmenter": PreprocessConfig(input_size=8)}
    recs = [
        SliceRecord(
            f"/f{k}",
            f"1.{k}",
            "1",
            k,
            None,
            " / ".join(s.values()),
            s,
            {"hu_max": 100.0 * k, "hu_min": -1000.0, "truth_calcium": k == 0},
        )
        for k, s in enumerate(strata)
    ]
    arr = np.zeros((n, 1, 8, 8), np.float32)
    return write_set(
        tmp_path / "s",
        name="cov",
        version=1,
        strategy={"name": "filter+scanner", "axes": ["filter", "scanner"]},
        seed=0,
        weights_id="w",
        weights_dir="/nowhere",
        preprocess=pre,
        filter_threshold=0.5,
        slices=recs,
        inputs={"filter": arr, "segmenter": arr},
        population=population,
        sources=[],
    )


def test_coverage_names_missing_and_thin_strata(tmp_path: Path) -> None:
    strata = [{"filter": "not_flagged", "scanner": "GE"}] * 6 + [
        {"filter": "near_threshold", "scanner": "GE"}
    ] * 2
    population = {
        "slices": 100,
        "axes": {
            "filter": {"not_flagged": 80, "near_threshold": 15, "flagged": 5},
            "scanner": {"GE": 90, "SIEMENS": 10},
        },
        "strata": {
            "not_flagged / GE": 70,
            "near_threshold / GE": 15,
            "flagged / GE": 5,
            "not_flagged / SIEMENS": 10,
        },
    }
    cov = coverage(_set_with(tmp_path, strata, population), min_per_stratum=5)
    status = {(r.axis, r.label): (r.population, r.in_set, r.status) for r in cov.rows}
    assert status[("filter", "flagged")] == (5, 0, "missing")
    assert status[("filter", "near_threshold")] == (15, 2, "few")
    assert status[("filter", "not_flagged")] == (80, 6, "ok")
    assert status[("scanner", "SIEMENS")] == (10, 0, "missing")
    assert status[("stratum", "not_flagged / SIEMENS")] == (10, 0, "missing")
    assert cov.hu["slice_max_hu_max"] == 700.0 and cov.n_population == 100
    assert any("no slice the FP32 filter flags" in n for n in cov.notes)
    assert any("1 of 8 slices hold coronary calcium" in n for n in cov.notes)
    # a stratum smaller than min_per_stratum in the population is fine when the set has all of it
    small = coverage(
        _set_with(
            tmp_path / "b",
            [{"filter": "flagged", "scanner": "GE"}] * 2,
            {"slices": 2, "axes": {"filter": {"flagged": 2}}, "strata": {"flagged / GE": 2}},
        )
    )
    assert all(r.status == "ok" for r in small.rows)


def test_inspect_writes_everything_next_to_the_set(tmp_path_factory: pytest.TempPathFactory) -> None:
    from _calibration_data import calibration_set
    from cacstream.calibration.inspect import inspect_set
    from cacstream.calibration.sets import load_set
    from cacstream.engine.cli import main

    cs = load_set(calibration_set(tmp_path_factory))
    assert main(["calibrate", "inspect", str(cs.directory), "--quiet"]) == 0
    d = cs.inspect_dir
    for f in (
        "coverage.json",
        "coverage.md",
        "inputs.png",
        "activations_filter.json",
        "activations_filter.png",
        "activations_segmenter.json",
        "activations_segmenter.png",
    ):
        assert (d / f).is_file() and (d / f).stat().st_size > 0, f
    cov = json.loads((d / "coverage.json").read_text())
    assert sum(r["in_set"] for r in cov["rows"] if r["axis"] == "stratum") == len(cs)
    acts = json.loads((d / "activations_segmenter.json").read_text())
    assert acts["set_id"] == cs.set_id and acts["slices"] == len(cs)
    import onnx

    g = onnx.load(str(Path(cs.manifest["weights_dir"]) / "segmenter.onnx"))
    assert {t["name"] for t in acts["tensors"]} >= {n.output[0] for n in g.graph.node if n.op_type == "Conv"}
    # cached: a second run with the same models and set reuses the ranges
    mtime = (d / "activations_segmenter.json").stat().st_mtime_ns
    r = inspect_set(cs, quiet=True)
    assert (d / "activations_segmenter.json").stat().st_mtime_ns == mtime and r["layers"]["segmenter"] == len(
        acts["tensors"]
    )


def test_inspect_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    from cacstream.engine.cli import main

    _set_with(tmp_path, [{"filter": "flagged", "scanner": "GE"}], {"slices": 1})
    assert main(["calibrate", "inspect", str(tmp_path / "s"), "--quiet"]) == 2
    assert main(["calibrate", "inspect", str(tmp_path / "s"), "--quiet", "--no-activations"]) == 0
    assert (tmp_path / "s" / "inspect" / "inputs.png").is_file()
