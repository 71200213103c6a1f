"""Per-layer INT8 sensitivity (calibration/sensitivity.py and its use in ``calibrate quantize``): the
measure on hand-computed outputs, the ranking on a stand-in quantizer with known errors, and the whole
analysis on a graph built so that one layer's input is heavy-tailed, as a CT slice's calcium is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cacstream.calibration.quantize import QuantizeConfig, quantize_model, run_onnx
from cacstream.calibration.sensitivity import (
    LayerSensitivity,
    choose_fp32,
    output_error,
    plot_sensitivity,
    rank_layers,
)


def test_filter_error_and_flips_by_hand() -> None:
    ref = np.array([[1.0, -1.0], [0.5, 2.0]])
    out = np.array([[-1.0, -1.0], [0.5, 3.0]])
    # threshold 0.5 -> logit 0; |diff| = 2, 0, 0, 1 -> mean 0.75; only the first decision flips
    assert output_error(ref, out, "filter", 0.5) == (0.75, 1, 4)
    # threshold 0.8 -> logit 1.386: ref flags only 2.0, out only 3.0 -> no flip
    assert output_error(ref, out, "filter", 0.8)[1:] == (0, 4)


def test_segmenter_flips_count_foreground_pixels_only() -> None:
    ref = np.zeros((1, 3, 2, 3))
    ref[0, 0] = 1.0  # background everywhere ...
    ref[0, 1, 0, 0] = 2.0  # ... except pixel (0, 0): class 1
    out = ref.copy()
    out[0, 2, 0, 0] = 3.0  # pixel (0, 0) becomes class 2: a flip
    out[0, 2, 1, 1] = 1.5  # pixel (1, 1) becomes class 2: a flip (foreground in out)
    err, flips, n = output_error(ref, out, "segmenter", None)
    assert (flips, n) == (2, 2)  # the 4 pixels background in both are not counted
    assert err == pytest.approx((3.0 + 1.5) / 18)
    with pytest.raises(ValueError, match="shapes differ"):
        output_error(ref, out[:, :2], "segmenter", None)


def test_ranking_with_a_stand_in_quantizer() -> None:
    """quantize_only / run stand-ins whose errors are known: layer b alone moves every output by 1.0,
    a by 0.1, c by nothing; all three together by 1.1."""
    ref = np.zeros((4, 3))
    shift = {"a": 0.1, "b": 1.0, "c": 0.0}
    made: list[list[str] | None] = []

    def quantize_only(nodes: list[str] | None) -> Path:
        made.append(nodes)
        return Path("+".join(nodes) if nodes else "ALL")

    def run(path: Path) -> np.ndarray:
        names = list(shift) if str(path) == "ALL" else str(path).split("+")
        return ref + sum(shift[n] for n in names)

    ticks: list[int] = []
    ranked, full = rank_layers([("a", "Conv"), ("b", "MatMul"), ("c", "Gemm")], quantize_only, run, ref,
                               "segmenter", None, lambda: ticks.append(1))
    assert full == pytest.approx(1.1)
    assert [r.node for r in ranked] == ["b", "a", "c"]
    assert [r.share for r in ranked] == pytest.approx([1.0 / 1.1, 0.1 / 1.1, 0.0])
    assert ranked[0].op_type == "MatMul" and len(ticks) == 3
    assert made == [None, ["a"], ["b"], ["c"]]  # the full graph first, then one layer at a time
    assert choose_fp32(ranked, 0.25, 2) == ["b"]
    assert choose_fp32(ranked, 0.05, 2) == ["b", "a"]
    assert choose_fp32(ranked, 0.05, 1) == ["b"]
    assert choose_fp32(ranked, 0.05, 0) == []


def test_plot_marks_kept_layers(tmp_path: Path) -> None:
    ranked = [LayerSensitivity("b", "MatMul", 1.0, 0.9, 3, 10), LayerSensitivity("a", "Conv", 0.1, 0.1, 0, 10)]
    p = plot_sensitivity(ranked, ["b"], tmp_path / "s.png", "test")
    assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"


def _heavy_tailed_graph(path: Path) -> tuple[str, str]:
    """x (N, 64) -> MatMul W1 -> Tanh -> MatMul W2 -> y. W1 reads x directly: the calibration data give x
    a narrow bulk and rare large entries that carry the signal (calcium in a CT slice), which entropy
    calibration clips; W2 reads a Tanh output, bounded and dense. Returns the two node names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (64, 32)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (32, 8)).astype(np.float32)
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="reads_the_image"),
            helper.make_node("Tanh", ["h"], ["t"], name="squash"),
            helper.make_node("MatMul", ["t", "w2"], ["y"], name="reads_features"),
        ],
        "heavy_tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return "reads_the_image", "reads_features"


def _heavy_tailed_inputs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.05, (n, 64)).astype(np.float32)
    hot = rng.random((n, 64)) < 0.02
    x[hot] = rng.uniform(5, 20, hot.sum())
    return x


def test_analysis_keeps_the_layer_that_reads_the_heavy_tail(tmp_path: Path) -> None:
    import onnx

    src = tmp_path / "m.onnx"
    first, second = _heavy_tailed_graph(src)
    x = _heavy_tailed_inputs(256, 1)
    cfg = dict(method="entropy", keep_first_last=False, batch_size=32, sensitivity_slices=64)
    plain = quantize_model(src, tmp_path / "plain.onnx", x, QuantizeConfig(**cfg, max_fp32_layers=0),
                           role="segmenter")
    mixed = quantize_model(src, tmp_path / "mixed.onnx", x, QuantizeConfig(**cfg, max_fp32_layers=1),
                           role="segmenter")
    assert plain.sensitivity is None and plain.sensitive_fp32 == []
    assert mixed.sensitivity is not None and [s.node for s in mixed.sensitivity] == [first, second]
    assert mixed.sensitive_fp32 == [first] and mixed.kept_fp32 == [first]
    assert mixed.sensitivity[0].share > 0.5 > mixed.sensitivity[1].share
    # in the mixed graph the first MatMul reads x itself, the second a DequantizeLinear output
    g = onnx.load(str(tmp_path / "mixed.onnx")).graph
    dq = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in g.node}
    assert by_name[first].input[0] == "x" and by_name[second].input[0] in dq
    # and on fresh inputs it is closer to FP32 than the fully quantized graph
    test = _heavy_tailed_inputs(128, 2)
    ref = run_onnx(src, test, 32)
    e_plain = np.abs(run_onnx(tmp_path / "plain.onnx", test, 32) - ref).mean()
    e_mixed = np.abs(run_onnx(tmp_path / "mixed.onnx", test, 32) - ref).mean()
    assert e_mixed < 0.5 * e_plain


@pytest.mark.parametrize("bad", [dict(max_fp32_layers=-1), dict(fp32_share=0.0), dict(fp32_share=1.5),
                                 dict(sensitivity_slices=0)])
def test_config_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        QuantizeConfig(**bad)
