"""Export finished training runs into a weights folder: ``config.json`` + ``*.safetensors`` + ONNX.

ONNX files have a fixed spatial input size (the model's serving size, so engines can be built for it),
a dynamic batch axis, and opset ≥ 17. Each ONNX file is checked against the PyTorch module it came from
with ONNX Runtime on a batch of test inputs; a maximum absolute difference above the tolerance fails the
export loudly (the file is removed), and the difference is recorded in ``config.json`` either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cacstream.training.classifier_trainer import read_run_record
from cacstream.training.models.classifier import served_filter, served_output_spec
from cacstream.training.runtime import MODEL_FILE, environment, write_json
from cacstream.training.weights import (
    CONFIG_FILE,
    FILTER_KEY,
    FORMAT,
    SEGMENTER_CLASSES,
    SEGMENTER_KEY,
    _load_into,
    build_segmenter,
    build_slice_filter,
)
from safetensors.torch import save_file
from torch import nn

log = logging.getLogger(__name__)
MIN_OPSET = 17
#: torch.export-based exporter emits opset 18 natively; asking it for 17 runs a version converter that
#: fails on some graphs (ReduceMean with axes inputs) and then silently keeps 18.
DEFAULT_OPSET = 18


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class OnnxCheck:
    """ONNX Runtime against PyTorch on the same inputs."""

    max_abs_diff: float
    tolerance: float
    batch_sizes: tuple[int, ...]
    provider: str

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "batch_sizes": list(self.batch_sizes),
            "provider": self.provider,
            "runtime": "onnxruntime",
        }


@contextlib.contextmanager
def _restore_levels(loggers: list[logging.Logger], levels: list[int]) -> Iterator[None]:
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_onnx(
    model: nn.Module,
    input_size: int,
    path: Path,
    opset: int = DEFAULT_OPSET,
    in_chans: int = 1,
    input_name: str = "slices",
    output_name: str = "logits",
    exporter: str = "dynamo",
) -> Path:
    """Write ``model`` (eval mode) as ONNX with input (batch, in_chans, S, S), batch dynamic.

    The file must come out with exactly the requested opset (:func:`onnx_opset` reads it back): use
    18 with the dynamo exporter, 17 with the TorchScript one."""
    if opset < MIN_OPSET:
        raise ExportError(
            f"opset {opset} < {MIN_OPSET}: LayerNormalization and the attention graph need >= 17"
        )
    model = model.eval()
    path = Path(path)
    example = torch.zeros(2, in_chans, input_size, input_size)
    quiet_loggers = [
        logging.getLogger(n)
        for n in ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript")
    ]
    levels = [lg.level for lg in quiet_loggers]
    for lg in quiet_loggers:  # "torchvision is not installed" and converter chatter: noise here
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad(), _restore_levels(quiet_loggers, levels):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes={"x": {0: batch}},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        elif exporter == "torchscript":
            torch.onnx.export(
                model,
                (example,),
                str(path),
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                dynamo=False,
            )
        else:
            raise ValueError(f"exporter must be dynamo or torchscript, got {exporter!r}")
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    got = onnx_opset(proto)
    if got != opset:
        raise ExportError(
            f"{path}: asked for opset {opset}, the {exporter} exporter produced {got} "
            f"(use opset {DEFAULT_OPSET} with dynamo, or the torchscript exporter for 17)"
        )
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [d.dim_value for d in dims[1:]]
    if fixed != [in_chans, input_size, input_size]:
        raise ExportError(
            f"{path}: input shape {[d.dim_param or d.dim_value for d in dims]} is not "
            f"(batch, {in_chans}, {input_size}, {input_size})"
        )
    return path


def onnx_opset(proto: Any) -> int:
    """The default-domain opset of an ONNX model."""
    opsets = {o.domain: o.version for o in proto.opset_import}
    return int(opsets.get("", opsets.get("ai.onnx", 0)))


def check_onnx(model: nn.Module, path: Path, inputs: torch.Tensor, tolerance: float) -> OnnxCheck:
    """Max |ONNX Runtime − PyTorch| on ``inputs`` run as one batch and on its first slice alone (the
    batch axis is dynamic, so both sizes must work)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    worst = 0.0
    model = model.eval()
    sizes = (len(inputs), 1) if len(inputs) > 1 else (1,)
    for bs in sizes:
        x = inputs[:bs]
        with torch.no_grad():
            ref = model(x).float().numpy()
        got = sess.run(None, {name: x.numpy().astype(np.float32)})[0]
        if got.shape != ref.shape:
            raise ExportError(f"{path}: ONNX output shape {got.shape} != PyTorch {ref.shape} at batch {bs}")
        worst = max(worst, float(np.max(np.abs(got - ref))))
    return OnnxCheck(worst, tolerance, sizes, "CPUExecutionProvider")


def check_inputs(input_size: int, seed: int = 0, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Test inputs in the model's [-1, 1] range: real preprocessed slices when given, else uniform
    noise, plus a smooth ramp and an all-air (-1) slice, so typical and edge inputs are compared."""
    g = torch.Generator().manual_seed(seed)
    first = (
        reference[:2].float()
        if reference is not None
        else torch.rand(1, 1, input_size, input_size, generator=g) * 2 - 1
    )
    ramp = torch.linspace(-1, 1, input_size).view(1, 1, 1, -1).expand(1, 1, input_size, input_size)
    return torch.cat([first, ramp.clone(), -torch.ones(1, 1, input_size, input_size)])


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _onnx_part(
    model: nn.Module, input_size: int, out_dir: Path, stem: str, opset: int, tolerance: float, exporter: str
) -> dict[str, Any]:
    path = out_dir / f"{stem}.onnx"
    export_onnx(model, input_size, path, opset, exporter=exporter)
    check = check_onnx(model, path, check_inputs(input_size), tolerance)
    if not check.passed:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"{path}: ONNX Runtime differs from PyTorch by {check.max_abs_diff:.3g} "
            f"(tolerance {tolerance:.3g}); the ONNX file was removed"
        )
    log.info("%s: max |ORT - torch| = %.3g", path.name, check.max_abs_diff)
    return {
        "onnx": path.name,
        "onnx_opset": opset,
        "onnx_sha256_16": _sha(path),
        "onnx_check": check.to_dict(),
    }


#: What ``slice_filter.candidate_gate`` in config.json tells a reader (engine/inference/candidates.py).
GATE_MEANING = ("the engine flags a patch only when it also holds a 2D calcium component of at least "
                "min_area_mm2 at threshold_hu (the Agatston lesion rule); the slice logit is the maximum over "
                "those patches (column 0 of the output is the ungated maximum); the operating threshold was chosen with the gate")


def export_weights(
    out_dir: Path,
    classifier_run: Path | None = None,
    segmenter_run: Path | None = None,
    *,
    onnx: bool = True,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-3,
    exporter: str = "dynamo",
    command: Sequence[str] | None = None,
    weights_id: str | None = None,
) -> dict[str, Any]:
    """Write a weights folder from a finished classifier run and/or U-Net run; returns its config."""
    if classifier_run is None and segmenter_run is None:
        raise ExportError("nothing to export: give a classifier run and/or a segmenter run")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "format": FORMAT,
        "weights_id": weights_id or out_dir.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": list(command or []),
        "environment": environment(),
    }
    if classifier_run is not None:
        rec = read_run_record(Path(classifier_run), "classifier")
        section: dict[str, Any] = {
            "backbone": {"name": rec["arch"], "kwargs": rec.get("arch_kwargs", {})},
            "embed_dim": rec["embed_dim"],
            "feature": rec["feature"],
            "feature_dim": rec["feature_dim"],
            "preprocess": rec["preprocess"],
            "threshold": rec["metrics"]["threshold"],
            "threshold_rule": rec["metrics"]["threshold_rule"],
            **({"candidate_gate": {**rec["candidate_gate"], "meaning": GATE_MEANING}} if rec.get("candidate_gate") else {}),
            "input": {
                "name": "slices",
                "shape": ["batch", 1, rec["preprocess"]["input_size"], rec["preprocess"]["input_size"]],
                "dtype": "float32",
            },
        }
        model, _ = build_slice_filter(section, f"{classifier_run}")
        _load_into(model, Path(classifier_run) / rec.get("weights", MODEL_FILE))
        section["output"] = served_output_spec(model)
        weights = out_dir / "slice_filter.safetensors"
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(weights),
            metadata={"format": "cacstream-slice-filter/1"},
        )
        section["weights"] = weights.name
        if onnx:
            section.update(
                _onnx_part(
                    served_filter(model.eval()),
                    rec["preprocess"]["input_size"],
                    out_dir,
                    "slice_filter",
                    opset,
                    tolerance,
                    exporter,
                )
            )
        section["training"] = {
            "classifier_command": rec.get("command"),
            "classifier_data": rec.get("data"),
            "augment": rec.get("augment"),
            "dino": rec.get("dino"),
            "dino_saw_eval_patients": rec.get("dino_saw_eval_patients", []),
        }
        section["metrics"] = {
            k: rec["metrics"].get(k)
            for k in ("val", "test", "pos_weight", "best_val_f1_at_0.5", "stopped_early")
        }
        config[FILTER_KEY] = section
    if segmenter_run is not None:
        rec = read_run_record(Path(segmenter_run), "unet")
        size = int(rec["preprocess"]["input_size"])
        section = {
            "arch": {"name": rec["arch"], "kwargs": rec.get("arch_kwargs", {})},
            "classes": list(SEGMENTER_CLASSES),
            "preprocess": rec["preprocess"],
            "input": {"name": "slices", "shape": ["batch", 1, size, size], "dtype": "float32"},
            "output": {
                "name": "logits",
                "shape": ["batch", len(SEGMENTER_CLASSES), size, size],
                "meaning": "per-pixel class logits; argmax = background, LM, LAD, LCX, RCA",
            },
            "native_resolution_rule": "slices whose matrix differs from input_size are resized to it "
            "(bilinear) and the class map is resized back (nearest) before Agatston",
            "train_crop": rec.get("train_crop"),
        }
        model_s = build_segmenter(section, f"{segmenter_run}")
        _load_into(model_s, Path(segmenter_run) / rec.get("weights", MODEL_FILE))
        weights = out_dir / "segmenter.safetensors"
        save_file(
            {k: v.contiguous() for k, v in model_s.state_dict().items()},
            str(weights),
            metadata={"format": "cacstream-segmenter/1"},
        )
        section["weights"] = weights.name
        if onnx:
            section.update(_onnx_part(model_s, size, out_dir, "segmenter", opset, tolerance, exporter))
        section["training"] = {"command": rec.get("command"), "data": rec.get("data")}
        section["metrics"] = rec.get("metrics", {})
        config[SEGMENTER_KEY] = section
    write_json(out_dir / CONFIG_FILE, config)
    return config
