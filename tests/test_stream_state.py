"""The state database: WAL, file fates, two-phase report records, atomic transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cacstream.engine.stream.state import StateDB


def test_files_reports_and_series_round_trip(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.sqlite")
    assert db._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.upsert_file("/x/a.dcm", 10, 1, "pending")
    db.upsert_file("/x/a.dcm", 12, 2, "accepted", series_uid="1.2", sop_uid="1.2.1")
    db.upsert_file("/x/j.dcm", 5, 1, "quarantined", reason="not_dicom", message="junk")
    assert db.open_series("1.2") == 0
    db.stage_report("1.2", 1, "scored", None, 3.5, '["/x/a.dcm"]', 1)
    assert [r.status for r in db.reports()] == ["staged"]
    db.mark_published("1.2", 1, "scored", None, 3.5, ["/x/a.dcm"], latency_ms=12.0)
    f = db.file("/x/a.dcm")
    assert (f.status, f.report_version, f.size) == ("scored", 1, 12)
    assert db.series_row("1.2")["status"] == "reported" and db.open_series("1.2") == 1  # re-open keeps version
    assert db.counts() == {"scored": 1, "quarantined": 1}
    with pytest.raises(ValueError):
        db.upsert_file("/x/b.dcm", 1, 1, "lost")
    db.close()
    again = StateDB(tmp_path / "s.sqlite")  # survives a reopen
    assert again.reports(status="published")[0].latency_ms == 12.0


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.sqlite")
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.upsert_file("/x/a.dcm", 1, 1, "pending")
            raise RuntimeError("crash in the middle")
    assert db.file("/x/a.dcm") is None
    with sqlite3.connect(tmp_path / "s.sqlite") as c:  # another reader sees a consistent database
        assert c.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0
