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
from cacstream.engine.inference.candidates import (
    CandidateRule,
    candidate_patches,
    candidate_reach,
    complete_components,
    gated_slice_logits,
    reach_diagonal,
)
from cacstream.engine.inference.regions import (
    RegionConfig,
    TileGrid,
    cut_tiles,
    paste_cores,
    plan_tiles,
    split_filter_logits,
    tile_grid,
)
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
    regions: RegionConfig = field(default_factory=RegionConfig)
    #: The tiling segmentation uses (None: whole slices) and the backend that runs its tiles.
    tile_grid: TileGrid | None = None
    tile_backend: Backend | None = None
    #: The candidate gate in effect (``candidates.py``): None when the filter's patches are not gated.
    candidate_rule: CandidateRule | None = None
    #: The skeletal gate: calcium in 3D components above this many mm³ is no candidate (the scoring
    #: config's ``skeletal_component_mm3``, so the gate withdraws only what the scorer would exclude);
    #: None: off. Needs the whole series (:meth:`skeletal_exclusion`).
    skeletal_gate_mm3: float | None = None

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, weights_dir: Path | str, backend: str = "auto", precision: str = "fp32", batch_size: int = 16,
             device: str | None = None, *, threads: int | None = None, engine_dir: Path | None = None,
             build_engines: bool = True, cuda_graphs: bool = True,
             regions: RegionConfig | None = None, candidate_gate: bool | None = None,
             candidate_rule: CandidateRule | None = None,
             skeletal_gate_mm3: float | None = None) -> CalciumModels:
        """Load both models of ``weights_dir`` on ``backend`` (auto: the fastest present, falling back
        in order when a model file for the precision is missing) at ``precision``.

        batch_size: slices per model call (larger inputs are chunked). device: None/"auto", "cpu",
        "cuda[:N]". threads: CPU threads (None: the runtime's defaults). engine_dir: TensorRT engine
        folder (default :func:`engines.default_engine_dir`); build_engines: build missing or stale
        engines on load (False: refuse to run without fresh ones). regions: which parts of a flagged
        slice are segmented (default: the cores around flagged filter patches, ``regions.py``).
        candidate_gate: gate the filter's patches by calcium candidates (``candidates.py``); None: as
        the weights say (their threshold was chosen with or without it). candidate_rule: the lesion
        rule of the scoring config (default: the one the weights were trained with), so the gate
        never hides calcium the scorer would count. skeletal_gate_mm3: the scoring config's
        ``skeletal_component_mm3`` to withdraw bone-sized calcium from the candidates too (the skeletal
        gate, :meth:`skeletal_exclusion`; needs the candidate gate), None: off.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if skeletal_gate_mm3 is not None and not skeletal_gate_mm3 > 0:
            raise ValueError(f"skeletal_gate_mm3 must be > 0 mm³ or None, got {skeletal_gate_mm3}")
        spec = read_weights_spec(Path(weights_dir))
        gate = _gate_rule(spec, candidate_gate, candidate_rule)
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
            models = cls(spec, filt, seg, choice, notes, regions or RegionConfig())
            models.candidate_rule = gate
            models.skeletal_gate_mm3 = None if skeletal_gate_mm3 is None else float(skeletal_gate_mm3)
            models._set_up_tiles({"batch_size": batch_size, "threads": threads, "engine_dir": engine_dir,
                                  "build_engines": build_engines, "cuda_graphs": cuda_graphs,
                                  "strict": backend != "auto", "modules": modules})
            return models
        raise BackendUnavailable("backend auto: no backend could load these weights: " + "; ".join(notes)) from last

    def _set_up_tiles(self, load: dict[str, Any]) -> None:
        """Decide the segmentation regions: probe the filter for patch logits and, when the config asks
        for patch regions, load the segmenter once more at the tile size. Anything that stops it is a
        note and a warning, and segmentation falls back to whole slices (never a failed load)."""
        if self.regions.mode == "slice":
            return
        from cacstream.engine.backends.base import to_numpy_f32

        c, h, w = self.filter_backend.input_shape
        probe = self.filter_backend.infer(np.zeros((1, c, h, w), np.dtype(self.filter_backend.input_dtype)))
        _, patches = split_filter_logits(to_numpy_f32(probe.logits))
        grid = tile_grid(self.regions, None if patches is None else int(patches.shape[1]),
                         int(self.segmenter_backend.input_shape[-1]))
        if grid is None:
            why = ("the slice filter outputs no patch logits" if patches is None
                   else f"its {patches.shape[1]}x{patches.shape[1]} patch grid does not tile the segmenter's input")
            self.notes.append(f"segment regions: whole slices ({why})")
            return
        try:
            self.tile_backend = _make_tile_backend(self.choice, self.spec.model("segmenter"), grid.tile, **load)
        except (BackendUnavailable, WeightsFolderError, ValueError, OSError) as e:
            self.notes.append(f"segment regions: whole slices (the {grid.tile}² tile model could not be loaded: {e})")
            log.warning("segment regions: falling back to whole slices: %s", e)
            return
        self.tile_grid = grid

    @property
    def region_rule(self) -> str:
        """What a flagged slice's segmentation covers, in words (goes into every report)."""
        rule = self.tile_grid.describe() if self.tile_grid is not None else "whole slice"
        if self.candidate_rule is not None:
            c = self.candidate_rule
            rule += (f"; filter patches gated by calcium candidates (>= {c.threshold_hu:g} HU, >= "
                     f"{c.min_area_mm2:g} mm², {c.connectivity}-connected)")
        if self.skeletal_gate:
            rule += (f"; calcium in 3D components above {self.skeletal_gate_mm3:g} mm³ (bone) flags no patch "
                     "(skeletal gate, decided when the series is complete)")
        if self.completes_components:
            rule += "; grown to the whole calcium components of flagged patches"
        return rule

    # ------------------------------------------------------------------------------- properties

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(weights_id=self.spec.weights_id, backend=self.choice.name, precision=self.choice.precision,
                         device=self.filter_backend.device, filter_threshold=self.filter_threshold,
                         segment_regions=self.region_rule,
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

    @property
    def patch_grid(self) -> int | None:
        """G of the filter's G×G patch logits (from its config.json ``output``), None without them."""
        grid = self.spec.model("filter").config.get("output", {}).get("patch_grid")
        return int(grid[0]) if grid else None

    def candidate_patches(self, hu_slices: Any, pixel_spacing_mm: Any, exclude: Any = None) -> np.ndarray | None:
        """(N, G, G) bool: the filter patches that hold a calcium candidate, None when no gate is in
        effect. ``pixel_spacing_mm``: one (row, column) pair or one per slice (required with a gate).
        ``exclude``: (N, H, W) bool calcium that is no candidate (the skeletal gate), or None."""
        return self._per_candidate_rule(candidate_patches, hu_slices, pixel_spacing_mm, exclude)

    def candidate_reach(self, hu_slices: Any, pixel_spacing_mm: Any, exclude: Any = None) -> np.ndarray | None:
        """(N, G², G²) bool: which patches one candidate component spans (``candidates.candidate_reach``;
        its diagonal is :meth:`candidate_patches`), None when no gate is in effect."""
        return self._per_candidate_rule(candidate_reach, hu_slices, pixel_spacing_mm, exclude)

    def decide_from_components(self, filter_logits: Any, components: tuple[np.ndarray, np.ndarray, int],
                               shape: tuple[int, int], pixel_spacing_mm: Any, exclude: np.ndarray | None,
                               threshold_hu: float) -> tuple[np.ndarray, np.ndarray | None] | None:
        """:meth:`decide` for one slice whose calcium components are already labelled (8-connected at
        ``threshold_hu``, sparse: ``scoring.skeleton.slice_components``), without labelling it again; None
        when that cannot be the same decision (the gate's rule differs, or regions grow to components,
        which needs the reach) and the caller should use :meth:`decide`."""
        rule = self.candidate_rule
        if (rule is None or self.completes_components or rule.connectivity != 8
                or rule.threshold_hu != float(threshold_hu) or self.patch_grid is None):
            return None
        from cacstream.engine.inference.candidates import sparse_candidate_patches

        idx, lab, n = components
        area = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1])
        cand = sparse_candidate_patches(idx, lab, n, shape, area, rule, self.spec.model("filter").input_shape[-1],
                                        self.patch_grid, exclude)[None]
        return self.probabilities(filter_logits, cand), self.patch_flags(filter_logits, cand)

    @property
    def skeletal_gate(self) -> bool:
        """Whether bone-sized calcium is withdrawn from the candidates (``skeletal_gate_mm3`` set and a
        candidate gate in effect): see :meth:`skeletal_exclusion`."""
        return self.skeletal_gate_mm3 is not None and self.candidate_rule is not None

    def skeletal_exclusion(self, hu: Any, geometry: Any) -> np.ndarray | None:
        """(N, H, W) bool for a whole series (slices in spatial order): the calcium in 3D components
        larger than ``skeletal_gate_mm3``, which the scorer's skeletal check would exclude whatever the
        U-Net labelled there; None without the skeletal gate. Pass it as ``exclude``."""
        if not self.skeletal_gate:
            return None
        from cacstream.engine.inference.candidates import skeletal_calcium

        assert self.candidate_rule is not None and self.skeletal_gate_mm3 is not None
        return skeletal_calcium(_host(hu), float(geometry.voxel_volume_mm3), float(self.skeletal_gate_mm3),
                                self.candidate_rule.threshold_hu)

    @property
    def completes_components(self) -> bool:
        """Whether segmentation regions grow to the whole calcium components of flagged patches
        (region mode ``components`` with tiles and a candidate gate, ``regions.py``)."""
        return self.regions.mode == "components" and self.tile_grid is not None and self.candidate_rule is not None

    def _per_candidate_rule(self, fn: Any, hu_slices: Any, pixel_spacing_mm: Any, exclude: Any = None,
                            ) -> np.ndarray | None:
        """``fn(hu, spacing, served, grid, rule, exclude)`` over a stack or a list of slices of any sizes."""
        if self.candidate_rule is None:
            return None
        if pixel_spacing_mm is None:
            raise ValueError("these weights gate the slice filter by calcium candidates, which needs the "
                             "slices' pixel spacing (a lesion must reach 1 mm²); pass pixel_spacing_mm")
        grid = self.patch_grid
        assert grid is not None  # _gate_rule refuses a gate without patch logits
        served = self.spec.model("filter").input_shape[-1]
        if isinstance(hu_slices, (list, tuple)):  # slices of any sizes, each with its own spacing
            spacing = np.asarray(pixel_spacing_mm, dtype=np.float64)
            per = [spacing] * len(hu_slices) if spacing.shape == (2,) else list(spacing)
            if len(per) != len(hu_slices):
                raise ValueError(f"{len(per)} pixel spacings for {len(hu_slices)} slices")
            ex = [None] * len(hu_slices) if exclude is None else list(exclude)
            if not hu_slices:
                return fn(np.zeros((0, 1, 1), np.float32), (1.0, 1.0), served, grid, self.candidate_rule)
            return np.concatenate([fn(_host(h), sp, served, grid, self.candidate_rule, e)
                                   for h, sp, e in zip(hu_slices, per, ex)])
        return fn(_host(hu_slices), pixel_spacing_mm, served, grid, self.candidate_rule, exclude)

    def decide(self, filter_logits: Any, hu_slices: Any, pixel_spacing_mm: Any = None, exclude: Any = None,
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Served filter output of ``hu_slices`` → (probabilities (N,), segmentation regions (N, G, G)
        bool or None). The regions are the flagged patches, grown to the whole calcium components in
        them when :attr:`completes_components` (so a lesion is never cut at a core border).
        ``exclude``: calcium that cannot be a candidate ((N, H, W) bool; :meth:`skeletal_exclusion`)."""
        if self.completes_components:
            reach = self.candidate_reach(hu_slices, pixel_spacing_mm, exclude)
            assert reach is not None
            cand = reach_diagonal(reach)
            flags = self.patch_flags(filter_logits, cand)
            return self.probabilities(filter_logits, cand), None if flags is None else complete_components(flags, reach)
        cand = self.candidate_patches(hu_slices, pixel_spacing_mm, exclude)
        return self.probabilities(filter_logits, cand), self.patch_flags(filter_logits, cand)

    def probabilities(self, filter_logits: Any, candidates: np.ndarray | None = None) -> np.ndarray:
        """Slice-filter logits -> probability that the slice holds coronary calcium, (N,) float64. With
        ``candidates`` (the gate), the slice logit is the maximum over the candidate patches."""
        from cacstream.engine.backends.base import to_numpy_f32

        slice_logits, patches = split_filter_logits(to_numpy_f32(filter_logits))
        if candidates is not None and patches is not None:
            return sigmoid(gated_slice_logits(patches, candidates))
        return sigmoid(slice_logits)

    def patch_flags(self, filter_logits: Any, candidates: np.ndarray | None = None) -> np.ndarray | None:
        """Slice-filter logits -> (N, G, G) bool: the patches that pass the operating threshold (and hold
        a candidate, under the gate); None for a filter without patch logits. A flagged slice always
        has a flagged patch (its slice logit is the maximum of its patch logits); should rounding ever
        break that, its top (candidate) patch is taken."""
        from cacstream.engine.backends.base import to_numpy_f32

        slice_logits, patches = split_filter_logits(to_numpy_f32(filter_logits))
        if patches is None:
            return None
        thr = self.filter_threshold
        flags = sigmoid(patches) >= thr
        if candidates is not None:
            flags &= np.asarray(candidates, dtype=bool).reshape(flags.shape)
            slice_logits = gated_slice_logits(patches, candidates)
            patches = np.where(np.asarray(candidates, dtype=bool).reshape(patches.shape), patches, -np.inf)
        lost = (sigmoid(slice_logits) >= thr) & ~flags.any(axis=(1, 2))
        for i in np.nonzero(lost)[0]:
            flags[i].flat[int(np.argmax(patches[i]))] = True
        return flags

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
        return split_filter_logits(self._filter_result(hu_slices)[0])[0]

    def filter_output(self, hu_slices: Any) -> np.ndarray:
        """The served filter output (N,) or (N, 1 + G²) float32: what :meth:`decide` takes."""
        return self._filter_result(hu_slices)[0]

    def _filter_result(self, hu_slices: Any) -> tuple[np.ndarray, float]:
        """The served filter output, (N,) or (N, 1 + G²) float32 (see ``regions.split_filter_logits``)."""
        from cacstream.engine.backends.base import to_numpy_f32

        if isinstance(hu_slices, (list, tuple)) and len({tuple(s.shape) for s in hu_slices}) > 1:
            groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for i, s in enumerate(hu_slices):
                groups[tuple(s.shape)].append(i)
            out: np.ndarray | None = None
            ms = 0.0
            for idx in groups.values():
                part, t = self._filter_result([hu_slices[i] for i in idx])
                if out is None:
                    out = np.zeros((len(hu_slices), *part.shape[1:]), np.float32)
                out[idx] = part
                ms += t
            assert out is not None
            return out, ms
        x = self.preprocess(hu_slices, "filter")
        res = self.infer(x, "filter")
        return to_numpy_f32(res.logits), res.elapsed_ms

    def filter_probabilities(self, hu_slices: Any, pixel_spacing_mm: Any = None) -> np.ndarray:
        """Probability (float64, (N,)) that each HU slice holds coronary calcium (``pixel_spacing_mm``:
        see :meth:`candidate_patches`; needed when the weights gate by candidates)."""
        return self.filter_decisions(hu_slices, pixel_spacing_mm)[0]

    def filter_decisions(self, hu_slices: Any, pixel_spacing_mm: Any = None, exclude: Any = None,
                         ) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N,), segmentation regions (N, G, G) or None) from one filter pass
        (see :meth:`decide`)."""
        return self.decide(self._filter_result(hu_slices)[0], hu_slices, pixel_spacing_mm, exclude)

    def filter_flags(self, hu_slices: Any, pixel_spacing_mm: Any = None) -> np.ndarray:
        """Slices to segment: probability >= the weights' operating threshold, (N,) bool."""
        return self.filter_probabilities(hu_slices, pixel_spacing_mm) >= self.filter_threshold

    def segment(self, hu_slices: Any, regions: Any = None) -> np.ndarray:
        """uint8 artery labels (N, H, W) at the slices' native size (0 background, 1 LM .. 4 RCA).

        ``regions``: the filter's flagged patches per slice ((N, G, G) bool, from
        :meth:`filter_decisions`). With a tile grid set up, only the cores around them are segmented
        and the rest of each slice is background; without one (or regions None) whole slices are."""
        stack = _as_stack(hu_slices)
        n = int(stack.shape[0])
        if n == 0:
            return np.zeros(tuple(stack.shape), np.uint8)
        native = (int(stack.shape[1]), int(stack.shape[2]))
        x = self.preprocess(stack, "segmenter")
        grid = self.tile_grid
        if grid is None or regions is None:
            res = self.infer(x, "segmenter")
            return self.labels_from_logits(res.logits, native)
        if len(regions) != n:
            raise ValueError(f"{len(regions)} region maps for {n} slices")
        plan = plan_tiles([np.asarray(r) for r in regions], grid)
        served = np.zeros((n, grid.served, grid.served), np.uint8)
        if plan:
            assert self.tile_backend is not None
            res = self.tile_backend.infer(cut_tiles(x, plan, grid))
            served = paste_cores(self.labels_from_logits(res.logits, (grid.tile, grid.tile)), plan, n, grid)
        return _served_to_native(served, grid.served, native)

    def region_pixels(self, regions: np.ndarray, native_hw: tuple[int, int]) -> np.ndarray | None:
        """(N, H, W) bool: the native pixels whose labels :meth:`segment` keeps for ``regions`` ((N, G, G)
        flagged patches): the cores it segments. None without a tile grid (whole slices are segmented).
        A core's labels come from its own tile only, so the labels of a smaller set of regions are the
        labels of a larger set masked by this (what the skeletal gate uses at series completion)."""
        grid = self.tile_grid
        if grid is None:
            return None
        n = len(regions)
        plan = plan_tiles([np.asarray(r) for r in regions], grid)
        ones = np.ones((len(plan), grid.tile, grid.tile), np.uint8)
        served = paste_cores(ones, plan, n, grid) if plan else np.zeros((n, grid.served, grid.served), np.uint8)
        return _served_to_native(served, grid.served, (int(native_hw[0]), int(native_hw[1]))) > 0

    def close(self) -> None:
        self.filter_backend.close()
        self.segmenter_backend.close()
        if self.tile_backend is not None:
            self.tile_backend.close()


def _served_to_native(served: np.ndarray, side: int, native: tuple[int, int]) -> np.ndarray:
    """(N, side, side) → (N, H, W) by nearest-exact resampling (the labels' paste-back rule)."""
    if (side, side) == native:
        return served
    rows, cols = nearest_indices(side, native[0]), nearest_indices(side, native[1])
    return np.ascontiguousarray(served[:, rows][:, :, cols])


def _host(hu: Any) -> np.ndarray:
    """HU slices (host, torch or CuPy) as a host array, for the host-side candidate labelling."""
    if isinstance(hu, np.ndarray):
        return hu
    if array_family(hu).startswith("torch"):
        return hu.detach().cpu().numpy()
    if isinstance(hu, (list, tuple)):
        return np.stack([_host(h) for h in hu])
    return hu.get() if hasattr(hu, "get") else np.asarray(hu)


def _gate_rule(spec: WeightsSpec, gate: bool | None, rule: CandidateRule | None) -> CandidateRule | None:
    """The candidate rule in effect: the weights' ``slice_filter.candidate_gate`` unless ``gate`` says
    otherwise; ``rule`` (the scoring config's) replaces the recorded one."""
    recorded = spec.model("filter").config.get("candidate_gate")
    use = bool(recorded) if gate is None else gate
    if not use:
        return None
    if not spec.model("filter").config.get("output", {}).get("patch_grid"):
        raise WeightsFolderError(f"{spec.model('filter').where}: a candidate gate needs a filter with patch logits")
    if rule is not None:
        return rule
    return CandidateRule.from_dict(recorded) if isinstance(recorded, dict) else CandidateRule()


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


def _make_tile_backend(choice: BackendChoice, spec: ModelSpec, tile: int, *, batch_size: int, threads: int | None,
                       engine_dir: Path | None, build_engines: bool, cuda_graphs: bool, strict: bool,
                       modules: dict[str, Any]) -> Backend:
    """The segmenter once more, at ``tile``² inputs: the same module for torch; for ONNX Runtime and
    TensorRT a copy of its ONNX (any precision) with the tile size declared, made once per source file
    in the engine folder (``regions.resized_onnx``)."""
    # a flagged slice holds ~2-5 tiles; TensorRT keeps the engines' batch profile (`build-engines --max-batch`)
    tile_batch = batch_size if choice.name == "tensorrt" else 4 * batch_size
    if choice.name == "torch":
        torch_spec = dataclasses.replace(spec, input_shape=(spec.input_shape[0], tile, tile))
        return _make_backend(choice, torch_spec, tile_batch, threads, engine_dir, build_engines, cuda_graphs, strict,
                             modules)
    from cacstream.engine.inference.engines import default_engine_dir

    edir = Path(engine_dir) if engine_dir else default_engine_dir(spec.directory)
    tile_spec, _ = tile_model(spec, spec.onnx_path(choice.precision, (edir,)), choice.precision, tile, edir)
    return _make_backend(choice, tile_spec, tile_batch, threads, edir, build_engines, cuda_graphs, strict, modules)


def tile_model(spec: ModelSpec, base: Path, precision: str, tile: int, engine_dir: Path) -> tuple[ModelSpec, Path]:
    """The segmenter ``spec`` at ``tile``² inputs and its ONNX file (``base`` resized, made once in
    ``engine_dir``): what the runtime loads and what `cacstream build-engines` pre-builds, named alike."""
    name = f"{base.stem}.tile{tile}.onnx"
    _ensure_tile_onnx(base, engine_dir / name, tile)
    tile_spec = dataclasses.replace(
        spec, section=f"{spec.section}_tile{tile}", input_shape=(spec.input_shape[0], tile, tile), onnx=name,
        onnx_variants={precision: name}, config={k: v for k, v in spec.config.items() if k != "onnx_on_first_use"})
    return tile_spec, engine_dir / name


def _ensure_tile_onnx(base: Path, dst: Path, tile: int) -> None:
    """``dst`` = ``base`` resized to ``tile``², rebuilt when ``base`` changed (its SHA-256 is kept beside)."""
    import json

    from cacstream.engine.file_hash import file_sha256
    from cacstream.engine.inference.regions import resized_onnx

    side = dst.with_name(dst.name + ".json")
    digest = file_sha256(base)
    try:
        if dst.is_file() and json.loads(side.read_text()).get("source_sha256") == digest:
            return
    except (OSError, ValueError):
        pass
    dst.parent.mkdir(parents=True, exist_ok=True)
    resized_onnx(base, dst, tile)
    side.write_text(json.dumps({"source": base.name, "source_sha256": digest, "tile": tile}, indent=1))


def _torch_modules(directory: Path) -> dict[str, Any]:
    """The PyTorch modules of both models, rebuilt from the weights folder by the training code's loader."""
    from cacstream.training.weights import WeightsError, load_weights

    try:
        bundle = load_weights(directory)
    except WeightsError as e:
        raise WeightsFolderError(str(e)) from None
    assert bundle.slice_filter is not None and bundle.segmenter is not None
    from cacstream.training.models.classifier import served_filter

    return {"filter": served_filter(bundle.slice_filter.model), "segmenter": bundle.segmenter.model}
