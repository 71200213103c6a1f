"""Weights folders: what ``cacstream export`` writes and serving loads.

A weights folder (DESIGN.md: never pickles)::

    config.json                 architectures, input sizes, preprocessing, threshold, training record
    slice_filter.safetensors    ViT backbone + linear head (SliceFilter state dict)
    segmenter.safetensors       U-Net state dict
    slice_filter.onnx           fixed input size, dynamic batch axis (for ONNX Runtime / TensorRT)
    segmenter.onnx

:func:`load_weights` rebuilds the PyTorch modules from ``config.json`` through the model registry and
validates everything it reads; every problem is a :class:`WeightsError` naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from cacstream.engine.domain import ARTERIES, NUM_SEG_CLASSES
from cacstream.engine.inference.weights_spec import WEIGHTS_FORMAT, WeightsFolderError
from cacstream.engine.inference.weights_spec import read_config as read_engine_config
from cacstream.kernels.config import PreprocessConfig
from cacstream.training.models.classifier import FeatureSpec, SliceFilter, make_head
from cacstream.training.models.registry import create_model, model_entry
from cacstream.training.models.unet import UNet
from cacstream.training.models.vit import VisionTransformer
from torch import nn

CONFIG_FILE = "config.json"
FORMAT = WEIGHTS_FORMAT  # one format string, owned by the engine's reader
FILTER_KEY, SEGMENTER_KEY = "slice_filter", "segmenter"
SEGMENTER_CLASSES = ("background",) + ARTERIES


class WeightsError(ValueError):
    """A weights folder that cannot be served; the message names the file and the reason."""


@dataclass
class LoadedFilter:
    """The slice filter: ``model(x)`` gives (B,) logits for (B, 1, S, S) inputs.

    A slice is flagged for segmentation when its logit ≥ ``logit_threshold`` (= logit(threshold))."""

    model: SliceFilter
    preprocess: PreprocessConfig
    threshold: float
    feature: FeatureSpec
    onnx_path: Path | None
    config: dict[str, Any]

    @property
    def logit_threshold(self) -> float:
        t = min(max(self.threshold, 1e-12), 1 - 1e-12)
        return math.log(t / (1 - t))


@dataclass
class LoadedSegmenter:
    """The U-Net: ``model(x)`` gives (B, 5, S, S) class logits; classes = background, LM, LAD, LCX, RCA."""

    model: UNet
    preprocess: PreprocessConfig
    classes: tuple[str, ...]
    onnx_path: Path | None
    config: dict[str, Any]


@dataclass
class ModelBundle:
    """Everything a weights folder holds, ready for serving (modules in eval mode)."""

    directory: Path
    slice_filter: LoadedFilter | None
    segmenter: LoadedSegmenter | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_id(self) -> str:
        return str(self.metadata.get("weights_id", self.directory.name))


def _need(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise WeightsError(f"{where}: missing key {key!r}")
    v = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        raise WeightsError(f"{where}: {key!r} must be {'/'.join(k.__name__ for k in kinds)}, got {v!r}")
    return v


def _preprocess(d: dict[str, Any], where: str) -> PreprocessConfig:
    try:
        return PreprocessConfig.from_dict(_need(d, "preprocess", dict, where))
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{where}.preprocess: {e}") from None


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise WeightsError(f"{path}: weights file missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises SafetensorError / OSError
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


def _load_into(model: nn.Module, path: Path) -> None:
    sd = _state_dict(path)
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{path}: tensors do not fit the architecture in {CONFIG_FILE}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def _arch(d: dict[str, Any], key: str, family: str, where: str) -> tuple[str, dict[str, Any]]:
    a = _need(d, key, dict, where)
    name = _need(a, "name", str, f"{where}.{key}")
    kwargs = _need(a, "kwargs", dict, f"{where}.{key}")
    try:
        entry = model_entry(name)
    except KeyError as e:
        raise WeightsError(f"{where}.{key}.name: {e.args[0]}") from None
    if entry.family != family:
        raise WeightsError(f"{where}.{key}.name: {name!r} is a {entry.family}, expected a {family}")
    return name, kwargs


def _onnx(d: dict[str, Any], directory: Path) -> Path | None:
    name = d.get("onnx")
    if not name:
        return None
    p = directory / str(name)
    return p if p.is_file() else None


def build_slice_filter(cfg: dict[str, Any], where: str) -> tuple[SliceFilter, FeatureSpec]:
    name, kwargs = _arch(cfg, "backbone", "vit", where)
    try:
        feature = FeatureSpec.from_dict(_need(cfg, "feature", dict, where))
        backbone = create_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{where}: {e}") from None
    assert isinstance(backbone, VisionTransformer)
    return SliceFilter(backbone, make_head(feature, backbone.embed_dim), feature), feature


def build_segmenter(cfg: dict[str, Any], where: str) -> UNet:
    name, kwargs = _arch(cfg, "arch", "unet", where)
    try:
        model = create_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{where}: {e}") from None
    assert isinstance(model, UNet)
    return model


def read_config(directory: Path) -> dict[str, Any]:
    """The weights folder's ``config.json``, read and checked by the engine's one reader
    (``engine/inference/weights_spec.py``), its complaints raised as :class:`WeightsError`."""
    try:
        return read_engine_config(Path(directory))
    except WeightsFolderError as e:
        raise WeightsError(str(e)) from None


def load_weights(
    directory: Path | str,
    parts: tuple[str, ...] = (FILTER_KEY, SEGMENTER_KEY),
    device: str | torch.device = "cpu",
) -> ModelBundle:
    """Load a weights folder into eval-mode modules; ``parts`` must be present (others load if there)."""
    directory = Path(directory)
    cfg = read_config(directory)
    where_root = str(directory / CONFIG_FILE)
    for p in parts:
        if p not in (FILTER_KEY, SEGMENTER_KEY):
            raise ValueError(f"unknown part {p!r}")
        if p not in cfg:
            raise WeightsError(f"{where_root}: no {p!r} section, but it is required")
    filt: LoadedFilter | None = None
    seg: LoadedSegmenter | None = None
    if FILTER_KEY in cfg:
        where = f"{where_root}: {FILTER_KEY}"
        fc = _need(cfg, FILTER_KEY, dict, where_root)
        model, feature = build_slice_filter(fc, where)
        pre = _preprocess(fc, where)
        if pre.input_size != model.backbone.img_size * feature.input_pool:
            raise WeightsError(
                f"{where}: preprocess.input_size {pre.input_size} != backbone img_size "
                f"{model.backbone.img_size} x feature.input_pool {feature.input_pool}"
            )
        threshold = _need(fc, "threshold", (int, float), where)
        if not 0.0 < float(threshold) < 1.0:
            raise WeightsError(f"{where}: threshold must be a probability in (0, 1), got {threshold}")
        _load_into(model, directory / _need(fc, "weights", str, where))
        filt = LoadedFilter(model.to(device).eval(), pre, float(threshold), feature, _onnx(fc, directory), fc)
    if SEGMENTER_KEY in cfg:
        where = f"{where_root}: {SEGMENTER_KEY}"
        sc = _need(cfg, SEGMENTER_KEY, dict, where_root)
        model_s = build_segmenter(sc, where)
        pre = _preprocess(sc, where)
        if pre.input_size % model_s.size_multiple:
            raise WeightsError(
                f"{where}: preprocess.input_size {pre.input_size} is not a multiple of "
                f"{model_s.size_multiple}"
            )
        classes = tuple(_need(sc, "classes", list, where))
        if classes != SEGMENTER_CLASSES or model_s.num_classes != NUM_SEG_CLASSES:
            raise WeightsError(
                f"{where}: classes {list(classes)} must be {list(SEGMENTER_CLASSES)} (engine/domain.py)"
            )
        _load_into(model_s, directory / _need(sc, "weights", str, where))
        seg = LoadedSegmenter(model_s.to(device).eval(), pre, classes, _onnx(sc, directory), sc)
    return ModelBundle(directory, filt, seg, cfg)
