"""CSV ledger: one line per report written, the department's running record of every series.

Appending is the only operation; a line is written in one ``write`` call on a file opened in append
mode, so concurrent writers in one process (guarded by a lock) never interleave half lines.
"""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path
from typing import Any

from cacstream.engine.domain import ARTERIES

LEDGER_COLUMNS: tuple[str, ...] = (
    "created_utc",
    "series_instance_uid",
    "report_version",
    "status",
    "reason",
    "mode",
    "agatston_total",
    *(f"agatston_{a}" for a in ARTERIES),
    "volume_mm3_total",
    "mass_mg_total",
    "risk_category",
    "slices_total",
    "slices_flagged",
    "weights_id",
    "backend",
    "precision",
    "report_file",
)

_lock = threading.Lock()


def ledger_row(report: dict[str, Any], report_file: str) -> dict[str, Any]:
    """Flatten a report into the ledger's columns (empty cells for what a rejected series lacks)."""
    per = report.get("agatston_per_artery") or {}
    model = report.get("model") or {}
    row: dict[str, Any] = {
        "created_utc": report["created_utc"],
        "series_instance_uid": report["series_instance_uid"],
        "report_version": report["report_version"],
        "status": report["status"],
        "reason": report.get("reason") or "",
        "mode": report.get("mode") or "",
        "agatston_total": "" if report.get("agatston_total") is None else report["agatston_total"],
        "volume_mm3_total": "" if report.get("volume_mm3_total") is None else report["volume_mm3_total"],
        "mass_mg_total": "" if report.get("mass_mg_total") is None else report["mass_mg_total"],
        "risk_category": report.get("risk_category") or "",
        "slices_total": report.get("slices_total", ""),
        "slices_flagged": "" if report.get("slices_flagged") is None else report["slices_flagged"],
        "weights_id": model.get("weights_id") or "",
        "backend": model.get("backend") or "",
        "precision": model.get("precision") or "",
        "report_file": report_file,
    }
    for a in ARTERIES:
        row[f"agatston_{a}"] = per.get(a, "") if per else ""
    return row


def append_to_ledger(ledger: Path, report: dict[str, Any], report_file: str) -> None:
    """Append one report to the CSV ledger, writing the header when the file is new."""
    ledger = Path(ledger)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LEDGER_COLUMNS, lineterminator="\n")
    with _lock:
        new = not ledger.exists() or ledger.stat().st_size == 0
        if new:
            writer.writeheader()
        writer.writerow(ledger_row(report, report_file))
        with ledger.open("a", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
            f.flush()
