"""The models as pipeline stages: slice filter and segmenter over batches of HU slices from any series.

A thin layer over ``cacstream.engine.inference.runtime.CalciumModels`` (docs/CONTRACTS.md, "Model
runtime"): it loads the weights once per process and groups a batch by slice size, because slices of
different series (512², 768², …) may share a batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from cacstream.engine.config import ScoreConfig
from cacstream.engine.report.json_report import ModelInfo


class ModelsUnavailable(RuntimeError):
    """Model mode cannot run here (no weights, or no model runtime in this build); the message says why."""


def _by_shape(slices: list[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, s in enumerate(slices):
        groups[tuple(s.shape)].append(i)
    return groups


@dataclass
class ModelStages:
    """Slice filter + segmenter of one loaded weights folder."""

    runtime: Any  # CalciumModels

    @property
    def info(self) -> ModelInfo:
        return self.runtime.info

    @property
    def filter_threshold(self) -> float:
        return float(self.runtime.filter_threshold)

    def filter_probabilities(self, hu_slices: list[np.ndarray],
                             pixel_spacings: list[tuple[float, float]] | None = None) -> np.ndarray:
        """Probability that each slice holds coronary calcium, (N,) float."""
        return self.filter(hu_slices, pixel_spacings)[0]

    def filter(self, hu_slices: list[np.ndarray], pixel_spacings: list[tuple[float, float]] | None = None,
               ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """(probabilities (N,), each slice's flagged filter patches (G, G) bool or None) in one pass.
        ``pixel_spacings``: each slice's (row, column) spacing, for weights that gate the filter by
        calcium candidates (``inference/candidates.py``)."""
        probs, regions, _ = self.filter_with_logits(hu_slices, pixel_spacings)
        return probs, regions

    def filter_with_logits(self, hu_slices: list[np.ndarray], pixel_spacings: list[tuple[float, float]] | None = None,
                           ) -> tuple[np.ndarray, list[np.ndarray | None], list[np.ndarray | None]]:
        """:meth:`filter` plus, under the skeletal gate, each slice's served filter output ((1 + G²,)
        float32), which completion decides on again (``pipeline/skeletal_gate.py``); None otherwise."""
        out = np.zeros(len(hu_slices), dtype=np.float64)
        regions: list[np.ndarray | None] = [None] * len(hu_slices)
        logits: list[np.ndarray | None] = [None] * len(hu_slices)
        gate = self.skeletal_gate
        for idx in _by_shape(hu_slices).values():
            stack = np.stack([hu_slices[i] for i in idx]).astype(np.float32, copy=False)
            spacing = None if pixel_spacings is None else [pixel_spacings[i] for i in idx]
            if gate:
                raw = np.asarray(self.runtime.filter_output(stack), np.float32)
                probs, flags = self.runtime.decide(raw, stack, spacing)
            else:
                raw = None
                probs, flags = self.runtime.filter_decisions(stack, spacing)
            out[idx] = np.asarray(probs, dtype=np.float64).reshape(-1)
            for j, i in enumerate(idx):
                if raw is not None:
                    logits[i] = raw[j].reshape(-1).copy()
                if flags is not None:
                    regions[i] = flags[j]
        return out, regions, logits

    @property
    def skeletal_gate(self) -> bool:
        """Whether flagged slices are decided again at series completion without bone-sized calcium."""
        return bool(getattr(self.runtime, "skeletal_gate", False))

    @property
    def gate_decider(self) -> Any:
        """The models as ``finalize_series(skeletal_gate=...)`` takes them; None without the gate."""
        return self.runtime if self.skeletal_gate else None

    def segment(self, hu_slices: list[np.ndarray], regions: list[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """uint8 artery labels (0 background, 1..4) per slice, at each slice's own size. A slice with
        flagged patches in ``regions`` is segmented around them only (``inference/regions.py``)."""
        out: list[np.ndarray | None] = [None] * len(hu_slices)
        regions = regions if regions is not None else [None] * len(hu_slices)
        groups: dict[tuple[object, ...], list[int]] = defaultdict(list)
        for i, s in enumerate(hu_slices):
            groups[(tuple(s.shape), regions[i] is None)].append(i)
        for (_, whole), idx in groups.items():
            stack = np.stack([hu_slices[i] for i in idx]).astype(np.float32, copy=False)
            labels = np.asarray(self.runtime.segment(stack, None if whole else [regions[i] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = labels[j].astype(np.uint8, copy=False)
        return out  # type: ignore[return-value]


def load_models(config: ScoreConfig) -> ModelStages:
    """Load the weights named by the config (``--weights``, $CACSTREAM_WEIGHTS, packaged default)."""
    from cacstream.engine.weights_location import WeightsNotFound, resolve_weights_dir

    try:
        weights = resolve_weights_dir(config.weights_dir)
    except WeightsNotFound as exc:
        raise ModelsUnavailable(str(exc)) from None
    try:
        from cacstream.engine.inference.runtime import CalciumModels
    except ImportError as exc:
        raise ModelsUnavailable(
            f"weights found at {weights}, but the model runtime is not part of this build ({exc}); "
            "use --mode threshold") from None
    from cacstream.engine.inference.regions import RegionConfig

    from cacstream.engine.inference.candidates import CandidateRule

    skeletal = config.agatston.skeletal_component_mm3 if config.skeletal_gate else None
    runtime = CalciumModels.load(weights, backend=config.backend, precision=config.precision,
                                 batch_size=config.batch_size, regions=RegionConfig(mode=config.segment_regions),
                                 candidate_rule=CandidateRule.from_agatston(config.agatston),
                                 skeletal_gate_mm3=skeletal)
    return ModelStages(runtime)
