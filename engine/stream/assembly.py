"""Series assembly for the stream: which slices belong together, and when is a series complete.

Slices arrive in any order and interleaved with other series. Each accepted file joins the open series
of its SeriesInstanceUID. A series is complete when every one of its slices has been scored and either

* no new slice has arrived for the quiet period (``quiet_s``) and no file that may still become one of
  its slices is being written (see ``SettleTracker.blocks``), or
* the expected slice count (ImagesInAcquisition, when the files state it) has been reached.

A slice that arrives for a series that was already reported re-opens it: all its files are scored
again with the late one and the report gets ``report_version + 1`` (the old version is archived).
A slice that arrives while the series is being reported waits and re-opens it right after.

Series that can never be scored (not CT, a localizer) are recognised from the first header and their
slices are not decoded; eligibility is decided on the complete set of headers, with the same
``check_series`` that `cacstream score` uses.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from cacstream.engine.pipeline.stages import SliceOutcome
from cacstream.engine.series.eligibility import LOCALIZER_TYPES
from cacstream.engine.series.types import SliceHeader

Key = tuple[str, int]


@dataclass(frozen=True)
class CompletionConfig:
    """Attributes:
        quiet_s: a series is complete when no slice has arrived for this long (the scanner pauses
            between series for much less than a few seconds only inside a series).
        use_expected_count: complete at once when ImagesInAcquisition slices have arrived.
    """

    quiet_s: float = 5.0
    use_expected_count: bool = True


def never_scored(header: SliceHeader) -> str | None:
    """Why a series cannot be scored whatever else arrives (so its slices are not decoded), or None."""
    if (header.modality or "").upper() != "CT":
        return "not_ct"
    if LOCALIZER_TYPES & {t.strip().upper() for t in header.image_type}:
        return "localizer"
    return None


@dataclass
class OpenSeries:
    uid: str
    generation: int
    base_version: int  # last published report version (0: none)
    first_arrival: float
    last_arrival: float
    headers: dict[Key, SliceHeader] = field(default_factory=dict)
    files: dict[Path, list[Key]] = field(default_factory=dict)
    sops: dict[str, Path] = field(default_factory=dict)
    outcomes: dict[Key, SliceOutcome] = field(default_factory=dict)
    submitted: set[Key] = field(default_factory=set)
    expected: int | None = None
    skip_decode: str | None = None
    finalizing: bool = False
    late: list = field(default_factory=list)  # Accepted verdicts that arrived while finalizing
    complete_at: float | None = None

    @property
    def n_slices(self) -> int:
        return len(self.headers)

    @property
    def scored_slices(self) -> int:
        return len(self.outcomes)

    def all_scored(self) -> bool:
        return self.submitted.issubset(self.outcomes.keys())


class Assembly:
    """The open series (thread-safe: the loop adds slices, the pipeline delivers outcomes)."""

    def __init__(self, config: CompletionConfig = CompletionConfig()) -> None:
        self.config = config
        self.series: dict[str, OpenSeries] = {}
        self.lock = threading.RLock()
        self._generation = 0

    def get(self, uid: str) -> OpenSeries | None:
        with self.lock:
            return self.series.get(uid)

    def open(self, uid: str, base_version: int, now: float) -> OpenSeries:
        with self.lock:
            s = self.series.get(uid)
            if s is None:
                self._generation += 1
                s = OpenSeries(uid, self._generation, base_version, now, now)
                self.series[uid] = s
            return s

    def duplicate_of(self, uid: str, sop: str, path: Path) -> Path | None:
        """The file that already brought this SOPInstanceUID into the open series, if another one did."""
        with self.lock:
            s = self.series.get(uid)
            if s is None:
                return None
            first = s.sops.get(sop)
            return first if first is not None and first != path else None

    def add(self, s: OpenSeries, path: Path, headers: list[SliceHeader], landed: float,
            expected: int | None) -> list[SliceHeader]:
        """Add a file's planes to an open series; returns the planes to score (none if not decodable)."""
        with self.lock:
            keys = []
            new: list[SliceHeader] = []
            for h in headers:
                keys.append(h.key)
                if h.key not in s.headers:
                    new.append(h)
                s.headers[h.key] = h
            s.files[path] = keys
            s.sops.setdefault(headers[0].sop_instance_uid, path)
            s.last_arrival = max(s.last_arrival, landed)
            if expected is not None:
                s.expected = expected
            if s.skip_decode is None and s.n_slices == len(new) and headers:
                s.skip_decode = never_scored(headers[0])
            if s.skip_decode is not None:
                return []
            s.submitted.update(h.key for h in new)
            return new

    def record(self, outcome: SliceOutcome) -> OpenSeries | None:
        """Store a slice outcome; outcomes of an older generation (series re-opened since) are dropped."""
        with self.lock:
            s = self.series.get(outcome.job.series_uid)
            if s is None or s.generation != outcome.job.generation:
                return None
            s.outcomes[outcome.key] = outcome
            return s

    def ready(self, now: float, blocked) -> list[OpenSeries]:
        """Series that are complete by the rule and not yet handed to the finalizer (marks them)."""
        out = []
        with self.lock:
            for s in self.series.values():
                if s.finalizing or not s.headers or not s.all_scored():
                    continue
                by_count = (self.config.use_expected_count and s.expected is not None
                            and s.n_slices >= s.expected)
                quiet = now - s.last_arrival >= self.config.quiet_s
                if by_count or (quiet and not blocked(s.uid)):
                    s.finalizing = True
                    s.complete_at = now
                    out.append(s)
        return out

    def remove(self, uid: str) -> OpenSeries | None:
        with self.lock:
            return self.series.pop(uid, None)

    def snapshot(self) -> list[OpenSeries]:
        with self.lock:
            return list(self.series.values())
