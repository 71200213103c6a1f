"""When is a file in the export folder finished? Size and mtime stable, and it parses to the end of its pixels.

Scanners and DICOM nodes write a file in one go, in chunks with pauses, or under a temporary name
that is renamed at the end. A file is accepted once its size and mtime have not changed for
``settle_s`` AND ``read_header`` succeeds — which checks that the Pixel Data element is complete
(native length or every compressed fragment present), so a half-written file is never scored. A file
that stays unreadable is given up only after it has been stable for ``give_up_s``: a writer may pause
for a while between chunks. If the file changes later, it is looked at again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cacstream.engine.series import errors as E
from cacstream.engine.series.errors import DicomReadError
from cacstream.engine.series.headers import classify_name, read_header
from cacstream.engine.series.types import SliceHeader

#: Reasons that mean "not an image to score" (skipped); every other failure quarantines the file.
SKIP_REASONS = frozenset({E.DICOMDIR, E.NO_PIXEL_DATA, E.HIDDEN, E.TEMPORARY, E.DUPLICATE_SOP_INSTANCE})


def verdict_status(reason: str) -> str:
    """'skipped' (not an image for us) or 'quarantined' (damaged / unreadable) for a file reason code."""
    return "skipped" if reason in SKIP_REASONS else "quarantined"


@dataclass(frozen=True)
class SettleConfig:
    """Attributes:
        settle_s: size and mtime must be unchanged this long before a file is parsed (raise it for
            network shares whose mtime is coarse).
        give_up_s: a file that still cannot be parsed after being unchanged this long is quarantined
            (or skipped) with its reason; it is looked at again if it ever changes.
    """

    settle_s: float = 0.5
    give_up_s: float = 30.0


@dataclass
class Pending:
    path: Path
    size: int
    mtime_ns: int
    first_seen: float
    last_change: float  # monotonic time the current (size, mtime) was first observed
    parsed_state: tuple[int, int] | None = None  # (size, mtime) the last failed parse saw
    error: DicomReadError | None = None
    series_hint: str | None = None
    hint_state: tuple[int, int] | None = None


@dataclass(frozen=True)
class Accepted:
    path: Path
    size: int
    mtime_ns: int
    headers: list[SliceHeader]
    expected_count: int | None
    landed: float  # monotonic time the final state of the file was first observed


@dataclass(frozen=True)
class GaveUp:
    path: Path
    size: int
    mtime_ns: int
    reason: str
    message: str

    @property
    def status(self) -> str:
        return verdict_status(self.reason)


@dataclass(frozen=True)
class Vanished:
    path: Path


Verdict = Accepted | GaveUp | Vanished


def peek_series_uid(path: Path) -> str | None:
    """SeriesInstanceUID of a possibly half-written file, if its header is already there."""
    try:
        from pydicom import dcmread

        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"], force=True)
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        return uid or None
    except Exception:
        return None


def expected_slice_count(path: Path) -> int | None:
    """ImagesInAcquisition (0020,1002) when the file states it (> 0): the expected number of slices."""
    try:
        from pydicom import dcmread

        ds = dcmread(path, stop_before_pixels=True, specific_tags=["ImagesInAcquisition"], force=True)
        n = int(ds.get("ImagesInAcquisition", 0) or 0)
        return n if n > 0 else None
    except Exception:
        return None


@dataclass
class SettleTracker:
    """The files not yet accepted or given up, and the rule that decides about them."""

    config: SettleConfig = field(default_factory=SettleConfig)
    pending: dict[Path, Pending] = field(default_factory=dict)

    def observe(self, path: Path, now: float) -> bool:
        """Note that ``path`` exists (or changed). Returns False if it cannot be stat'ed (gone)."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        p = self.pending.get(path)
        if p is None:
            self.pending[path] = Pending(path, st.st_size, st.st_mtime_ns, now, now)
        elif (st.st_size, st.st_mtime_ns) != (p.size, p.mtime_ns):
            p.size, p.mtime_ns, p.last_change = st.st_size, st.st_mtime_ns, now
        return True

    def forget(self, path: Path) -> None:
        self.pending.pop(path, None)

    def poll(self, now: float) -> list[Verdict]:
        """Decide about every pending file whose time has come."""
        out: list[Verdict] = []
        for path, p in list(self.pending.items()):
            try:
                st = os.stat(path)
            except OSError:
                del self.pending[path]
                out.append(Vanished(path))
                continue
            state = (st.st_size, st.st_mtime_ns)
            if state != (p.size, p.mtime_ns):
                p.size, p.mtime_ns, p.last_change = st.st_size, st.st_mtime_ns, now
                continue
            if p.series_hint is None and p.hint_state != state:
                p.hint_state = state
                p.series_hint = peek_series_uid(path)
            stable = now - p.last_change
            if stable < self.config.settle_s:
                continue
            named = classify_name(path)
            if named is not None:
                reason, message = named
                if reason == E.DICOMDIR or stable >= self.config.give_up_s:
                    del self.pending[path]
                    out.append(GaveUp(path, p.size, p.mtime_ns, reason, message))
                continue
            if p.parsed_state != state:
                try:
                    headers = read_header(path)
                except DicomReadError as err:
                    p.parsed_state, p.error = state, err
                else:
                    st2 = os.stat(path)
                    if (st2.st_size, st2.st_mtime_ns) != state:  # changed while we read it
                        p.size, p.mtime_ns, p.last_change = st2.st_size, st2.st_mtime_ns, now
                        continue
                    del self.pending[path]
                    out.append(Accepted(path, p.size, p.mtime_ns, headers, expected_slice_count(path), p.last_change))
                    continue
            if stable >= self.config.give_up_s and p.error is not None:
                del self.pending[path]
                out.append(GaveUp(path, p.size, p.mtime_ns, p.error.reason, p.error.message))
        return out

    def blocks(self, series_uid: str, now: float, quiet_s: float) -> bool:
        """Whether a pending file may still become a slice of ``series_uid`` soon: it names that series
        (or no series yet) and it changed within the quiet period."""
        for p in self.pending.values():
            if now - p.last_change >= quiet_s:
                continue
            if p.series_hint is None or p.series_hint == series_uid:
                return True
        return False
