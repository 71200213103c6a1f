"""Read a weights folder's ``config.json`` for serving, without building any PyTorch module.

ONNX Runtime and TensorRT serving need only the input sizes, the preprocessing, the operating
threshold and the model files; this module reads exactly that and checks it, so a broken folder is
reported before any session or engine is built, with the file and the key in the message.

Model files per precision (the convention the calibration tooling writes to):

* ``fp32``: the section's ``onnx`` entry (``slice_filter.onnx``, ``segmenter.onnx``: ``cacstream export``)
* ``fp16``: ``<stem>.fp16.onnx`` (strongly typed FP16 graph, ``calibration/fp16.py``)
* ``int8``: ``<stem>.int8.onnx`` (explicit Q/DQ graph from a calibration set)

where ``<stem>`` is the fp32 file's stem. A section may name other files in
``"onnx_variants": {"fp16": "...", "int8": "..."}``. Files are looked for in the weights folder,
then in any extra folder the caller gives (e.g. the engine folder, where ``build-engines`` puts an
FP16 graph it converted itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cacstream.engine.domain import ARTERIES
from cacstream.kernels.config import PreprocessConfig

CONFIG_FILE = "config.json"
#: Must equal ``cacstream.training.weights.FORMAT`` (tests/test_runtime.py checks).
WEIGHTS_FORMAT = "cacstream-weights/1"
#: Runtime role -> config.json section.
ROLE_SECTIONS: dict[str, str] = {"filter": "slice_filter", "segmenter": "segmenter"}
SEGMENTER_CLASSES: tuple[str, ...] = ("background",) + ARTERIES


class WeightsFolderError(ValueError):
    """A weights folder that cannot be served; the message names the file and the reason."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of a weights folder as serving sees it."""

    role: str  # "filter" | "segmenter"
    section: str  # "slice_filter" | "segmenter"
    directory: Path
    preprocess: PreprocessConfig
    input_shape: tuple[int, int, int]  # (1, S, S)
    onnx: str | None  # fp32 file name, as config.json names it
    onnx_variants: dict[str, str] = field(default_factory=dict)
    threshold: float | None = None  # slice filter only
    num_classes: int | None = None  # segmenter only
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def where(self) -> str:
        return f"{self.directory / CONFIG_FILE}: {self.section}"

    def onnx_name(self, precision: str) -> str:
        """The file name that holds this model at ``precision`` (which need not exist)."""
        if precision in self.onnx_variants:
            return self.onnx_variants[precision]
        base = self.onnx or f"{self.section}.onnx"
        return base if precision == "fp32" else f"{Path(base).stem}.{precision}.onnx"

    def onnx_path(self, precision: str = "fp32", extra_dirs: tuple[Path, ...] = ()) -> Path:
        """The existing ONNX file for ``precision``; WeightsFolderError naming every place looked.

        A section with ``"onnx_on_first_use": true`` and no shipped fp32 file gets it generated once
        from its safetensors (``engine/inference/onnx_cache.py``) into the engine folder."""
        if precision == "fp32" and not self.onnx:
            raise WeightsFolderError(f"{self.where}: no 'onnx' entry — the folder was exported with --no-onnx; "
                                     "re-export with ONNX or serve it with --backend torch")
        name = self.onnx_name(precision)
        if precision == "fp32" and self.config.get("onnx_on_first_use") and not (self.directory / name).is_file():
            # Shipped without ONNX (repository size): made once from the safetensors (onnx_cache.py).
            from cacstream.engine.inference.engines import default_engine_dir
            from cacstream.engine.inference.onnx_cache import OnnxCacheError, ensure_onnx

            try:
                made = ensure_onnx(self, extra_dirs[0] if extra_dirs else default_engine_dir(self.directory))
            except OnnxCacheError as e:
                raise WeightsFolderError(f"{self.where}: {e}") from None
            if made is not None:
                return made
        tried = [d / name for d in (self.directory, *extra_dirs)]
        for p in tried:
            if p.is_file():
                return p
        how = {"fp32": "re-run `cacstream export`",
               "fp16": "convert it with `python -m cacstream.calibration.fp16 WEIGHTS_DIR` (or let "
                       "`cacstream build-engines --precision fp16` do it)",
               "int8": "quantize it from a calibration set (`cacstream calibrate quantize ...`)"}.get(precision, "")
        raise WeightsFolderError(f"{tried[0]}: {precision} ONNX file of the {self.section} not found"
                                 + (f" (also looked at {', '.join(map(str, tried[1:]))})" if tried[1:] else "")
                                 + (f"; {how}" if how else ""))


@dataclass(frozen=True)
class WeightsSpec:
    directory: Path
    weights_id: str
    filter: ModelSpec | None
    segmenter: ModelSpec | None
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def model(self, role: str) -> ModelSpec:
        spec = self.filter if role == "filter" else self.segmenter if role == "segmenter" else None
        if spec is None:
            raise WeightsFolderError(f"{self.directory / CONFIG_FILE}: no {ROLE_SECTIONS.get(role, role)!r} section")
        return spec


def _need(d: dict[str, Any], key: str, kinds: tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise WeightsFolderError(f"{where}: missing key {key!r}")
    v = d[key]
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        raise WeightsFolderError(f"{where}: {key!r} must be {'/'.join(k.__name__ for k in kinds)}, got {v!r}")
    return v


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise WeightsFolderError(f"{path}: not found (a weights folder holds config.json + *.safetensors + *.onnx)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise WeightsFolderError(f"{path}: the top level must be an object")
    if cfg.get("format") != WEIGHTS_FORMAT:
        raise WeightsFolderError(f"{path}: format {cfg.get('format')!r}, expected {WEIGHTS_FORMAT!r}")
    return cfg


def _model_spec(role: str, sec: dict[str, Any], directory: Path) -> ModelSpec:
    section = ROLE_SECTIONS[role]
    where = f"{directory / CONFIG_FILE}: {section}"
    try:
        pre = PreprocessConfig.from_dict(_need(sec, "preprocess", (dict,), where))
    except (TypeError, ValueError) as e:
        if isinstance(e, WeightsFolderError):
            raise
        raise WeightsFolderError(f"{where}.preprocess: {e}") from None
    onnx = sec.get("onnx")
    if onnx is not None and not isinstance(onnx, str):
        raise WeightsFolderError(f"{where}: 'onnx' must be a file name, got {onnx!r}")
    variants = sec.get("onnx_variants", {})
    if not isinstance(variants, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in variants.items()):
        raise WeightsFolderError(f"{where}: 'onnx_variants' must map precision -> file name, got {variants!r}")
    threshold = num_classes = None
    if role == "filter":
        threshold = float(_need(sec, "threshold", (int, float), where))
        if not 0.0 < threshold < 1.0:
            raise WeightsFolderError(f"{where}: threshold must be a probability in (0, 1), got {threshold}")
    else:
        classes = tuple(_need(sec, "classes", (list,), where))
        if classes != SEGMENTER_CLASSES:
            raise WeightsFolderError(f"{where}: classes {list(classes)} must be {list(SEGMENTER_CLASSES)} (engine/domain.py)")
        num_classes = len(classes)
    size = pre.input_size
    return ModelSpec(role, section, directory, pre, (1, size, size), onnx, dict(variants), threshold, num_classes, sec)


def read_weights_spec(directory: Path | str, roles: tuple[str, ...] = ("filter", "segmenter")) -> WeightsSpec:
    """Parse and check a weights folder's config.json; ``roles`` must be present."""
    directory = Path(directory)
    cfg = read_config(directory)
    specs: dict[str, ModelSpec | None] = {"filter": None, "segmenter": None}
    for role, section in ROLE_SECTIONS.items():
        if section in cfg:
            if not isinstance(cfg[section], dict):
                raise WeightsFolderError(f"{directory / CONFIG_FILE}: {section!r} must be an object")
            specs[role] = _model_spec(role, cfg[section], directory)
        elif role in roles:
            raise WeightsFolderError(f"{directory / CONFIG_FILE}: no {section!r} section, but model mode needs it")
    return WeightsSpec(directory, str(cfg.get("weights_id") or directory.name), specs["filter"], specs["segmenter"], cfg)
