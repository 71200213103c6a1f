"""``calibrate quantize`` (calibration/quantize.py): Q/DQ INT8 graphs that run in ONNX Runtime CPU, are
TensorRT-shaped (int8, zero point 0, default domain) and record how they were made."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _calibration_data import calibration_set
from _tiny_weights import tiny_weights_dir
from cacstream.calibration.quantize import (
    QuantizeConfig,
    SetReader,
    activation_matmuls,
    quantize_weights,
    tensorrt_qdq_problems,
)
from cacstream.calibration.sets import load_set


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def cset(tmp_path_factory: pytest.TempPathFactory):
    return load_set(calibration_set(tmp_path_factory))


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, weights: Path, cset) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8")
    rec = quantize_weights(weights, cset, out, QuantizeConfig(method="entropy"), quiet=True)
    return out, rec


def _scales(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {n.input[0]: inits[n.input[1]] for n in m.graph.node if n.op_type == "QuantizeLinear"}


def test_graphs_are_qdq_int8_symmetric_and_standard(quantized: tuple[Path, dict]) -> None:
    import onnx

    out, _ = quantized
    for name in ("slice_filter.int8.onnx", "segmenter.int8.onnx"):
        m = onnx.load(str(out / name))
        ops = [n.op_type for n in m.graph.node]
        assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
        assert {n.domain for n in m.graph.node} <= {""}
        assert tensorrt_qdq_problems(out / name) == []
        zps = [i for i in m.graph.initializer if i.name.endswith("zero_point")]
        assert zps and all(
            onnx.numpy_helper.to_array(z).dtype == np.int8 and not onnx.numpy_helper.to_array(z).any()
            for z in zps
        )
        # biases stay float: no int32 DequantizeLinear inputs
        assert not any(i.data_type == onnx.TensorProto.INT32 for i in m.graph.initializer)


def test_record_says_how_the_graphs_were_made(quantized: tuple[Path, dict], cset, weights: Path) -> None:
    import onnxruntime
    from cacstream.engine.file_hash import file_sha256

    out, rec = quantized
    on_disk = json.loads((out / "int8.json").read_text())
    assert on_disk == json.loads(json.dumps(rec))
    assert rec["calibration_set"]["set_id"] == cset.set_id and rec["calibration_set"]["slices_used"] == len(
        cset
    )
    assert rec["method"] == "entropy" and rec["per_channel"] is True
    assert rec["tool"]["onnxruntime"] == onnxruntime.__version__
    for section in ("slice_filter", "segmenter"):
        m = rec["models"][section]
        assert m["source_sha256"] == file_sha256(weights / f"{section}.onnx")
        assert m["output_sha256"] == file_sha256(out / f"{section}.int8.onnx")
    # first and last weighted layer stay FP32 by default; so do the ViT's attention MatMuls (1 block: 2),
    # and up to 4 layers the sensitivity analysis finds dominant (>= 25 % of the full graph's error)
    for section, fixed in (("segmenter", 2), ("slice_filter", 2 + 2)):
        m = rec["models"][section]
        sens = m["sensitivity"]
        dominant = [x["node"] for x in sens["layers"] if x["share"] >= 0.25][:4]
        assert sens["kept_fp32"] == dominant
        assert len(m["kept_fp32_nodes"]) == fixed + len(dominant)
        assert m["kept_fp32_nodes"][fixed:] == dominant
        assert [x["error"] for x in sens["layers"]] == sorted((x["error"] for x in sens["layers"]), reverse=True)
        assert sens["check_slices"] == min(32, len(cset)) and (out / sens["plot"]).is_file()
        assert not set(m["kept_fp32_nodes"][:fixed]) & {x["node"] for x in sens["layers"]}  # not candidates
    assert rec["quantize_activation_matmuls"] is False
    assert rec["sensitivity_rule"] == {"max_fp32_layers": 4, "fp32_share": 0.25, "slices": 32}
    assert rec["models"]["slice_filter"]["check_vs_fp32"]["slices"] == len(cset)


def test_attention_matmuls_stay_fp32(quantized: tuple[Path, dict], weights: Path) -> None:
    """The MatMuls of two activations (q·kᵀ, attention·v) get no Q/DQ in front; weighted MatMuls do."""
    import onnx

    out, _ = quantized
    src = onnx.load(str(weights / "slice_filter.onnx")).graph
    fixed = {i.name for i in src.initializer} | {o for n in src.node if n.op_type == "Constant" for o in n.output}
    attention = [n for n in src.node if n.op_type == "MatMul" and not any(i in fixed for i in n.input)]
    assert len(attention) == 2  # the tiny ViT has one block
    assert [n.name for n in attention] == activation_matmuls(weights / "slice_filter.onnx")
    q = onnx.load(str(out / "slice_filter.int8.onnx")).graph
    dq_out = {o for n in q.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in q.node}
    for n in attention:
        assert not any(i in dq_out for i in by_name[n.name].input), n.name
    weighted = [n for n in q.node if n.op_type == "MatMul" and n.name not in {a.name for a in attention}]
    assert sum(any(i in dq_out for i in n.input) for n in weighted) >= 1


def test_int8_runs_in_the_engine_runtime_close_to_fp32(
    quantized: tuple[Path, dict], weights: Path, cset
) -> None:
    import shutil

    from cacstream.engine.inference.runtime import CalciumModels

    out, _ = quantized
    w = Path(str(out)) / "weights"
    shutil.copytree(weights, w)
    for f in ("slice_filter.int8.onnx", "segmenter.int8.onnx"):
        shutil.copy(out / f, w / f)
    int8 = CalciumModels.load(w, backend="onnxruntime", precision="int8")
    fp32 = CalciumModels.load(w, backend="onnxruntime", precision="fp32")
    assert int8.info.precision == "int8" and int8.filter_backend.facts["qdq_nodes"] > 0
    assert int8.tile_grid is not None and int8.tile_backend.facts["qdq_nodes"] > 0  # the resized Q/DQ U-Net
    x = np.asarray(cset.inputs["filter"])
    a = np.asarray(fp32.infer(x, "filter").logits)
    b = np.asarray(int8.infer(x, "filter").logits)
    # INT8 is an approximation of the same function: close, not identical
    assert 0 < np.abs(a - b).max() < 0.25 * max(1.0, np.abs(a).max())


def test_method_changes_the_ranges(tmp_path: Path, weights: Path, cset) -> None:
    quantize_weights(
        # no sensitivity analysis: both graphs must quantize the same layers for their scales to compare
        weights, cset, tmp_path / "max", QuantizeConfig(method="max", max_fp32_layers=0), roles=("segmenter",),
        quiet=True,
    )
    quantize_weights(
        weights,
        cset,
        tmp_path / "pct",
        QuantizeConfig(method="percentile", percentile=99.0, max_fp32_layers=0),
        roles=("segmenter",),
        quiet=True,
    )
    smax = _scales(tmp_path / "max" / "segmenter.int8.onnx")
    spct = _scales(tmp_path / "pct" / "segmenter.int8.onnx")
    assert smax.keys() == spct.keys()
    # clipping the top 1 % of magnitudes can only shrink a range: every percentile scale <= the max scale
    ratios = np.array([float(spct[k].max() / smax[k].max()) for k in smax])
    assert np.all(ratios <= 1 + 1e-6) and ratios.min() < 0.95
    rec = json.loads((tmp_path / "pct" / "int8.json").read_text())
    assert rec["percentile"] == 99.0 and list(rec["models"]) == ["segmenter"]


def test_mismatched_preprocessing_is_refused(tmp_path: Path, weights: Path, cset) -> None:
    import shutil

    w = tmp_path / "w"
    shutil.copytree(weights, w)
    cfg = json.loads((w / "config.json").read_text())
    cfg["segmenter"]["preprocess"]["normalisation"] = "window"
    (w / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not fit"):
        quantize_weights(w, cset, tmp_path / "q", quiet=True)


def test_set_reader_batches_and_ranges() -> None:
    x = np.arange(10 * 4, dtype=np.float32).reshape(10, 1, 2, 2)
    r = SetReader(x, "in", 4)
    assert len(r) == 3
    got = []
    while (b := r.get_next()) is not None:
        got.append(b["in"])
    assert [len(g) for g in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(got), x)
    r.set_range(1, 2)
    np.testing.assert_array_equal(r.get_next()["in"], x[4:8])
    assert r.get_next() is None


def test_tensorrt_check_catches_asymmetric_graphs(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def graph(zp: np.ndarray, domain: str = "") -> Path:
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq", domain=domain),
        ]
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(zp, "z")],
        )
        p = tmp_path / f"g{len(list(tmp_path.iterdir()))}.onnx"
        onnx.save(helper.make_model(g), str(p))
        return p

    assert tensorrt_qdq_problems(graph(np.array(0, np.int8))) == []
    assert any("non-zero zero point" in p for p in tensorrt_qdq_problems(graph(np.array(3, np.int8))))
    assert any("uint8" in p for p in tensorrt_qdq_problems(graph(np.array(128, np.uint8))))
    assert any(
        "non-standard" in p for p in tensorrt_qdq_problems(graph(np.array(0, np.int8), "com.microsoft"))
    )


def test_graphs_from_another_folder_are_evaluated_with_the_engines_rules(
    quantized: tuple[Path, dict], weights: Path
) -> None:
    """`calibrate evaluate --int8 DIR`: the INT8 arm read from DIR runs under the same rules as the FP32
    arm (segmentation regions with the tile model made from DIR's INT8 graph, candidate gate, skeletal
    gate), so the comparison is of the graphs alone."""
    from cacstream.calibration.evaluate import load_models

    out, _ = quantized
    m = load_models(weights, out, batch_size=4, threads=1)
    fp32, int8 = m["fp32"], m["int8"]
    assert int8.info.precision == "int8" and int8.filter_backend.facts["qdq_nodes"] > 0
    assert fp32.tile_grid is not None and int8.tile_grid == fp32.tile_grid
    assert int8.tile_backend.facts["qdq_nodes"] > 0  # the tile U-Net is DIR's INT8 graph, resized
    assert int8.region_rule == fp32.region_rule
    assert int8.skeletal_gate_mm3 == fp32.skeletal_gate_mm3 == 2000.0
