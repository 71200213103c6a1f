"""Model-mode inference, in one place: HU slices in, slice-filter probabilities and artery labels out.

The path (docs/CONTRACTS.md, "Model runtime")::

    HU (N, H, W) ─ kernels.preprocess(filter config) ─► filter backend ─► logits ─► sigmoid ─► p ≥ threshold
    HU (N, H, W) ─ kernels.preprocess(segmenter config) ─► segmenter backend ─► argmax ─► nearest-exact
                                                                                 resize back to (H, W)

The same kernels preprocessing that training's ``datasets/preprocess.py`` is tested against feeds
every backend, so training and serving see identical inputs. On a GPU the HU slices are moved to
the device once, preprocessed there by the CUDA kernels and handed to the backend without a copy
(DLPack / device pointers). Everything is deterministic: fixed preprocessing, eval-mode models,
argmax ties resolved to the lowest class (background first), nearest-exact label resampling
(pixel centres, the rule of ``training/datasets/preprocess.resize_labels``).

The streaming pipeline may call the steps separately (``preprocess`` → ``infer`` → ``probabilities``
/ ``labels_from_logits``) to batch across series; ``filter_probabilities`` and ``segment`` are those
same steps in sequence, so both paths give identical results.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cacstream.engine.backends.base import Backend, BackendUnavailable, InferenceResult, array_family
from cacstream.engine.backends.select import BackendChoice, auto_candidates, select_backend
from cacstream.engine.inference.weights_spec import (
    ModelSpec,
    WeightsFolderError,
    WeightsSpec,
    read_weights_spec,
)
from cacstream.engine.report.json_report import ModelInfo
from cacstream.kernels.config import PreprocessConfig

log = logging.getLogger(__name__)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function in float64."""
    z = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each of ``dst`` output pixels, nearest pixel centre (torch "nearest-exact")."""
    idx = np.floor((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst)).astype(np.int64)
    return np.minimum(idx, src - 1)


def _cupy_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("cupy") is not None


def _as_stack(hu_slices: Any) -> Any:
    """(N, H, W) float32 array of the input's family; (H, W) becomes (1, H, W); a list is stacked."""
    if isinstance(hu_slices, (list, tuple)):
        if not hu_slices:
            return np.zeros((0, 1, 1), np.float32)
        shapes = {tuple(s.shape) for s in hu_slices}
        if len(shapes) != 1:
            raise ValueError(f"slices of different sizes {sorted(shapes)} in one call; group them by size")
        first = hu_slices[0]
        fam = array_family(first)
        if fam.startswith("torch"):
            import torch

            return torch.stack(list(hu_slices)).float()
        if fam == "cupy":
            import cupy

            return cupy.stack(list(hu_slices)).astype(cupy.float32, copy=False)
        return np.stack([np.asarray(s, dtype=np.float32) for s in hu_slices])
    fam = array_family(hu_slices)
    x = hu_slices if fam != "numpy" else np.asarray(hu_slices, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected HU slices of shape (N, H, W) or (H, W), got {tuple(x.shape)}")
    if fam == "numpy":
        return x
    return x.float() if fam.startswith("torch") else x.astype("float32", copy=False)


def validation_warning(config: dict[str, Any]) -> str | None:
    """The sentence every report scored with these weights carries when their config.json records
    ``"validation": {"passed": false, "summary": ...}`` (weights that missed their accuracy targets)."""
    v = config.get("validation")
    if not isinstance(v, dict) or v.get("passed") is not False:
        return None
    return (f"model weights {config.get('weights_id', '?')} are NOT validated for clinical use: "
            f"{v.get('summary', 'they failed their held-out accuracy targets')}")


@dataclass
class CalciumModels:
    """The slice filter and the segmenter of one weights folder, on one backend and device."""

    spec: WeightsSpec
    filter_backend: Backend
    segmenter_backend: Backend
    choice: BackendChoice
    notes: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, weights_dir: Path | str, backend: str = "auto", precision: str = "fp32", batch_size: int = 16,
             device: str | None = None, *, threads: int | None = None, engine_dir: Path | None = None,
             build_engines: bool = True, cuda_graphs: bool = True) -> CalciumModels:
        """Load both models of ``weights_dir`` on ``backend`` (auto: the fastest present, falling back
        in order when a model file for the precision is missing) at ``precision``.

        batch_size: slices per model call (larger inputs are chunked). device: None/"auto", "cpu",
        "cuda[:N]". threads: CPU threads (None: the runtime's defaults). engine_dir: TensorRT engine
        folder (default :func:`engines.default_engine_dir`); build_engines: build missing or stale
        engines on load (False: refuse to run without fresh ones).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        spec = read_weights_spec(Path(weights_dir))
        if backend == "auto":
            dev, candidates, skipped = auto_candidates(precision, device)
            if not candidates:
                raise BackendUnavailable(f"no backend can run {precision} on {dev}: " + "; ".join(skipped))
        else:
            candidates = [select_backend(backend, precision, device)]
        notes: list[str] = []
        last: Exception | None = None
        modules: dict[str, Any] = {}  # PyTorch modules, loaded once if a torch backend needs them
        for choice in candidates:
            filt: Backend | None = None
            try:
                filt = _make_backend(choice, spec.model("filter"), batch_size, threads, engine_dir, build_engines,
                                     cuda_graphs, strict=backend != "auto", modules=modules)
                seg = _make_backend(choice, spec.model("segmenter"), batch_size, threads, engine_dir, build_engines,
                                    cuda_graphs, strict=backend != "auto", modules=modules)
            except BackendUnavailable as e:
                if filt is not None:
                    filt.close()
                if backend != "auto":
                    raise
                notes.append(f"{choice.name} skipped: {e}")
                log.warning("backend auto: %s unavailable (%s); trying the next", choice.name, e)
                last = e
                continue
            return cls(spec, filt, seg, choice, notes)
        raise BackendUnavailable("backend auto: no backend could load these weights: " + "; ".join(notes)) from last

    # ------------------------------------------------------------------------------- properties

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(weights_id=self.spec.weights_id, backend=self.choice.name, precision=self.choice.precision,
                         device=self.filter_backend.device, filter_threshold=self.filter_threshold,
                         validation_warning=validation_warning(self.spec.config))

    @property
    def filter_config(self) -> PreprocessConfig:
        return self.spec.model("filter").preprocess

    @property
    def segmenter_config(self) -> PreprocessConfig:
        return self.spec.model("segmenter").preprocess

    @property
    def filter_threshold(self) -> float:
        return float(self.spec.model("filter").threshold)  # type: ignore[arg-type]

    @property
    def on_gpu(self) -> bool:
        return self.choice.device.startswith("cuda")

    def _backend(self, role: str) -> Backend:
        if role == "filter":
            return self.filter_backend
        if role == "segmenter":
            return self.segmenter_backend
        raise ValueError(f"role must be 'filter' or 'segmenter', got {role!r}")

    # ------------------------------------------------------------------------------ the steps

    def to_device(self, hu: Any) -> Any:
        """HU slices onto the backend's device (GPU: one host-to-device copy; CPU: as they are).
        Without CuPy the CUDA kernels cannot run: slices stay on the host, are preprocessed by the C++
        twins, and the backend uploads the (4-5x smaller) model input instead."""
        if not self.on_gpu or array_family(hu) in ("torch_cuda", "cupy") or not _cupy_installed():
            return hu
        index = int(self.choice.device.partition(":")[2] or 0)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            return torch.as_tensor(np.asarray(hu), device=f"cuda:{index}")
        import cupy

        with cupy.cuda.Device(index):
            return cupy.asarray(hu)

    def preprocess(self, hu_slices: Any, role: str) -> Any:
        """HU (N, H, W) -> model input (N, 1, S, S) for ``role``, on the backend's device, in the dtype
        the backend takes (kernels preprocessing with the weights' PreprocessConfig)."""
        from cacstream.kernels import preprocess

        be = self._backend(role)
        cfg = dataclasses.replace(self.spec.model(role).preprocess, output_dtype=be.input_dtype)
        hu = self.to_device(_as_stack(hu_slices))
        return preprocess(hu, 1.0, 0.0, config=cfg).model_input

    def infer(self, model_input: Any, role: str) -> InferenceResult:
        """Run the role's backend on a preprocessed batch (chunked to the batch size inside)."""
        return self._backend(role).infer(model_input)

    def probabilities(self, filter_logits: Any) -> np.ndarray:
        """Slice-filter logits -> probability that the slice holds coronary calcium, (N,) float64."""
        from cacstream.engine.backends.base import to_numpy_f32

        return sigmoid(to_numpy_f32(filter_logits).reshape(-1))

    def labels_from_logits(self, seg_logits: Any, native_hw: tuple[int, int]) -> np.ndarray:
        """Segmenter logits (N, 5, S, S) -> uint8 labels (N, H, W): argmax (lowest class on ties),
        then nearest-exact resampling from S×S to the slices' native H×W."""
        fam = array_family(seg_logits)
        if fam.startswith("torch"):
            lab = seg_logits.argmax(dim=1).to(dtype=__import__("torch").uint8).cpu().numpy()
        elif fam == "cupy":
            import cupy

            lab = cupy.asnumpy(seg_logits.argmax(axis=1).astype(cupy.uint8))
        else:
            lab = np.asarray(seg_logits).argmax(axis=1).astype(np.uint8)
        h, w = int(native_hw[0]), int(native_hw[1])
        s_h, s_w = lab.shape[1], lab.shape[2]
        if (s_h, s_w) == (h, w):
            return np.ascontiguousarray(lab)
        return np.ascontiguousarray(lab[:, nearest_indices(s_h, h)][:, :, nearest_indices(s_w, w)])

    # --------------------------------------------------------------------------- the contract

    def filter_logits(self, hu_slices: Any) -> np.ndarray:
        """Raw slice-filter logits (N,) float32 (for calibration / evaluation tools)."""
        return np.asarray(self._filter_result(hu_slices)[0], dtype=np.float32).reshape(-1)

    def _filter_result(self, hu_slices: Any) -> tuple[np.ndarray, float]:
        from cacstream.engine.backends.base import to_numpy_f32

        if isinstance(hu_slices, (list, tuple)) and len({tuple(s.shape) for s in hu_slices}) > 1:
            groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for i, s in enumerate(hu_slices):
                groups[tuple(s.shape)].append(i)
            out = np.zeros(len(hu_slices), np.float32)
            ms = 0.0
            for idx in groups.values():
                part, t = self._filter_result([hu_slices[i] for i in idx])
                out[idx] = part
                ms += t
            return out, ms
        x = self.preprocess(hu_slices, "filter")
        res = self.infer(x, "filter")
        return to_numpy_f32(res.logits).reshape(-1), res.elapsed_ms

    def filter_probabilities(self, hu_slices: Any) -> np.ndarray:
        """Probability (float64, (N,)) that each HU slice holds coronary calcium."""
        return sigmoid(self._filter_result(hu_slices)[0])

    def filter_flags(self, hu_slices: Any) -> np.ndarray:
        """Slices to segment: probability >= the weights' operating threshold, (N,) bool."""
        return self.filter_probabilities(hu_slices) >= self.filter_threshold

    def segment(self, hu_slices: Any) -> np.ndarray:
        """uint8 artery labels (N, H, W) at the slices' native size (0 background, 1 LM .. 4 RCA)."""
        stack = _as_stack(hu_slices)
        if stack.shape[0] == 0:
            return np.zeros(tuple(stack.shape), np.uint8)
        x = self.preprocess(stack, "segmenter")
        res = self.infer(x, "segmenter")
        return self.labels_from_logits(res.logits, (int(stack.shape[1]), int(stack.shape[2])))

    def close(self) -> None:
        self.filter_backend.close()
        self.segmenter_backend.close()


# ------------------------------------------------------------------------------- backend factory


def _make_backend(choice: BackendChoice, spec: ModelSpec, batch_size: int, threads: int | None,
                  engine_dir: Path | None, build_engines: bool, cuda_graphs: bool, strict: bool,
                  modules: dict[str, Any] | None = None) -> Backend:
    """One model on the chosen backend. A missing model file is a WeightsFolderError when the backend
    was asked for by name (strict) and BackendUnavailable under auto (so auto tries the next)."""
    def missing(e: WeightsFolderError) -> Exception:
        return e if strict else BackendUnavailable(str(e))

    if choice.name == "torch":
        from cacstream.engine.backends.torch_backend import TorchBackend

        modules = {} if modules is None else modules
        if not modules:
            modules.update(_torch_modules(spec.directory))
        module = modules[spec.role]
        tail = (spec.num_classes, *spec.input_shape[1:]) if spec.role == "segmenter" else ()
        return TorchBackend(module, spec.role, spec.input_shape, device=choice.device, precision=choice.precision,
                            max_batch_size=batch_size, cuda_graphs=cuda_graphs, threads=threads,
                            keep_on_device=choice.device != "cpu", output_tail=tail)
    if choice.name == "onnxruntime":
        from cacstream.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
        from cacstream.engine.inference.engines import default_engine_dir

        try:
            path = spec.onnx_path(choice.precision, (engine_dir or default_engine_dir(spec.directory),))
        except WeightsFolderError as e:
            raise missing(e) from None
        return OnnxRuntimeBackend(path, spec.role, device=choice.device, precision=choice.precision,
                                  max_batch_size=batch_size, threads=threads or 0,
                                  expected_input_shape=spec.input_shape, keep_on_device=choice.device != "cpu")
    if choice.name == "tensorrt":
        from cacstream.engine.backends.tensorrt_backend import TensorRTBackend
        from cacstream.engine.inference.engines import (
            BatchProfile,
            current_gpu,
            default_engine_dir,
            engine_files,
            engine_key,
            engine_status,
            ensure_engine,
            import_tensorrt,
        )

        edir = Path(engine_dir) if engine_dir else default_engine_dir(spec.directory)
        try:
            onnx = spec.onnx_path(choice.precision, (edir,))
        except WeightsFolderError as e:
            raise missing(e) from None
        index = int(choice.device.partition(":")[2] or 0)
        if build_engines:
            ensured = ensure_engine(onnx, edir, spec.section, choice.precision, spec.input_shape,
                                    BatchProfile.for_max(batch_size), gpu_index=index, exact_profile=False,
                                    on_build=lambda msg: log.warning("%s", msg))
            plan = ensured.files.plan
        else:
            trt = import_tensorrt()
            files = engine_files(edir, spec.section, choice.precision)
            status = engine_status(files, engine_key(onnx, current_gpu(index), str(trt.__version__), choice.precision,
                                                     spec.input_shape))
            if not status.fresh:
                raise BackendUnavailable(f"{files.plan}: engine {status.describe()}; run `cacstream build-engines`")
            plan = files.plan
        return TensorRTBackend(plan, spec.role, device=choice.device, precision=choice.precision,
                               expected_input_shape=spec.input_shape, max_batch_size=batch_size, keep_on_device=True)
    raise ValueError(f"unknown backend {choice.name!r}")


def _torch_modules(directory: Path) -> dict[str, Any]:
    """The PyTorch modules of both models, rebuilt from the weights folder by the training code's loader."""
    from cacstream.training.weights import WeightsError, load_weights

    try:
        bundle = load_weights(directory)
    except WeightsError as e:
        raise WeightsFolderError(str(e)) from None
    assert bundle.slice_filter is not None and bundle.segmenter is not None
    return {"filter": bundle.slice_filter.model, "segmenter": bundle.segmenter.model}
