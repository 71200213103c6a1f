"""``calibrate quantize``: explicit Q/DQ INT8 ONNX graphs from a calibration set (ONNX Runtime static PTQ).

Why this tool and these settings:

* TensorRT 11 builds INT8 engines only from explicit quantize/dequantize graphs (no calibrator API, no
  dynamic ranges), and ONNX Runtime's CPU runs the same graphs: one file serves both INT8 paths.
* NVIDIA ModelOpt's ONNX PTQ would place Q/DQ the way TensorRT likes best, but its ``[onnx]`` extra pins
  ``onnx~=1.21`` and ``onnxruntime-gpu~=1.24`` (it would replace the project's onnx 1.23 and CPU
  onnxruntime 1.32 in the shared environment), so the project uses
  ``onnxruntime.quantization.quantize_static`` in QDQ format instead, configured for TensorRT:
  signed INT8 with zero points of 0 for activations AND weights (``ActivationSymmetric``,
  ``WeightSymmetric``: TensorRT rejects non-zero zero points), biases left in FP32 (``QuantizeBias``
  off: TensorRT fuses FP32 bias into the INT8 convolution itself), Q/DQ only on the inputs of the
  weighted ops (Conv, ConvTranspose, MatMul, Gemm — the layers INT8 speeds up, as ModelOpt's default
  does), weights per output channel with ``--per-channel`` (recommended for convolutions). The graph
  is first shape-inferred without ONNX Runtime's own fusions, so it stays standard ONNX (default domain
  only), which :func:`tensorrt_qdq_problems` checks.
* Calibration runs batch by batch (ORT's strided collection), so the memory used does not grow with
  the set size: a 512² U-Net's intermediate tensors for a whole set would not fit in RAM.

Outputs (default: into the weights folder, where the runtime looks for ``<stem>.int8.onnx``)::

    slice_filter.int8.onnx, segmenter.int8.onnx     explicit Q/DQ graphs (float32 in, float32 out)
    int8.json                                       method, set id + version, tool versions, checks

Each output is checked before it is kept: it loads and runs in ONNX Runtime CPU on the set's slices,
and its agreement with FP32 (filter decisions, segmenter argmax pixels, max |logit difference|) is
recorded in ``int8.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cacstream.calibration.sensitivity import LayerSensitivity, choose_fp32, plot_sensitivity, rank_layers
from cacstream.calibration.sets import ROLES, CalibrationSet
from cacstream.engine.file_hash import file_sha256

METHODS: tuple[str, ...] = ("entropy", "max", "percentile")
DEFAULT_OP_TYPES: tuple[str, ...] = ("Conv", "ConvTranspose", "MatMul", "Gemm")
INT8_FORMAT = "cacstream-int8/1"
INT8_RECORD = "int8.json"
QDQ = ("QuantizeLinear", "DequantizeLinear")


class QuantizeError(RuntimeError):
    """Quantisation could not produce a usable graph (message names the file and the reason)."""


@dataclass(frozen=True)
class QuantizeConfig:
    """Attributes:
    method: "entropy" (KL-divergence thresholds, TensorRT's classic choice, recommended), "max"
        (min/max of the set: keeps every outlier, coarsest steps) or "percentile" (clips the top
        ``100 - percentile`` % of magnitudes).
    per_channel: one weight scale per output channel (recommended; per-tensor is coarser).
    op_types: ONNX op types whose inputs get Q/DQ.
    percentile: for method "percentile".
    max_slices: use at most this many slices of the set (None: all).
    batch_size: slices per calibration run (None: 8, or 2 for inputs of 384² and more, to bound memory).
    check_slices: slices of the set used for the FP32-vs-INT8 check recorded in int8.json.
    keep_first_last: leave the first and the last weighted layer in FP32 (recommended). The first
        layer sees the normalised HU image, where 8 bits give ~16 HU steps over a 4000 HU
        slice range; the last one produces the logits whose small margins decide the class. On
        the tiny test U-Net, quantizing them costs 13 points of argmax agreement with FP32.
    quantize_activation_matmuls: also quantize MatMuls of two activations (a ViT's q·kᵀ and
        attention·v). Kept FP32 by default: they hold no weights, so INT8 saves little there, and
        8-bit attention scores in front of a softmax moved the v1 slice filter's decisions the most
        (README, "Performance": 1.35 vs 0.90 points of filter sensitivity on the 40 held-out phantoms).
    max_fp32_layers: keep up to this many layers in FP32 that per-layer sensitivity analysis finds
        dominant (calibration/sensitivity.py; 0 skips the analysis). On the v1 filter one layer, the
        ViT's patch embedding, made 93 % of the INT8 output error; the v1.3 U-Net has four layers at
        or above the 0.25 share, and with only 2 of them in FP32 its INT8 graphs failed the accuracy
        gate (a zero-calcium phantom scored 5.6), with all 4 they passed (docs/calibration.md). Hence 4:
        it changes nothing where fewer layers are dominant.
    fp32_share: a layer is dominant when quantizing it alone gives at least this fraction of the fully
        quantized graph's output error.
    sensitivity_slices: slices of the set (spread evenly over it) on which each layer is measured.
    """

    method: str = "entropy"
    per_channel: bool = True
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    percentile: float = 99.999
    max_slices: int | None = None
    batch_size: int | None = None
    check_slices: int = 64
    keep_first_last: bool = True
    quantize_activation_matmuls: bool = False
    max_fp32_layers: int = 4
    fp32_share: float = 0.25
    sensitivity_slices: int = 32

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 90.0 <= self.percentile < 100.0:
            raise ValueError(f"percentile must be within [90, 100), got {self.percentile}")
        if self.max_slices is not None and self.max_slices < 1:
            raise ValueError("max_slices must be >= 1")
        if self.max_fp32_layers < 0:
            raise ValueError(f"max_fp32_layers must be >= 0, got {self.max_fp32_layers}")
        if not 0.0 < self.fp32_share <= 1.0:
            raise ValueError(f"fp32_share must be within (0, 1], got {self.fp32_share}")
        if self.sensitivity_slices < 1:
            raise ValueError(f"sensitivity_slices must be >= 1, got {self.sensitivity_slices}")


def _ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "entropy": CalibrationMethod.Entropy,
        "max": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }[method]


class SetReader:
    """ONNX Runtime CalibrationDataReader over one role's inputs of a set, in batches; supports the
    strided collection (``set_range`` in batch units) that keeps calibration memory bounded."""

    def __init__(self, inputs: np.ndarray, input_name: str, batch_size: int) -> None:
        self.inputs = inputs
        self.name = input_name
        self.batch = batch_size
        self.n_batches = (len(inputs) + batch_size - 1) // batch_size
        self.set_range(0, self.n_batches)

    def __len__(self) -> int:
        return self.n_batches

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = start_index
        self._end = min(end_index, self.n_batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        a = self._next * self.batch
        self._next += 1
        return {self.name: np.ascontiguousarray(self.inputs[a : a + self.batch], dtype=np.float32)}

    def rewind(self) -> None:
        self.set_range(0, self.n_batches)


def tensorrt_qdq_problems(path: Path) -> list[str]:
    """Why a Q/DQ graph would not build as a strongly typed TensorRT INT8 network ([] = none found):
    no Q/DQ at all, ops outside the default ONNX domain, non-INT8 or non-zero zero points."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    problems = []
    ops = [n for n in model.graph.node if n.op_type in QDQ]
    if not ops:
        problems.append("no QuantizeLinear/DequantizeLinear nodes")
    odd = sorted({f"{n.domain}:{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if odd:
        problems.append(f"non-standard ops {odd}")
    inits = {i.name: i for i in model.graph.initializer}
    for n in ops:
        if len(n.input) < 3 or not n.input[2]:
            continue  # no zero point: 0 by definition
        zp = inits.get(n.input[2])
        if zp is None:
            problems.append(f"{n.name}: zero point {n.input[2]!r} is not a constant")
            continue
        arr = numpy_helper.to_array(zp)
        if arr.dtype != np.int8:
            problems.append(f"{n.name}: zero point of type {arr.dtype} (TensorRT needs int8)")
        elif np.any(arr != 0):
            problems.append(f"{n.name}: non-zero zero point (TensorRT needs symmetric quantisation)")
    return problems


def qdq_node_count(path: Path) -> int:
    import onnx

    return sum(1 for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type in QDQ)


def compare_outputs(
    fp32: Path, int8: Path, inputs: np.ndarray, role: str, threshold: float | None, batch_size: int = 8
) -> dict[str, float]:
    """FP32 vs INT8 in ONNX Runtime CPU on the same inputs: max |logit diff| and decision agreement."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    a = ort.InferenceSession(str(fp32), opts, providers=["CPUExecutionProvider"])
    try:
        b = ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise QuantizeError(
            f"{int8}: ONNX Runtime cannot load the INT8 graph ({type(e).__name__}: {e})"
        ) from None
    name_a, name_b = a.get_inputs()[0].name, b.get_inputs()[0].name
    from cacstream.engine.inference.regions import split_filter_logits

    worst = 0.0
    agree = total = patch_agree = patch_total = 0
    for s in range(0, len(inputs), batch_size):
        x = np.ascontiguousarray(inputs[s : s + batch_size], dtype=np.float32)
        ya = a.run(None, {name_a: x})[0].astype(np.float64)
        yb = b.run(None, {name_b: x})[0].astype(np.float64)
        worst = max(worst, float(np.max(np.abs(ya - yb))))
        if role == "filter":  # the slice decision; with patch logits also the patch (region) decisions
            t = float(np.log(threshold / (1 - threshold))) if threshold is not None else 0.0
            (sa, pa), (sb, pb) = split_filter_logits(ya), split_filter_logits(yb)
            agree += int(np.sum((sa >= t) == (sb >= t)))
            total += sa.size
            if pa is not None and pb is not None:
                patch_agree += int(np.sum((pa >= t) == (pb >= t)))
                patch_total += pa.size
        else:
            same = ya.argmax(axis=1) == yb.argmax(axis=1)
            agree += int(same.sum())
            total += same.size
    key = "decision_agreement" if role == "filter" else "argmax_pixel_agreement"
    out = {"max_abs_logit_diff": worst, key: agree / max(1, total), "slices": len(inputs)}
    if patch_total:
        out["patch_decision_agreement"] = patch_agree / patch_total
    return out


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__}


def first_last_weighted(model_path: Path, op_types: tuple[str, ...]) -> list[str]:
    """Names of the first and the last node of ``op_types`` in graph (topological) order."""
    import onnx

    names = [
        n.name
        for n in onnx.load(str(model_path), load_external_data=False).graph.node
        if n.op_type in op_types
    ]
    return list(dict.fromkeys([names[0], names[-1]])) if names else []


def activation_matmuls(model_path: Path) -> list[str]:
    """Names of the MatMul nodes whose inputs are both activations (no initializer, no constant)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    fixed = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in fixed for i in n.input)]


def _infer_shapes(src: Path, dst: Path) -> None:
    """Shape inference only (ORT's optimiser would fuse into com.microsoft ops TensorRT cannot read).

    ORT's symbolic shape inference is tried first (it resolves more dynamic shapes); it does not know
    every opset-18 form (e.g. ReduceMax with its axes as an input, which the exported filter's max-pooled
    read-out uses), and then ONNX's own shape inference, which does, is used alone.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_optimization=True)
        return
    except Exception as first:  # noqa: BLE001 - onnx / ORT raise many types
        symbolic = f"{type(first).__name__}: {first}"
    try:
        quant_pre_process(str(src), str(dst), skip_optimization=True, skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001
        raise QuantizeError(
            f"{src}: shape inference before quantisation failed (symbolic: {symbolic}; "
            f"ONNX: {type(e).__name__}: {e})"
        ) from None


@dataclass
class ModelQuantization:
    """What :func:`quantize_model` left in FP32 and why."""

    kept_fp32: list[str]  # every weighted node left FP32 (first/last, attention MatMuls, sensitive)
    sensitive_fp32: list[str]  # those kept because sensitivity analysis found them dominant
    sensitivity: list[LayerSensitivity] | None  # every candidate layer, most sensitive first
    full_error: float | None  # mean |INT8 - FP32| output of the graph with every candidate quantized
    check_slices: int = 0


def run_onnx(path: Path, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Outputs of an ONNX graph on ONNX Runtime CPU, in batches."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate(
        [
            sess.run(None, {name: np.ascontiguousarray(inputs[s : s + batch_size], dtype=np.float32)})[0]
            for s in range(0, len(inputs), batch_size)
        ]
    )


def _cache_supported() -> bool:
    """ONNX Runtime >= 1.26 can cache calibration ranges between quantize_static calls; older versions
    re-calibrate for every graph (same ranges, only slower)."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def evenly_spread(n_total: int, n: int) -> np.ndarray:
    """``min(n, n_total)`` distinct indices spread evenly over ``range(n_total)``."""
    return np.unique(np.linspace(0, n_total - 1, min(n, n_total)).round().astype(int))


def quantize_model(
    src: Path,
    dst: Path,
    inputs: np.ndarray,
    config: QuantizeConfig,
    *,
    role: str = "filter",
    threshold: float | None = None,
    on_layers: Callable[[int], Callable[[], None]] | None = None,
) -> ModelQuantization:
    """Quantize one FP32 ONNX file into ``dst`` (explicit Q/DQ, INT8 symmetric).

    With ``config.max_fp32_layers`` > 0 the layers are first ranked by sensitivity on the set (see
    calibration/sensitivity.py) and the dominant ones stay FP32. ``on_layers(n)`` is told how many layers
    will be measured and returns the callback called after each."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    size = int(inputs.shape[-1])
    batch = config.batch_size or (2 if size >= 384 else 8)
    with tempfile.TemporaryDirectory(prefix="cacstream-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        _infer_shapes(src, pre)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        name = ort.InferenceSession(str(pre), opts, providers=["CPUExecutionProvider"]).get_inputs()[0].name
        excluded = first_last_weighted(pre, config.op_types) if config.keep_first_last else []
        if not config.quantize_activation_matmuls:
            excluded += [n for n in activation_matmuls(pre) if n not in excluded]
        # one batch per collection (CalibStridedMinMax=1): bounded memory, and ORT's histogram collectors
        # cannot stack a short last batch with full ones
        extra = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "CalibStridedMinMax": 1,
            "CalibPercentile": config.percentile,
        }
        cache = {"calibration_cache_path": str(Path(tmp) / "ranges.json")} if _cache_supported() else {}

        def write(out: Path, nodes: list[str] | None = None, exclude: list[str] | None = None) -> Path:
            sink = io.StringIO()
            try:
                with contextlib.redirect_stdout(sink):  # the histogram calibrators print progress lines
                    quantize_static(
                        str(pre),
                        str(out),
                        SetReader(inputs, name, batch),
                        quant_format=QuantFormat.QDQ,
                        per_channel=config.per_channel,
                        activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=_ort_method(config.method),
                        op_types_to_quantize=list(config.op_types),
                        nodes_to_quantize=nodes,
                        nodes_to_exclude=excluded + (exclude or []),
                        extra_options=extra,
                        **cache,
                    )
            except Exception as e:  # noqa: BLE001 - the quantizer raises many types
                raise QuantizeError(
                    f"{src}: ONNX Runtime quantize_static failed ({type(e).__name__}: {e})"
                ) from None
            return out

        ranked, full, sensitive, n_check = None, None, [], 0
        if config.max_fp32_layers > 0:
            check = np.ascontiguousarray(inputs[evenly_spread(len(inputs), config.sensitivity_slices)], np.float32)
            n_check = len(check)
            graph = onnx.load(str(pre), load_external_data=False).graph
            cands = [(n.name, n.op_type) for n in graph.node if n.op_type in config.op_types and n.name not in excluded]
            one = Path(tmp) / "one.onnx"
            ranked, full = rank_layers(
                cands,
                lambda nodes: write(one, nodes),
                lambda path: run_onnx(path, check, batch),
                run_onnx(pre, check, batch),
                role,
                threshold,
                on_layers(len(cands)) if on_layers is not None else None,
            )
            sensitive = choose_fp32(ranked, config.fp32_share, config.max_fp32_layers)
        out = write(Path(tmp) / "int8.onnx", exclude=sensitive)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp_dst = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        shutil.copyfile(out, tmp_dst)
        tmp_dst.replace(dst)
    return ModelQuantization(excluded + sensitive, sensitive, ranked, full, n_check)


def quantize_weights(
    weights_dir: Path,
    cs: CalibrationSet,
    out_dir: Path | None = None,
    config: QuantizeConfig = QuantizeConfig(),
    *,
    roles: tuple[str, ...] = ROLES,
    quiet: bool = False,
) -> dict[str, Any]:
    """INT8 Q/DQ graphs of the weights' models from the set; returns (and writes) the int8.json record."""
    import onnx
    from cacstream.calibration.inspect import check_preprocess_matches
    from cacstream.calibration.progress import progress_bar
    from cacstream.engine.inference.weights_spec import read_weights_spec

    weights_dir = Path(weights_dir)
    out_dir = Path(out_dir) if out_dir is not None else weights_dir
    spec = read_weights_spec(weights_dir)
    check_preprocess_matches(cs, weights_dir)
    n = len(cs) if config.max_slices is None else min(len(cs), config.max_slices)
    record: dict[str, Any] = {
        "format": INT8_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "weights_id": spec.weights_id,
        "weights_dir": str(weights_dir.resolve()),
        "calibration_set": {
            "set_id": cs.set_id,
            "version": cs.manifest.get("version"),
            "dir": str(cs.directory.resolve()),
            "strategy": cs.strategy,
            "seed": cs.seed,
            "slices_used": n,
        },
        "method": config.method,
        "per_channel": config.per_channel,
        "op_types": list(config.op_types),
        "keep_first_last": config.keep_first_last,
        "quantize_activation_matmuls": config.quantize_activation_matmuls,
        "sensitivity_rule": {
            "max_fp32_layers": config.max_fp32_layers,
            "fp32_share": config.fp32_share,
            "slices": config.sensitivity_slices,
        },
        "percentile": config.percentile if config.method == "percentile" else None,
        "quantization": {
            "format": "QDQ",
            "activations": "int8, symmetric (zero point 0), per tensor",
            "weights": f"int8, symmetric (zero point 0), per {'channel' if config.per_channel else 'tensor'}",
            "bias": "float32 (not quantized)",
        },
        "tool": {"name": "onnxruntime.quantization.quantize_static", **_versions()},
        "models": {},
    }
    existing = out_dir / INT8_RECORD
    if existing.is_file():  # keep the other role's entry when only one role is re-quantized
        try:
            old = json.loads(existing.read_text())
            if old.get("format") == INT8_FORMAT:
                record["models"].update({k: v for k, v in old.get("models", {}).items() if k not in roles})
        except json.JSONDecodeError:
            pass
    with progress_bar(quiet) as bar:
        task = bar.add_task(f"quantize ({config.method}, {n} slices)", total=len(roles))
        for role in roles:
            m = spec.model(role)
            src = m.onnx_path("fp32")
            dst = out_dir / m.onnx_name("int8")
            inputs = cs.inputs[role][:n]
            threshold = m.threshold if role == "filter" else None

            def on_layers(n: int, section: str = m.section) -> Any:
                sub = bar.add_task(f"  per-layer sensitivity, {section}", total=n)
                return lambda: bar.advance(sub)

            t0 = time.perf_counter()
            q = quantize_model(src, dst, inputs, config, role=role, threshold=threshold, on_layers=on_layers)
            seconds = time.perf_counter() - t0
            try:
                onnx.checker.check_model(str(dst))
            except Exception as e:  # noqa: BLE001 - onnx.checker raises ValidationError and others
                dst.unlink(missing_ok=True)
                raise QuantizeError(f"{dst}: the quantized graph is not valid ONNX ({e})") from None
            problems = tensorrt_qdq_problems(dst)
            check = compare_outputs(src, dst, inputs[: config.check_slices], role, threshold)
            sensitivity = None
            if q.sensitivity is not None:
                plot = plot_sensitivity(
                    q.sensitivity,
                    q.sensitive_fp32,
                    out_dir / f"int8_sensitivity_{m.section}.png",
                    f"{m.section}: INT8 sensitivity per layer ({q.check_slices} slices of {cs.set_id})\n"
                    f"red: kept FP32 (share >= {config.fp32_share:g}, at most {config.max_fp32_layers})",
                )
                sensitivity = {
                    "check_slices": q.check_slices,
                    "full_graph_error": q.full_error,
                    "kept_fp32": q.sensitive_fp32,
                    "plot": plot.name,
                    "layers": [s.to_dict() for s in q.sensitivity],
                }
            record["models"][m.section] = {
                "role": role,
                "source": src.name,
                "source_sha256": file_sha256(src),
                "output": dst.name,
                "output_sha256": file_sha256(dst),
                "qdq_nodes": qdq_node_count(dst),
                "kept_fp32_nodes": q.kept_fp32,
                "sensitivity": sensitivity,
                "seconds": round(seconds, 2),
                "tensorrt_qdq_problems": problems,
                "check_vs_fp32": check,
            }
            bar.advance(task)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INT8_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


def read_int8_record(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / INT8_RECORD
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return d if d.get("format") == INT8_FORMAT else None
