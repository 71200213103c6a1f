"""The engine's memory across restarts: SQLite in WAL mode, one row per file seen, series and report.

What it must guarantee (issue 5): every file seen is recorded with what became of it, every report
written is recorded, and after a SIGKILL at any moment a restart loses no series and reports none
twice. The database is the source of truth for "was version N of series S published?": a report
row goes ``staged`` (artifacts fsynced in the staging folder) → ``published`` (files in place, ledger
line written, files' fates recorded) in two commits, and a restart completes any ``staged`` row.

File statuses (``files.status``):

=============  ==============================================================================
pending        seen, not yet settled / parsed (being written, or waiting to be given up)
accepted       a slice of a series that is still open (being scored)
scored         part of a scored series (``report_version`` says which version)
rejected       part of a series that was rejected (``reason`` / ``message`` say why)
quarantined    damaged or unreadable (not DICOM, truncated, undecodable …) — moved to the quarantine
               folder when one is configured
skipped        not an image to score (DICOMDIR, non-image DICOM, temporary name, duplicate copy …)
vanished       disappeared before it settled (e.g. a temp name renamed to its final name)
=============  ==============================================================================

Durability: ``synchronous=FULL`` (each commit is fsynced): a commit survives a crash of the process
and of the machine. Commits are batched by the engine (one per loop turn), so the cost is small.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1

FINAL_FILE_STATUSES = ("scored", "rejected", "quarantined", "skipped", "vanished")
FILE_STATUSES = ("pending", "accepted", *FINAL_FILE_STATUSES)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    series_uid TEXT,
    sop_uid TEXT,
    n_frames INTEGER,
    report_version INTEGER,
    moved_to TEXT
);
CREATE INDEX IF NOT EXISTS files_series ON files(series_uid);
CREATE INDEX IF NOT EXISTS files_status ON files(status);
CREATE TABLE IF NOT EXISTS series (
    uid TEXT PRIMARY KEY,
    status TEXT NOT NULL,               -- open | reported
    report_version INTEGER NOT NULL,    -- last published version (0: none yet)
    outcome TEXT,                       -- scored | rejected (of the last published version)
    reason TEXT,
    agatston_total REAL,
    first_seen REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,               -- staged | published
    outcome TEXT NOT NULL,              -- scored | rejected
    reason TEXT,
    agatston_total REAL,
    n_files INTEGER NOT NULL,
    files_json TEXT NOT NULL,           -- the files this version was computed from
    staged_at REAL NOT NULL,
    published_at REAL,
    latency_ms REAL,
    PRIMARY KEY (uid, version)
);
"""


@dataclass(frozen=True)
class FileRow:
    path: str
    size: int
    mtime_ns: int
    status: str
    reason: str | None
    message: str | None
    series_uid: str | None
    sop_uid: str | None
    report_version: int | None
    moved_to: str | None


@dataclass(frozen=True)
class ReportRow:
    uid: str
    version: int
    status: str
    outcome: str
    reason: str | None
    agatston_total: float | None
    n_files: int
    files_json: str
    latency_ms: float | None


class StateDB:
    """Thread-safe wrapper around one SQLite connection (a lock serialises access)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        with self.transaction():
            self._conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                               (str(SCHEMA_VERSION),))

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic commit (nested calls join the outer transaction)."""
        with self._lock:
            if self._conn.in_transaction:
                yield self._conn
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ files
    def file(self, path: str) -> FileRow | None:
        with self._lock:
            r = self._conn.execute("SELECT * FROM files WHERE path = ?", (path,)).fetchone()
        return _file_row(r) if r else None

    def files(self, status: str | None = None, series_uid: str | None = None) -> list[FileRow]:
        q, args = "SELECT * FROM files", []
        conds = []
        if status is not None:
            conds.append("status = ?")
            args.append(status)
        if series_uid is not None:
            conds.append("series_uid = ?")
            args.append(series_uid)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        with self._lock:
            return [_file_row(r) for r in self._conn.execute(q + " ORDER BY path", args).fetchall()]

    def upsert_file(self, path: str, size: int, mtime_ns: int, status: str, *, reason: str | None = None,
                    message: str | None = None, series_uid: str | None = None, sop_uid: str | None = None,
                    n_frames: int | None = None, report_version: int | None = None) -> None:
        if status not in FILE_STATUSES:
            raise ValueError(f"unknown file status {status!r}")
        now = time.time()
        with self.transaction() as c:
            c.execute(
                """INSERT INTO files(path, size, mtime_ns, first_seen, updated, status, reason, message, series_uid,
                                     sop_uid, n_frames, report_version)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,
                     updated=excluded.updated, status=excluded.status, reason=excluded.reason,
                     message=excluded.message, series_uid=excluded.series_uid, sop_uid=excluded.sop_uid,
                     n_frames=excluded.n_frames, report_version=excluded.report_version""",
                (path, size, mtime_ns, now, now, status, reason, message, series_uid, sop_uid, n_frames, report_version),
            )

    def set_file_moved(self, path: str, moved_to: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE files SET moved_to = ?, updated = ? WHERE path = ?", (moved_to, time.time(), path))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    # ------------------------------------------------------------------ series
    def series_row(self, uid: str) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute("SELECT * FROM series WHERE uid = ?", (uid,)).fetchone()

    def all_series(self) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute("SELECT * FROM series ORDER BY first_seen").fetchall()

    def open_series(self, uid: str) -> int:
        """Mark a series open (new, or re-opened by a late slice); returns its last published version."""
        now = time.time()
        with self.transaction() as c:
            c.execute("""INSERT INTO series(uid, status, report_version, first_seen, updated)
                         VALUES (?, 'open', 0, ?, ?)
                         ON CONFLICT(uid) DO UPDATE SET status='open', updated=excluded.updated""", (uid, now, now))
            r = c.execute("SELECT report_version FROM series WHERE uid = ?", (uid,)).fetchone()
        return int(r[0])

    # ------------------------------------------------------------------ reports
    def stage_report(self, uid: str, version: int, outcome: str, reason: str | None, agatston_total: float | None,
                     files_json: str, n_files: int) -> None:
        with self.transaction() as c:
            c.execute("""INSERT OR REPLACE INTO reports(uid, version, status, outcome, reason, agatston_total, n_files,
                                                        files_json, staged_at)
                         VALUES (?, ?, 'staged', ?, ?, ?, ?, ?, ?)""",
                      (uid, version, outcome, reason, agatston_total, n_files, files_json, time.time()))

    def mark_published(self, uid: str, version: int, outcome: str, reason: str | None, agatston_total: float | None,
                       files: Iterable[str], latency_ms: float | None = None) -> None:
        """One commit: the report is published, the series is reported, its files' fates are recorded."""
        now = time.time()
        file_status = "scored" if outcome == "scored" else "rejected"
        with self.transaction() as c:
            c.execute("UPDATE reports SET status='published', published_at=?, latency_ms=? WHERE uid=? AND version=?",
                      (now, latency_ms, uid, version))
            c.execute("""INSERT INTO series(uid, status, report_version, outcome, reason, agatston_total, first_seen,
                                            updated)
                         VALUES (?, 'reported', ?, ?, ?, ?, ?, ?)
                         ON CONFLICT(uid) DO UPDATE SET status='reported', report_version=excluded.report_version,
                           outcome=excluded.outcome, reason=excluded.reason,
                           agatston_total=excluded.agatston_total, updated=excluded.updated""",
                      (uid, version, outcome, reason, agatston_total, now, now))
            for p in files:
                c.execute("""UPDATE files SET status=?, reason=?, report_version=?, updated=? WHERE path=?""",
                          (file_status, reason if outcome != "scored" else None, version, now, p))

    def reports(self, status: str | None = None, uid: str | None = None) -> list[ReportRow]:
        q, args, conds = "SELECT * FROM reports", [], []
        if status is not None:
            conds.append("status = ?")
            args.append(status)
        if uid is not None:
            conds.append("uid = ?")
            args.append(uid)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        with self._lock:
            rows = self._conn.execute(q + " ORDER BY uid, version", args).fetchall()
        return [ReportRow(r["uid"], int(r["version"]), r["status"], r["outcome"], r["reason"], r["agatston_total"],
                          int(r["n_files"]), r["files_json"], r["latency_ms"]) for r in rows]


def _file_row(r: sqlite3.Row) -> FileRow:
    return FileRow(r["path"], int(r["size"]), int(r["mtime_ns"]), r["status"], r["reason"], r["message"],
                   r["series_uid"], r["sop_uid"], r["report_version"], r["moved_to"])
