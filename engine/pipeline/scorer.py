"""Score one series synchronously with the shared per-slice stages (tests, benchmarks, notebooks).

`score` and `watch` run the same stages concurrently over many series (``batch`` / ``stream``); this is
the one-series form of the same code, so its result is the same too.
"""

from __future__ import annotations

import threading

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.pipeline.finalize import SeriesScore, finalize_series
from cacstream.engine.pipeline.models import ModelStages
from cacstream.engine.pipeline.runner import PipelineConfig, SlicePipeline
from cacstream.engine.pipeline.stages import SliceJob, SliceOutcome
from cacstream.engine.series.types import Series


def score_series(
    series: Series,
    agatston: AgatstonConfig = AgatstonConfig(),
    *,
    models: ModelStages | None = None,
    config: PipelineConfig = PipelineConfig(),
) -> SeriesScore:
    """Score an eligible series slice by slice (threshold mode without ``models``).

    Raises:
        SeriesFailed: a slice could not be decoded or scored.
    """
    outcomes: dict[tuple[str, int], SliceOutcome] = {}
    lock = threading.Lock()

    def keep(o: SliceOutcome) -> None:
        with lock:
            outcomes[o.key] = o

    with SlicePipeline(agatston, keep, models=models, config=config) as pipe:
        for h in series.slices:
            pipe.submit(SliceJob(series.uid, h))
    return finalize_series(series, outcomes, mode="model" if models is not None else "threshold",
                           agatston=agatston, model=models.info if models is not None else None,
                           skeletal_gate=models.gate_decider if models is not None else None)
