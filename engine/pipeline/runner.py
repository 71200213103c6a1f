"""Concurrent per-slice stages with bounded queues, shared by `cacstream score` and `cacstream watch`.

::

    submit(job) ─► [decode q] ─► decode workers (pydicom → HU)
                                   │ threshold mode ──────────────────────────────┐
                                   ▼ model mode                                   ▼
                    [filter batcher] ─► slice filter ─► flagged? ─► [segment batcher] ─► segmenter
                                                         │ no                      │
                                                         ▼                         ▼
                                                    [agatston q] ─► Agatston workers ─► on_outcome(outcome)

Threads are enough: pydicom's decoders, numpy, the Numba labeller (nogil) and torch / ONNX Runtime
release the GIL for the heavy part. Every queue is bounded, so a slow stage slows ``submit`` down
(backpressure) instead of filling memory. The model stages batch slices ACROSS series: a batch
leaves when it is full or ``max_batch_wait_ms`` after its first slice arrived. Every failure becomes
an outcome carrying the error, never a dead thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.pipeline.batching import MaxWaitBatcher
from cacstream.engine.pipeline.models import ModelStages
from cacstream.engine.pipeline.stages import SliceJob, SliceOutcome, decode_hu, pixel_spacing, score_slice

log = logging.getLogger("cacstream.pipeline")

_STOP = object()


@dataclass(frozen=True)
class PipelineConfig:
    """Knobs of the concurrent stages.

    Attributes:
        decode_threads: pydicom decode workers (2 on a 2-core workstation; more for network shares).
        agatston_threads: Numba Agatston workers (1 is plenty: a slice takes about a millisecond).
        batch_size: slices per model call (filter and segmenter).
        max_batch_wait_ms: how long a partial batch waits for more slices: 0 = lowest latency,
            larger = fuller batches (GPU throughput). The one latency/throughput knob.
        queue_size: capacity of each queue between stages (backpressure bound).
        with_masks: keep per-slice lesion label maps (needed for the DICOM SEG and the key image).
    """

    decode_threads: int = 2
    agatston_threads: int = 1
    batch_size: int = 16
    max_batch_wait_ms: float = 50.0
    queue_size: int = 64
    with_masks: bool = True


@dataclass
class _Item:
    job: SliceJob
    hu: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    labels: np.ndarray | None = None
    flagged: bool | None = None
    probability: float | None = None
    regions: np.ndarray | None = None  # the filter's flagged patches (G, G), when it has patch logits
    filter_logits: np.ndarray | None = None  # its served output, kept for the skeletal gate at completion


class SlicePipeline:
    """Start, submit slices, receive :class:`SliceOutcome` objects through ``on_outcome``, close."""

    def __init__(
        self,
        agatston: AgatstonConfig,
        on_outcome: Callable[[SliceOutcome], None],
        *,
        models: ModelStages | None = None,
        config: PipelineConfig = PipelineConfig(),
    ) -> None:
        self.agatston = agatston
        self.models = models
        self.config = config
        self._on_outcome = on_outcome
        self._decode_q: queue.Queue[object] = queue.Queue(maxsize=config.queue_size)
        self._score_q: queue.Queue[object] = queue.Queue(maxsize=config.queue_size)
        wait_s = config.max_batch_wait_ms / 1e3
        self._filter = MaxWaitBatcher[_Item](config.batch_size, wait_s, config.queue_size)
        self._segment = MaxWaitBatcher[_Item](config.batch_size, wait_s, config.queue_size)
        self._threads: dict[str, list[threading.Thread]] = {}
        self._abort = threading.Event()
        self._started = False
        self._closed = False
        self._lock = threading.Lock()
        self.counts = {"submitted": 0, "decoded": 0, "filtered": 0, "flagged": 0, "segmented": 0, "scored": 0,
                       "errors": 0}
        self.batch_sizes: list[int] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SlicePipeline:
        if self._started:
            return self
        self._started = True

        def spawn(name: str, target: Callable[[], None], n: int) -> None:
            self._threads[name] = [threading.Thread(target=self._guard(target), name=f"cac-{name}-{i}", daemon=True)
                                   for i in range(max(1, n))]
            for t in self._threads[name]:
                t.start()

        spawn("decode", self._decode_loop, self.config.decode_threads)
        if self.models is not None:
            spawn("filter", self._filter_loop, 1)
            spawn("segment", self._segment_loop, 1)
        spawn("agatston", self._agatston_loop, self.config.agatston_threads)
        return self

    def submit(self, job: SliceJob) -> None:
        """Queue a slice; blocks while the decode queue is full (backpressure)."""
        if self._closed:
            raise RuntimeError("pipeline is closed")
        with self._lock:
            self.counts["submitted"] += 1
        self._decode_q.put(job)

    def close(self, drain: bool = True) -> None:
        """Stop the stages in order. ``drain=False`` drops queued work (outcomes of dropped slices are
        not delivered); ``drain=True`` finishes every submitted slice first."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        if not drain:
            self._abort.set()
        for _ in self._threads["decode"]:
            self._decode_q.put(_STOP)
        self._join("decode")
        if self.models is not None:
            self._filter.close()
            self._join("filter")
            self._segment.close()
            self._join("segment")
        for _ in self._threads["agatston"]:
            self._score_q.put(_STOP)
        self._join("agatston")

    def __enter__(self) -> SlicePipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close(drain=exc[0] is None)

    def depths(self) -> dict[str, int]:
        """Current queue depths (for the status line and the metrics endpoint)."""
        return {"decode": self._decode_q.qsize(), "filter": self._filter.qsize(),
                "segment": self._segment.qsize(), "agatston": self._score_q.qsize()}

    # ------------------------------------------------------------------ stages
    def _join(self, name: str) -> None:
        for t in self._threads.get(name, []):
            t.join()

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException:  # a stage must never die silently
                log.exception("pipeline stage crashed")
                raise
        return run

    def _fail(self, job: SliceJob, exc: BaseException, timings: dict[str, float] | None = None) -> None:
        with self._lock:
            self.counts["errors"] += 1
        self._deliver(SliceOutcome(job=job, error=exc, timings_ms=dict(timings or {})))

    def _deliver(self, outcome: SliceOutcome) -> None:
        try:
            self._on_outcome(outcome)
        except Exception:
            log.exception("outcome consumer failed for %s", outcome.job.series_uid)

    def _decode_loop(self) -> None:
        while True:
            job = self._decode_q.get()
            if job is _STOP:
                return
            if self._abort.is_set():
                continue
            assert isinstance(job, SliceJob)
            t0 = time.perf_counter()
            try:
                hu = decode_hu(job.header)
                pixel_spacing(job.header)  # no spacing, no lesion areas: fail here, before any model runs
            except Exception as exc:
                self._fail(job, exc, {"decode": (time.perf_counter() - t0) * 1e3})
                continue
            item = _Item(job, hu, {"decode": (time.perf_counter() - t0) * 1e3})
            with self._lock:
                self.counts["decoded"] += 1
            if self.models is None:
                self._score_q.put(item)
            else:
                self._filter.put(item)

    def _filter_loop(self) -> None:
        assert self.models is not None
        while (batch := self._filter.next_batch()) is not None:
            if self._abort.is_set():
                continue
            t0 = time.perf_counter()
            try:
                probs, regions, logits = self.models.filter_with_logits(
                    [it.hu for it in batch], [pixel_spacing(it.job.header) for it in batch])
            except Exception as exc:
                for it in batch:
                    self._fail(it.job, exc, it.timings)
                continue
            share = (time.perf_counter() - t0) * 1e3 / len(batch)
            threshold = self.models.filter_threshold
            with self._lock:
                self.counts["filtered"] += len(batch)
                self.batch_sizes.append(len(batch))
            gate = self.models.skeletal_gate
            for it, p, reg, raw in zip(batch, probs, regions, logits):
                it.timings["filter"] = share
                it.probability = float(p)
                it.regions = reg
                it.flagged = bool(p >= threshold)
                it.filter_logits = raw if gate and it.flagged else None
                if it.flagged:
                    with self._lock:
                        self.counts["flagged"] += 1
                    self._segment.put(it)
                else:
                    it.labels = np.zeros(it.hu.shape, dtype=np.uint8)  # unflagged: no coronary calcium
                    self._score_q.put(it)

    def _segment_loop(self) -> None:
        assert self.models is not None
        while (batch := self._segment.next_batch()) is not None:
            if self._abort.is_set():
                continue
            t0 = time.perf_counter()
            try:
                labels = self.models.segment([it.hu for it in batch], [it.regions for it in batch])
            except Exception as exc:
                for it in batch:
                    self._fail(it.job, exc, it.timings)
                continue
            share = (time.perf_counter() - t0) * 1e3 / len(batch)
            with self._lock:
                self.counts["segmented"] += len(batch)
            for it, lab in zip(batch, labels):
                it.timings["segment"] = share
                it.labels = lab
                self._score_q.put(it)

    def _agatston_loop(self) -> None:
        while True:
            it = self._score_q.get()
            if it is _STOP:
                return
            if self._abort.is_set():
                continue
            assert isinstance(it, _Item)
            try:
                kept = None if it.filter_logits is None else (it.filter_logits, it.regions)
                outcome = score_slice(it.job, it.hu, it.labels, self.agatston, with_mask=self.config.with_masks,
                                      flagged=it.flagged, probability=it.probability, timings_ms=it.timings,
                                      filter_output=kept)
            except Exception as exc:
                self._fail(it.job, exc, it.timings)
                continue
            with self._lock:
                self.counts["scored"] += 1
            self._deliver(outcome)
