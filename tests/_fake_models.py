"""A deterministic stand-in for ``CalciumModels`` (docs/CONTRACTS.md, "Model runtime") for pipeline tests.

It answers the runtime's calls with rules a test can recompute independently: a slice is "flagged" when
it holds a pixel in [130, 640) HU (calcium that is not the test series' 650+ HU bone), and the
segmenter labels those pixels by image quadrant (LM top-left, LAD top-right, LCX bottom-left, RCA
bottom-right). It records every batch it was given, so tests can check batching across series.
"""

from __future__ import annotations

import threading

import numpy as np

from cacstream.engine.report.json_report import ModelInfo


def fake_labels(hu: np.ndarray) -> np.ndarray:
    """The segmenter rule on (..., H, W) HU: quadrant labels on [130, 640) HU pixels."""
    hu = np.asarray(hu)
    h, w = hu.shape[-2:]
    rows = np.arange(h)[:, None] >= h // 2
    cols = np.arange(w)[None, :] >= w // 2
    quadrant = (1 + cols.astype(np.uint8) + 2 * rows.astype(np.uint8)).astype(np.uint8)
    calcium = (hu >= 130) & (hu < 640)
    return np.where(calcium, quadrant, 0).astype(np.uint8)


def fake_flags(hu: np.ndarray) -> np.ndarray:
    """The filter rule on (N, H, W): any [130, 640) HU pixel."""
    return ((hu >= 130) & (hu < 640)).reshape(len(hu), -1).any(axis=1)


class FakeRuntime:
    filter_threshold = 0.5

    def __init__(self) -> None:
        self.info = ModelInfo(weights_id="fake-rules-1", backend="numpy", precision="fp32", device="cpu",
                              filter_threshold=0.5)
        self.filter_batches: list[int] = []
        self.segment_batches: list[int] = []
        self._lock = threading.Lock()

    def filter_probabilities(self, hu_slices: np.ndarray, pixel_spacing_mm: object = None) -> np.ndarray:
        with self._lock:
            self.filter_batches.append(len(hu_slices))
        return np.where(fake_flags(np.asarray(hu_slices)), 0.9, 0.1)

    def filter_decisions(self, hu_slices: np.ndarray, pixel_spacing_mm: object = None) -> tuple[np.ndarray, None]:
        """A filter without patch logits (so no candidate gate either): whole slices are segmented.
        ``pixel_spacing_mm``: one (row, column) pair per slice, as the pipeline passes it."""
        if pixel_spacing_mm is not None:
            assert len(pixel_spacing_mm) == len(hu_slices)
        return self.filter_probabilities(hu_slices), None

    def segment(self, hu_slices: np.ndarray, regions: object = None) -> np.ndarray:
        assert regions is None, "a filter without patch logits has no regions"
        with self._lock:
            self.segment_batches.append(len(hu_slices))
        return fake_labels(np.asarray(hu_slices))


def fake_models():  # noqa: ANN201
    from cacstream.engine.pipeline.models import ModelStages

    return ModelStages(FakeRuntime())
