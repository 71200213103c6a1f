"""The shared per-slice stages (engine/pipeline): batching with a maximum wait, concurrent stages with
bounded queues, per-slice scoring summed at completion == the whole-volume Agatston reference."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.pipeline.batching import MaxWaitBatcher
from cacstream.engine.pipeline.finalize import SeriesFailed, finalize_series
from cacstream.engine.pipeline.runner import PipelineConfig, SlicePipeline
from cacstream.engine.pipeline.scorer import score_series
from cacstream.engine.pipeline.stages import UNASSIGNED_LABEL, SliceJob, SliceOutcome
from cacstream.engine.scoring.agatston import score_volume
from cacstream.engine.series import read_volume, scan_path

from _fake_models import fake_labels, fake_models
from _stream_series import write_series


@pytest.fixture(scope="module")
def three_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("series")
    write_series(root / "a", 1, n_slices=10)
    write_series(root / "b", 2, n_slices=9, thickness_mm=2.5, spacing_mm=0.6)
    write_series(root / "c", 3, n_slices=11, size=48)
    return root


def test_batcher_full_batch_leaves_at_once_partial_batch_waits_at_most_max_wait() -> None:
    b: MaxWaitBatcher[int] = MaxWaitBatcher(max_size=4, max_wait_s=0.3)
    for i in range(6):
        b.put(i)
    t = time.monotonic()
    assert b.next_batch() == [0, 1, 2, 3]
    assert time.monotonic() - t < 0.1  # full: no waiting
    t = time.monotonic()
    assert b.next_batch() == [4, 5]
    waited = time.monotonic() - t
    assert 0.25 <= waited < 1.0  # partial: waited for more, then left
    b.close()
    assert b.next_batch() is None


def test_batcher_zero_wait_and_late_items_join_the_open_batch() -> None:
    b: MaxWaitBatcher[int] = MaxWaitBatcher(max_size=8, max_wait_s=0.5)
    b.put(1)
    threading.Timer(0.1, lambda: b.put(2)).start()
    assert b.next_batch() == [1, 2]  # the second arrived within the wait
    z: MaxWaitBatcher[int] = MaxWaitBatcher(max_size=8, max_wait_s=0.0)
    z.put(1)
    threading.Timer(0.1, lambda: z.put(2)).start()
    assert z.next_batch() == [1]
    assert z.next_batch() == [2]


def test_per_slice_scoring_equals_whole_volume_reference(three_series: Path) -> None:
    """Slices scored one at a time (any order, several threads) and summed at completion give exactly
    the whole-volume Numba scorer's lesions and totals."""
    scan = scan_path(three_series)
    assert len(scan.series) == 3
    for series in scan.series:
        ref = score_volume(read_volume(series).hu, series.geometry)
        got = score_series(series, config=PipelineConfig(decode_threads=3)).scored.result
        assert got.lesions == ref.lesions
        assert got.agatston_total == ref.agatston_total
        assert got.volume_mm3_total == ref.volume_mm3_total
        assert got.risk_category == ref.risk_category


def test_lesion_label_maps_cover_exactly_the_lesion_pixels(three_series: Path) -> None:
    series = scan_path(three_series).series[0]
    hu = read_volume(series).hu
    score = score_series(series)
    for i in range(series.geometry.n_slices):
        lm = score.label_maps.get(i)
        lesions = [les for les in score.scored.result.lesions if les.slice_index == i]
        if not lesions:
            assert lm is None
            continue
        assert int((lm > 0).sum()) == sum(les.n_pixels for les in lesions)
        assert set(np.unique(lm)) <= {0, UNASSIGNED_LABEL}
        assert np.all(hu[i][lm > 0] >= 130)


def test_model_path_batches_across_series_and_matches_reference_with_labels(three_series: Path) -> None:
    """Filter and segmenter see slices of several series in one batch; the result equals score_volume
    with the segmenter's labels on flagged slices (an independent recomputation of the same rules)."""
    scan = scan_path(three_series)
    models = fake_models()
    outcomes: dict[str, dict] = {s.uid: {} for s in scan.series}
    lock = threading.Lock()

    def keep(o: SliceOutcome) -> None:
        with lock:
            outcomes[o.job.series_uid][o.key] = o

    cfg = PipelineConfig(decode_threads=2, batch_size=8, max_batch_wait_ms=200)
    with SlicePipeline(AgatstonConfig(), keep, models=models, config=cfg) as pipe:
        for series in scan.series:  # all series submitted at once, interleaved by the queue
            for h in series.slices:
                pipe.submit(SliceJob(series.uid, h))
    runtime = models.runtime
    assert max(runtime.filter_batches) > 1
    assert sum(runtime.filter_batches) == sum(len(s.slices) for s in scan.series)
    claims_seen = 0
    for series in scan.series:
        hu = read_volume(series).hu
        labels = fake_labels(hu)
        flags = labels.reshape(len(hu), -1).any(axis=1)
        labels[~flags] = 0
        ref = score_volume(hu, series.geometry, labels)
        got = finalize_series(series, outcomes[series.uid], mode="model", agatston=AgatstonConfig(),
                              model=models.info)
        assert got.scored.result.lesions == ref.lesions
        assert got.scored.result.agatston_per_artery == ref.agatston_per_artery
        # the claim rule (per slice, as slices arrive) and the skeletal check exclude the same lesions
        assert got.scored.result.excluded_lesions == ref.excluded_lesions
        claims_seen += sum(why == "partial_claim" for _, why in ref.excluded_lesions)
        assert got.scored.slices_flagged == int(flags.sum())
        for i, lm in got.label_maps.items():
            assert set(np.unique(lm)) <= {0, 1, 2, 3, 4}
    assert claims_seen > 0  # the fake segmenter leaves >= 640 HU unlabelled: bright calcium is split


def test_backpressure_bounds_the_queues(three_series: Path) -> None:
    """With a slow consumer, submit blocks instead of queueing everything (bounded memory)."""
    series = scan_path(three_series).series[0]
    gate = threading.Event()
    seen: list[int] = []

    def slow(o: SliceOutcome) -> None:
        gate.wait(5)
        seen.append(1)

    pipe = SlicePipeline(AgatstonConfig(), slow, config=PipelineConfig(decode_threads=1, queue_size=1)).start()
    submitted = []

    def feed() -> None:
        for h in series.slices:
            pipe.submit(SliceJob(series.uid, h))
            submitted.append(1)

    t = threading.Thread(target=feed)
    t.start()
    time.sleep(0.8)
    blocked_at = len(submitted)
    assert blocked_at < len(series.slices)  # the feeder is held back by the full queues
    assert blocked_at <= 6  # decode q + decode worker + score q + agatston worker (+ slack)
    gate.set()
    t.join(10)
    pipe.close()
    assert len(seen) == len(series.slices)


def test_a_slice_that_fails_to_decode_fails_its_series_with_the_reason(tmp_path: Path) -> None:
    paths, uid, _ = write_series(tmp_path, 7, n_slices=9)
    series = scan_path(tmp_path).series[0]
    paths[3].unlink()  # a file that disappears after the scan
    with pytest.raises(SeriesFailed) as err:
        score_series(series)
    assert err.value.reason == "unreadable"
    assert "disappeared" in err.value.message
