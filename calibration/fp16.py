"""FP16 ONNX graphs: what TensorRT 11 builds FP16 engines from (precision lives in the graph).

TensorRT 11 removed the FP16 builder flag: a network is built strongly typed, with the types its
ONNX graph declares. This module converts an exported FP32 graph (``slice_filter.onnx``,
``segmenter.onnx``) into ``<stem>.fp16.onnx`` with onnxconverter-common's float16 converter:
weights and activations in float16, the graph's input and output kept float32 (``keep_io_types``),
so every backend keeps taking the kernels' float32 model input and giving float32 logits; the casts
sit at the two ends of the graph. Ops that must stay FP32 (the converter's own block list, plus any
given in ``keep_fp32_ops``, e.g. ``LayerNormalization`` if a model overflows) are wrapped in casts.

Each conversion is checked: both graphs run in ONNX Runtime (CPU) on the same inputs (noise, a ramp
and an all-air slice in [-1, 1]), and the largest difference relative to the FP32 output's range is
recorded in a JSON sidecar (``<stem>.fp16.json``) with the source file's hash. A conversion whose
difference exceeds ``tolerance`` is removed and reported, never left for an engine build to pick up.

Command line: ``python -m cacstream.calibration.fp16 WEIGHTS_DIR [--out DIR]``. (Written by the
backends engineer for ``cacstream build-engines``; the calibration tooling may call it too.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from cacstream.engine.file_hash import file_sha256

#: Relative tolerance of the FP16 check: max |fp16 - fp32| / max(|fp32|, 1). FP16 has an 11-bit
#: significand (~5e-4 relative per op); deep graphs accumulate to ~1e-3..1e-2.
DEFAULT_TOLERANCE = 0.05


class Fp16ConversionError(RuntimeError):
    """The FP16 graph could not be made or differs too much from the FP32 one (message names the file)."""


@dataclass(frozen=True)
class Fp16Conversion:
    source: str
    output: str
    source_sha256: str
    keep_fp32_ops: tuple[str, ...]
    max_abs_diff: float
    relative_diff: float
    tolerance: float
    converter: str
    seconds: float


def check_inputs(shape_chw: tuple[int, int, int], n: int = 4, seed: int = 0) -> np.ndarray:
    """Inputs in the models' [-1, 1] range: noise, a horizontal ramp, an all-air (-1) slice."""
    c, h, w = shape_chw
    rng = np.random.default_rng(seed)
    noise = rng.random((max(1, n - 2), c, h, w), dtype=np.float32) * 2 - 1
    ramp = np.broadcast_to(np.linspace(-1, 1, w, dtype=np.float32), (1, c, h, w))
    air = -np.ones((1, c, h, w), np.float32)
    return np.ascontiguousarray(np.concatenate([noise, ramp, air]))


def compare_graphs(fp32_path: Path, fp16_path: Path, inputs: np.ndarray | None = None) -> tuple[float, float]:
    """(max |fp16 - fp32|, that divided by max(|fp32|, 1)) on ONNX Runtime CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    a = ort.InferenceSession(str(fp32_path), opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(fp16_path), opts, providers=["CPUExecutionProvider"])
    inp = a.get_inputs()[0]
    if inputs is None:
        inputs = check_inputs(tuple(int(d) for d in inp.shape[1:]))  # type: ignore[arg-type]
    ya = a.run(None, {inp.name: inputs})[0].astype(np.float64)
    yb = b.run(None, {b.get_inputs()[0].name: inputs.astype(np.float32)})[0].astype(np.float64)
    diff = float(np.max(np.abs(ya - yb))) if ya.size else 0.0
    return diff, diff / max(float(np.max(np.abs(ya))) if ya.size else 0.0, 1.0)


def convert_onnx_fp16(src: Path, dst: Path | None = None, *, keep_fp32_ops: Sequence[str] = (),
                      tolerance: float = DEFAULT_TOLERANCE) -> Fp16Conversion:
    """Write the FP16 twin of ``src`` (default ``<stem>.fp16.onnx`` beside it) and its check sidecar."""
    import onnx
    from onnxconverter_common import __version__ as occ_version
    from onnxconverter_common import float16

    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_name(f"{src.stem}.fp16.onnx")
    if not src.is_file():
        raise Fp16ConversionError(f"{src}: ONNX file not found")
    t0 = time.perf_counter()
    try:
        model = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001 - probe/wrap: the message carries the cause
        raise Fp16ConversionError(f"{src}: not a readable ONNX model ({e})") from None
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        raise Fp16ConversionError(f"{src}: already holds float16 weights; convert the FP32 export instead")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-constant "truncated to 1e-07" notices
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(keep_fp32_ops))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(converted, str(tmp))
    try:
        onnx.checker.check_model(str(tmp))
        diff, rel = compare_graphs(src, tmp)
    except Exception as e:  # noqa: BLE001 - probe/wrap: the message carries the cause
        tmp.unlink(missing_ok=True)
        raise Fp16ConversionError(f"{dst}: the converted graph does not run in ONNX Runtime ({e})") from None
    if not rel <= tolerance:
        tmp.unlink(missing_ok=True)
        raise Fp16ConversionError(f"{dst}: FP16 differs from FP32 by {diff:.3g} ({rel:.3g} of the output range, "
                                  f"tolerance {tolerance}); keep the sensitive ops in FP32 (keep_fp32_ops)")
    tmp.replace(dst)
    record = Fp16Conversion(str(src.name), str(dst.name), file_sha256(src), tuple(keep_fp32_ops), diff, rel, tolerance,
                            f"onnxconverter-common {occ_version} float16 (keep_io_types)",
                            round(time.perf_counter() - t0, 2))
    d = asdict(record)
    d["keep_fp32_ops"] = list(record.keep_fp32_ops)
    dst.with_suffix(".json").write_text(json.dumps(d, indent=1) + "\n")
    return record


def convert_weights_fp16(weights_dir: Path, out_dir: Path | None = None, *, keep_fp32_ops: Sequence[str] = (),
                         tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Fp16Conversion]:
    """FP16 twins of every model's FP32 ONNX in a weights folder (written to ``out_dir`` or beside them)."""
    from cacstream.engine.inference.weights_spec import read_weights_spec

    spec = read_weights_spec(Path(weights_dir), roles=())
    out: dict[str, Fp16Conversion] = {}
    for m in (spec.filter, spec.segmenter):
        if m is None:
            continue
        src = m.onnx_path("fp32")
        dst = (Path(out_dir) if out_dir else src.parent) / m.onnx_name("fp16")
        out[m.section] = convert_onnx_fp16(src, dst, keep_fp32_ops=keep_fp32_ops, tolerance=tolerance)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cacstream.calibration.fp16",
                                description="Convert a weights folder's FP32 ONNX files to FP16 graphs (float32 I/O) "
                                "for TensorRT 11 strongly typed FP16 engines, checked against FP32 in ONNX Runtime.")
    p.add_argument("weights", type=Path, help="weights folder (config.json + ONNX files)")
    p.add_argument("--out", type=Path, default=None, help="folder for the FP16 files (default: beside the FP32 ones; "
                   "use the engine folder when the weights folder is read-only)")
    p.add_argument("--keep-fp32", nargs="*", default=[], metavar="OP",
                   help="ONNX op types kept in FP32 (e.g. LayerNormalization Softmax) when FP16 overflows; "
                   "default: none beyond the converter's own list")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest accepted |fp16 - fp32| relative to the FP32 output range (recommended 0.05)")
    a = p.parse_args(argv)
    try:
        done = convert_weights_fp16(a.weights, a.out, keep_fp32_ops=a.keep_fp32, tolerance=a.tolerance)
    except (Fp16ConversionError, ValueError) as e:
        print(f"fp16: {e}", file=sys.stderr)
        return 3
    for section, rec in done.items():
        print(f"{section}: {rec.output} (max |fp16 - fp32| {rec.max_abs_diff:.3g}, {rec.relative_diff:.2g} of range)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
