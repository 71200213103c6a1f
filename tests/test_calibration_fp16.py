"""FP16 ONNX conversion (calibration/fp16.py): the graphs TensorRT 11 builds FP16 engines from."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cacstream.calibration.fp16 import Fp16ConversionError, compare_graphs, convert_onnx_fp16, main

from _tiny_weights import tiny_weights_dir


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


def _initializer_types(path: Path) -> set[int]:
    import onnx

    return {i.data_type for i in onnx.load(str(path)).graph.initializer}


def test_conversion_gives_fp16_weights_float32_io_and_a_checked_record(tiny_weights: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    src = tiny_weights / "segmenter.onnx"
    rec = convert_onnx_fp16(src, tmp_path / "segmenter.fp16.onnx")
    out = tmp_path / "segmenter.fp16.onnx"
    assert rec.output == out.name and out.is_file()
    assert onnx.TensorProto.FLOAT16 in _initializer_types(out) and onnx.TensorProto.FLOAT not in _initializer_types(out)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
    side = json.loads((tmp_path / "segmenter.fp16.json").read_text())
    assert side["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert 0 < side["max_abs_diff"] == rec.max_abs_diff and rec.relative_diff < 0.01
    # an independent check of the recorded difference on other inputs
    x = np.random.default_rng(7).random((3, 1, 32, 32), dtype=np.float32) * 2 - 1
    _, rel = compare_graphs(src, out, x)
    assert 0 < rel < 0.01


def _conv_weight_types(path: Path) -> set[int]:
    """Element types of the weights the convolutions compute with (after shape/type inference)."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in (*m.graph.value_info, *m.graph.input)}
    types.update({i.name: i.data_type for i in m.graph.initializer})
    return {types[n.input[1]] for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")}


def test_ops_can_be_kept_in_fp32(tiny_weights: Path, tmp_path: Path) -> None:
    import onnx

    convert_onnx_fp16(tiny_weights / "segmenter.onnx", tmp_path / "a.fp16.onnx")
    assert _conv_weight_types(tmp_path / "a.fp16.onnx") == {onnx.TensorProto.FLOAT16}
    convert_onnx_fp16(tiny_weights / "segmenter.onnx", tmp_path / "b.fp16.onnx", keep_fp32_ops=["Conv", "ConvTranspose"])
    assert _conv_weight_types(tmp_path / "b.fp16.onnx") == {onnx.TensorProto.FLOAT}  # computed in FP32


def test_failed_checks_leave_no_file(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "segmenter.fp16.onnx"
    with pytest.raises(Fp16ConversionError, match="FP16 differs from FP32"):
        convert_onnx_fp16(tiny_weights / "segmenter.onnx", out, tolerance=0.0)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(Fp16ConversionError, match="not found"):
        convert_onnx_fp16(tmp_path / "missing.onnx")
    convert_onnx_fp16(tiny_weights / "segmenter.onnx", out)
    with pytest.raises(Fp16ConversionError, match="already holds float16"):
        convert_onnx_fp16(out, tmp_path / "twice.onnx")


def test_command_line_converts_a_weights_folder(tiny_weights: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    w = tmp_path / "w"
    shutil.copytree(tiny_weights, w)
    assert main([str(w)]) == 0
    assert (w / "slice_filter.fp16.onnx").is_file() and (w / "segmenter.fp16.onnx").is_file()
    assert "slice_filter: slice_filter.fp16.onnx" in capsys.readouterr().out
    (w / "config.json").write_text("{}")
    assert main([str(w)]) == 3
