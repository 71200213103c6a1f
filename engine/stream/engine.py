"""The streaming engine: watch → settle → assemble → score slice by slice → complete → report, crash-safe.

One loop thread owns the decisions (which files are new, which have settled, which series are
complete); the per-slice work runs in the shared concurrent stages (``engine/pipeline/runner.py``);
a finalizer thread sums completed series and publishes their reports, so a slow SEG never stalls
ingestion. Every decision is written to the state database (``state.py``) before it has effects
outside the process, which is what makes a restart after SIGKILL exact:

==========================================  ====================================================
crash point                                 what the restart does
==========================================  ====================================================
file seen, row ``pending``                  looks at the file again (settle, parse)
slices accepted, series open                re-reads the accepted files' headers and scores them
                                            again; the quiet period restarts
artifacts staged, no ``reports`` row        deletes the orphan staging folder; the series is still
                                            open and is scored again as the same version
``reports`` row ``staged``                  publishes from the staging folder (idempotent: JSON
                                            last, ledger line only if absent), records the files
report renamed, DB not yet committed        same: the JSON already holds that version, the ledger
                                            line is checked before appending
``reports`` row ``published``               nothing: the files keep their fate, a rescan finds
                                            them unchanged
==========================================  ====================================================

The input folder is never modified unless ``move_done`` / ``quarantine`` folders are configured.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cacstream.engine.config import ScoreConfig
from cacstream.engine.pipeline.finalize import SeriesFailed, SeriesScore, finalize_series
from cacstream.engine.pipeline.models import ModelStages
from cacstream.engine.pipeline.outputs import (
    OutputConfig,
    build_artifacts,
    clean_orphan_staging,
    publish,
    stage,
)
from cacstream.engine.pipeline.runner import PipelineConfig, SlicePipeline
from cacstream.engine.pipeline.stages import SliceJob, SliceOutcome
from cacstream.engine.report.json_report import ModelInfo, rejected_report, scored_report
from cacstream.engine.series import errors as E
from cacstream.engine.series.eligibility import check_series
from cacstream.engine.series.errors import DicomReadError
from cacstream.engine.series.headers import read_header
from cacstream.engine.series.types import RejectedSeries, SliceHeader
from cacstream.engine.stream.assembly import Assembly, CompletionConfig, OpenSeries
from cacstream.engine.stream.logging import EventLog
from cacstream.engine.stream.settle import Accepted, GaveUp, SettleConfig, SettleTracker, Vanished
from cacstream.engine.stream.state import StateDB
from cacstream.engine.stream.watcher import FolderWatcher

STATE_DIR = ".cacstream"
#: Test hook: a comma-separated list of crash points at which the process kills itself with SIGKILL
#: (the crash-recovery tests use it to stop a real `cacstream watch` at exact moments).
CRASH_ENV = "CACSTREAM_TEST_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process if ``name`` is listed in $CACSTREAM_TEST_CRASH_AT (never set in production)."""
    spec = os.environ.get(CRASH_ENV)
    if spec and name in spec.split(","):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class StreamConfig:
    """Everything `cacstream watch` needs (defaults are the recommended workstation settings)."""

    export_dir: Path
    out_dir: Path
    score: ScoreConfig = field(default_factory=lambda: ScoreConfig(mode="threshold"))
    settle: SettleConfig = field(default_factory=SettleConfig)
    completion: CompletionConfig = field(default_factory=CompletionConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)
    state_path: Path | None = None  # default: OUT/.cacstream/state.sqlite
    ledger: Path | None = None  # default: OUT/ledger.csv
    polling: bool = False
    poll_interval_s: float = 1.0
    rescan_interval_s: float = 30.0
    loop_interval_s: float = 0.05
    move_done: Path | None = None
    quarantine: Path | None = None

    @property
    def state_file(self) -> Path:
        return self.state_path or Path(self.out_dir) / STATE_DIR / "state.sqlite"

    @property
    def ledger_file(self) -> Path:
        return self.ledger or Path(self.out_dir) / "ledger.csv"


@dataclass
class Published:
    """A report version that went out (for the live table, tests and the latency benchmark)."""

    uid: str
    version: int
    status: str
    agatston_total: float | None
    risk_category: str | None
    reason: str | None
    slices: int
    published_at: float  # time.time()
    last_arrival_wall: float  # time.time() of the last slice's arrival
    report: dict[str, Any]


class ConfigError(ValueError):
    """The folders given cannot work together (e.g. the output folder inside the export folder)."""


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_folders(config: StreamConfig) -> None:
    export = Path(config.export_dir)
    if not export.is_dir():
        raise ConfigError(f"{export}: the export folder does not exist (create it or fix the path)")
    for name, p in (("--out", config.out_dir), ("--move-done", config.move_done), ("--quarantine", config.quarantine)):
        if p is not None and _inside(Path(p), export):
            raise ConfigError(f"{name} {p} is inside the watched folder {export}; the engine would watch its own "
                              "output. Choose a folder outside it.")


class StreamEngine:
    def __init__(self, config: StreamConfig, *, models: ModelStages | None = None, log: EventLog | None = None,
                 on_published: Callable[[Published], None] | None = None) -> None:
        check_folders(config)
        if config.score.mode == "model" and models is None:
            raise ConfigError("model mode needs loaded models (cacstream.engine.pipeline.models.load_models)")
        self.config = config
        self.models = models
        self.mode = "model" if models is not None else "threshold"
        self.model_info: ModelInfo | None = models.info if models is not None else None
        self.export_dir = Path(config.export_dir)
        self.out_dir = Path(config.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / STATE_DIR).mkdir(exist_ok=True)
        self.log = log or EventLog(self.export_dir, file=self.out_dir / STATE_DIR / "watch.jsonl")
        self.db = StateDB(config.state_file)
        self.tracker = SettleTracker(config.settle)
        self.assembly = Assembly(config.completion)
        self.watcher = FolderWatcher(self.export_dir, polling=config.polling, poll_interval_s=config.poll_interval_s,
                                     rescan_interval_s=config.rescan_interval_s)
        self.pipeline = SlicePipeline(config.score.agatston, self._on_outcome, models=models, config=config.pipeline)
        self.known: dict[Path, tuple[int, int, str]] = {}
        self.on_published = on_published
        self.recent: OrderedDict[str, Published] = OrderedDict()
        self.counters: dict[str, float] = {"slices_scored": 0, "reports_scored": 0, "reports_rejected": 0,
                                           "latency_sum_s": 0.0, "latency_count": 0}
        self._final_q: queue.Queue[OpenSeries | None] = queue.Queue()
        self._done_q: queue.Queue[tuple[str, BaseException | None]] = queue.Queue()
        self._finalizing = 0
        self._stop = threading.Event()
        self._finalizer = threading.Thread(target=self._finalizer_loop, name="cac-finalizer", daemon=True)
        self._started = False
        self._last_activity = time.monotonic()
        self._failures: dict[str, int] = {}
        self.warm = threading.Event()  # set once the libraries' first-call costs are paid

    # ================================================================== lifecycle
    def start(self) -> StreamEngine:
        if self._started:
            return self
        self._started = True
        self.pipeline.start()
        threading.Thread(target=self._warmup, name="cac-warmup", daemon=True).start()
        self._finalizer.start()
        self._recover()
        self.watcher.start()
        self.log.event("watch_started", mode=self.mode, quiet_s=self.config.completion.quiet_s,
                       polling=self.config.polling)
        return self

    def _warmup(self) -> None:
        """Pay the libraries' first-call costs (highdicom, PIL, Numba) before the first series completes."""
        try:
            from cacstream.engine.pipeline.outputs import warmup
            from cacstream.engine.scoring.agatston import warmup as numba_warmup

            numba_warmup()
            warmup()
        except Exception as exc:  # only latency is at stake
            self.log.warning("warmup_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.warm.set()

    def request_stop(self) -> None:
        self._stop.set()
        self.watcher.wakeup.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, stop_when: Callable[[StreamEngine], bool] | None = None,
            on_tick: Callable[[StreamEngine], None] | None = None) -> None:
        """Loop until :meth:`request_stop` (SIGTERM) or ``stop_when(engine)`` is true, then shut down."""
        self.start()
        try:
            while not self._stop.is_set():
                self.step()
                if on_tick is not None:
                    on_tick(self)
                if stop_when is not None and stop_when(self):
                    break
                self.watcher.wakeup.wait(self.config.loop_interval_s)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Clean stop: no new files; slices in flight finish; series already complete are reported; open
        series stay recorded as open (they resume after a restart); the database is closed."""
        if not self._started:
            return
        self._started = False
        self.watcher.stop()
        self.pipeline.close(drain=True)
        self._handle_finished()
        self._final_q.put(None)
        self._finalizer.join()
        self._handle_finished()
        self.log.event("watch_stopped", open_series=len(self.assembly.series), pending=len(self.tracker.pending))
        self.db.close()

    def idle(self, for_s: float = 0.0) -> bool:
        """Nothing pending, open or being reported, and nothing happened for ``for_s`` seconds."""
        return (not self.tracker.pending and not self.assembly.series and self._finalizing == 0
                and self._final_q.empty() and self._done_q.empty()
                and time.monotonic() - self._last_activity >= for_s)

    # ================================================================== the loop
    def step(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        paths = self.watcher.drain(now)
        if paths:
            with self.db.transaction():
                for p in sorted(paths):
                    self._consider(p, now)
        verdicts = self.tracker.poll(now)
        jobs: list[SliceJob] = []
        if verdicts:
            self._last_activity = time.monotonic()
            with self.db.transaction():
                for v in verdicts:
                    jobs.extend(self._apply(v, now))
        if jobs:
            crash_point("after_accept")
        for job in jobs:
            self.pipeline.submit(job)
        self._handle_finished()
        quiet = self.config.completion.quiet_s
        for s in self.assembly.ready(now, lambda uid: self.tracker.blocks(uid, now, quiet)):
            self._finalizing += 1
            self._final_q.put(s)

    def _consider(self, path: Path, now: float) -> None:
        """A path was reported by the watcher or a rescan: start tracking it if it is new or changed."""
        if path in self.tracker.pending:
            self.tracker.observe(path, now)
            return
        try:
            st = os.stat(path)
        except OSError:
            return
        k = self.known.get(path)
        if k is not None and (k[0], k[1]) == (st.st_size, st.st_mtime_ns):
            return
        if not self.tracker.observe(path, now):
            return
        self._last_activity = time.monotonic()
        if k is None:
            self.db.upsert_file(str(path), st.st_size, st.st_mtime_ns, "pending")
            self.known[path] = (st.st_size, st.st_mtime_ns, "pending")
            self.log.event("file_seen", path=path, size=st.st_size)
        else:
            self.log.event("file_changed", path=path, previous_status=k[2])

    def _record(self, path: Path, size: int, mtime_ns: int, status: str, **kw: Any) -> None:
        self.db.upsert_file(str(path), size, mtime_ns, status, **kw)
        self.known[path] = (size, mtime_ns, status)

    def _apply(self, v: Accepted | GaveUp | Vanished, now: float) -> list[SliceJob]:
        if isinstance(v, Vanished):
            k = self.known.get(v.path)
            if k is not None and k[2] == "pending":
                self._record(v.path, k[0], k[1], "vanished", reason="vanished",
                             message=f"{v.path}: disappeared before it settled (renamed to its final name, or deleted)")
                self.log.event("file_vanished", path=v.path)
            return []
        if isinstance(v, GaveUp):
            self._record(v.path, v.size, v.mtime_ns, v.status, reason=v.reason, message=v.message)
            self.log.warning(f"file_{v.status}", path=v.path, reason=v.reason, message=v.message)
            if v.status == "quarantined" and self.config.quarantine is not None:
                self._move(v.path, Path(self.config.quarantine) / self._relative(v.path))
            return []
        return self._accept(v, now)

    def _accept(self, v: Accepted, now: float) -> list[SliceJob]:
        h0 = v.headers[0]
        uid, sop = h0.series_instance_uid, h0.sop_instance_uid
        row = self.db.file(str(v.path))
        if row is not None and row.status in ("accepted", "scored", "rejected") and row.sop_uid == sop:
            # the same image written again (e.g. a re-send): its slice is already counted
            self._record(v.path, v.size, v.mtime_ns, row.status, reason=row.reason, message=row.message,
                         series_uid=row.series_uid, sop_uid=row.sop_uid, report_version=row.report_version)
            self.log.event("file_rewritten_same_image", path=v.path, series_uid=uid)
            return []
        s = self.assembly.get(uid)
        if s is not None and s.finalizing:
            s.late.append(v)  # re-opens the series as soon as its report is out
            self.log.event("slice_late_during_report", path=v.path, series_uid=uid)
            return []
        first = self.assembly.duplicate_of(uid, sop, v.path) or self._reported_duplicate(uid, sop, v.path)
        if first is not None:
            msg = (f"{v.path}: same SOPInstanceUID as {first} (a second copy of the same image); "
                   f"only {first} is used")
            self._record(v.path, v.size, v.mtime_ns, "skipped", reason=E.DUPLICATE_SOP_INSTANCE, message=msg,
                         series_uid=uid, sop_uid=sop)
            self.log.warning("file_skipped", path=v.path, reason=E.DUPLICATE_SOP_INSTANCE, message=msg,
                             series_uid=uid)
            return []
        jobs: list[SliceJob] = []
        if s is None:
            base = self.db.open_series(uid)
            s = self.assembly.open(uid, base, now)
            if base > 0:
                self.log.event("series_reopened", series_uid=uid, published_version=base)
                jobs.extend(self._reload_reported_files(s))
            else:
                self.log.event("series_opened", series_uid=uid)
        new = self.assembly.add(s, v.path, v.headers, v.landed, v.expected_count)
        self._record(v.path, v.size, v.mtime_ns, "accepted", series_uid=uid, sop_uid=sop, n_frames=len(v.headers))
        return jobs + [SliceJob(uid, h, s.generation) for h in new]

    def _reported_duplicate(self, uid: str, sop: str, path: Path) -> Path | None:
        for row in self.db.files(series_uid=uid):
            if row.sop_uid == sop and row.path != str(path) and row.status in ("accepted", "scored", "rejected"):
                return Path(row.path)
        return None

    def _headers_of(self, row_path: str, moved_to: str | None, uid: str) -> list[SliceHeader]:
        """Headers of a file already accepted once (from where it lies now), keeping its series UID."""
        headers = read_header(Path(moved_to or row_path))
        return [h if h.series_instance_uid == uid else replace(h, series_instance_uid=uid) for h in headers]

    def _reload_reported_files(self, s: OpenSeries) -> list[SliceJob]:
        """A reported series re-opened by a late slice: its earlier files are scored again with it."""
        jobs: list[SliceJob] = []
        for row in self.db.files(series_uid=s.uid):
            if row.status not in ("scored", "rejected"):
                continue
            jobs.extend(self._readmit(s, row.path, row.size, row.mtime_ns, row.moved_to, row.sop_uid))
        return jobs

    def _readmit(self, s: OpenSeries, path: str, size: int, mtime_ns: int, moved_to: str | None,
                 sop: str | None) -> list[SliceJob]:
        try:
            headers = self._headers_of(path, moved_to, s.uid)
        except DicomReadError as err:
            self._record(Path(path), size, mtime_ns, "quarantined", reason=err.reason, message=err.message,
                         series_uid=s.uid, sop_uid=sop)
            self.log.warning("file_quarantined", path=Path(path), reason=err.reason, message=err.message,
                             series_uid=s.uid)
            return []
        new = self.assembly.add(s, Path(path), headers, 0.0, None)
        self._record(Path(path), size, mtime_ns, "accepted", series_uid=s.uid, sop_uid=headers[0].sop_instance_uid,
                     n_frames=len(headers))
        if moved_to:
            self.db.set_file_moved(path, moved_to)
        return [SliceJob(s.uid, h, s.generation) for h in new]

    # ================================================================== recovery
    def _recover(self) -> None:
        """Finish what a crash interrupted (see the module docstring's table)."""
        for rep in self.db.reports(status="staged"):
            files = json.loads(rep.files_json)
            try:
                publish(self.out_dir, rep.uid, rep.version, self.config.ledger_file, dedupe_ledger=True)
            except Exception as exc:  # staging lost before the JSON was published: score again
                self.log.warning("recover_publish_failed", series_uid=rep.uid, version=rep.version,
                                 error=f"{type(exc).__name__}")
                continue
            self.db.mark_published(rep.uid, rep.version, rep.outcome, rep.reason, rep.agatston_total, files,
                                   rep.latency_ms)
            self.log.event("recovered_publication", series_uid=rep.uid, version=rep.version)
        clean_orphan_staging(self.out_dir, keep=[])
        for row in self.db.files():
            self.known[Path(row.path)] = (row.size, row.mtime_ns, row.status)
        now = time.monotonic()
        jobs: list[SliceJob] = []
        by_series: dict[str, list] = {}
        for row in self.db.files(status="accepted"):
            by_series.setdefault(row.series_uid, []).append(row)
        with self.db.transaction():
            for uid, rows in by_series.items():
                base = self.db.open_series(uid)
                s = self.assembly.open(uid, base, now)
                s.last_arrival = now  # the quiet period restarts
                for row in rows:
                    jobs.extend(self._readmit(s, row.path, row.size, row.mtime_ns, row.moved_to, row.sop_uid))
                self.log.event("recovered_open_series", series_uid=uid, files=len(rows), published_version=base)
            for row in self.db.files(status="pending"):
                p = Path(row.path)
                if not self.tracker.observe(p, now):
                    self._record(p, row.size, row.mtime_ns, "vanished", reason="vanished",
                                 message=f"{p}: disappeared before it settled (while the engine was down)")
        if jobs:
            crash_point("after_accept")
        for job in jobs:
            self.pipeline.submit(job)

    # ================================================================== outcomes and completion
    def _on_outcome(self, outcome: SliceOutcome) -> None:
        if self.assembly.record(outcome) is not None:
            self.counters["slices_scored"] += 1

    def _handle_finished(self) -> None:
        while True:
            try:
                uid, error = self._done_q.get_nowait()
            except queue.Empty:
                return
            self._finalizing -= 1
            self._last_activity = time.monotonic()
            s = self.assembly.get(uid)
            if s is None:
                continue
            if error is not None:
                n = self._failures[uid] = self._failures.get(uid, 0) + 1
                self.log.error("series_report_failed", series_uid=uid, attempt=n, error=f"{type(error).__name__}: {error}")
                if n < 3:
                    s.finalizing = False
                    s.last_arrival = time.monotonic()  # try again after another quiet period
                    continue
                self.assembly.remove(uid)  # stays open in the database; a restart tries again
                continue
            self._failures.pop(uid, None)
            self.assembly.remove(uid)
            if s.late:
                now = time.monotonic()
                jobs: list[SliceJob] = []
                with self.db.transaction():
                    for v in s.late:
                        jobs.extend(self._accept(v, now))
                for job in jobs:
                    self.pipeline.submit(job)

    def _finalizer_loop(self) -> None:
        while True:
            s = self._final_q.get()
            if s is None:
                return
            try:
                self._finalize(s)
                error = None
            except Exception as exc:
                error = exc
            self._done_q.put((s.uid, error))
            self.watcher.wakeup.set()

    def _finalize(self, s: OpenSeries) -> None:
        """Sum a complete series, build and publish its report version (two-phase, see outputs.py)."""
        t0 = time.monotonic()
        uid, version = s.uid, s.base_version + 1
        with self.assembly.lock:
            headers = sorted(s.headers.values(), key=lambda h: (h.path, -1 if h.frame is None else h.frame))
            outcomes = dict(s.outcomes)
            files = sorted(str(p) for p in s.files)
        cfg = self.config.score
        verdict = check_series(uid, headers, cfg.eligibility)
        score: SeriesScore | None = None
        timings = {"completion_wait": max(0.0, (s.complete_at or t0) - s.last_arrival) * 1e3}
        if isinstance(verdict, RejectedSeries):
            report = rejected_report(uid, verdict.reason, verdict.message, n_files=len(files),
                                     slices_total=len(headers), model=self.model_info, report_version=version)
        else:
            try:
                score = finalize_series(verdict, outcomes, mode=self.mode, agatston=cfg.agatston,
                                        model=self.model_info, timings_ms=timings, report_version=version,
                                        skeletal_gate=self.models.gate_decider if self.models is not None else None)
                report = scored_report(score.scored)
            except SeriesFailed as f:
                report = rejected_report(uid, f.reason, f.message, n_files=len(files), slices_total=len(headers),
                                         model=self.model_info, report_version=version)
        t_sum = time.monotonic()
        artifacts = build_artifacts(report, score, self.config.outputs)
        outcome = report["status"]
        total = report.get("agatston_total")
        t_build = time.monotonic()
        stage(self.out_dir, uid, version, artifacts)
        crash_point("after_stage")
        self.db.stage_report(uid, version, outcome, report.get("reason"), total, json.dumps(files), len(files))
        crash_point("after_stage_row")
        t_stage = time.monotonic()
        publish(self.out_dir, uid, version, self.config.ledger_file, dedupe_ledger=True, checkpoint=crash_point)
        crash_point("after_publish")
        t_publish = time.monotonic()
        latency_s = time.monotonic() - s.last_arrival
        self.db.mark_published(uid, version, outcome, report.get("reason"), total, files, latency_s * 1e3)
        crash_point("after_mark_published")
        self.counters["reports_scored" if outcome == "scored" else "reports_rejected"] += 1
        self.counters["latency_sum_s"] += latency_s
        self.counters["latency_count"] += 1
        self.log.event("series_reported", series_uid=uid, version=version, status=outcome, reason=report.get("reason"),
                       agatston_total=total, risk_category=report.get("risk_category"), slices=len(headers),
                       files=len(files), last_slice_to_report_s=round(latency_s, 3),
                       finalize_ms={"sum": round((t_sum - t0) * 1e3, 1), "artifacts": round((t_build - t_sum) * 1e3, 1),
                                    "stage": round((t_stage - t_build) * 1e3, 1),
                                    "publish": round((t_publish - t_stage) * 1e3, 1)})
        pub = Published(uid, version, outcome, total, report.get("risk_category"), report.get("reason"), len(headers),
                        time.time(), time.time() - latency_s, report)
        self.recent[uid] = pub
        self.recent.move_to_end(uid)
        while len(self.recent) > 200:
            self.recent.popitem(last=False)
        if self.config.move_done is not None:
            for f in files:
                dest = Path(self.config.move_done) / uid / self._relative(Path(f))
                if Path(f).exists():
                    self._move(Path(f), dest)
        if self.on_published is not None:
            self.on_published(pub)

    # ================================================================== helpers
    def _relative(self, path: Path) -> Path:
        try:
            return path.relative_to(self.export_dir)
        except ValueError:
            return Path(path.name)

    def _move(self, src: Path, dest: Path) -> None:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dest))
        except OSError as exc:
            self.log.error("move_failed", path=src, error=str(exc.strerror))
            return
        self.db.set_file_moved(str(src), str(dest))

    # ================================================================== views
    def metrics_samples(self) -> list[tuple[str, dict[str, str], float]]:
        out: list[tuple[str, dict[str, str], float]] = []
        for status, n in self.db.counts().items():
            out.append(("cacstream_files_total", {"status": status}, n))
        out.append(("cacstream_series_reported_total", {"outcome": "scored"}, self.counters["reports_scored"]))
        out.append(("cacstream_series_reported_total", {"outcome": "rejected"}, self.counters["reports_rejected"]))
        out.append(("cacstream_slices_scored_total", {}, self.counters["slices_scored"]))
        out.append(("cacstream_open_series", {}, len(self.assembly.series)))
        out.append(("cacstream_pending_files", {}, len(self.tracker.pending)))
        for q, n in self.pipeline.depths().items():
            out.append(("cacstream_queue_depth", {"queue": q}, n))
        out.append(("cacstream_report_latency_seconds_sum", {}, self.counters["latency_sum_s"]))
        out.append(("cacstream_report_latency_seconds_count", {}, self.counters["latency_count"]))
        out.append(("cacstream_rescans_total", {}, self.watcher.rescans))
        out.append(("cacstream_watch_overflows_total", {}, self.watcher.overflows))
        return out
