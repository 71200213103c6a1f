"""Structured JSON logs for the streaming engine, without patient names or IDs.

Decision (documented in the README): a log line never carries PHI. Series are named by ``series_ref``
(the first 16 hex digits of sha256(SeriesInstanceUID)); the JSON report carries the same
``series_ref`` next to the UID, so an operator with access to the reports can match a log line to its
series, while the logs themselves (often shipped to central log stores) hold nothing that identifies a
patient. File paths can hold patient names (some exports name folders after the patient), so files
are named by ``file_ref`` (sha256 of the path relative to the export folder) unless the operator
opts in with ``--log-paths``. Free-text messages from the DICOM readers name file paths, so they are
only logged with ``--log-paths`` too; otherwise the machine reason code is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

LOGGER_NAME = "cacstream.stream"


def ref(text: str) -> str:
    """16-hex sha256 handle of a UID or a path."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, plus the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(payload, default=str)


class EventLog:
    """The engine's log: ``log.event("series_reported", series_uid=uid, version=2)`` writes a JSON line.

    Keys named ``series_uid`` become ``series_ref``; ``path`` becomes ``file_ref`` (plus ``file`` when
    paths may be logged); ``message`` is dropped unless paths may be logged.
    """

    def __init__(self, root: Path | None = None, *, log_paths: bool = False, stream: TextIO | None = None,
                 file: Path | None = None, level: int = logging.INFO) -> None:
        self.root = Path(root) if root else None
        self.log_paths = log_paths
        self.logger = logging.getLogger(f"{LOGGER_NAME}.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(level)
        for h in list(self.logger.handlers):
            self.logger.removeHandler(h)
        handler: logging.Handler
        if file:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8") if file else logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
        self.logger.addHandler(handler)
        self._handler = handler

    def close(self) -> None:
        self.logger.removeHandler(self._handler)
        self._handler.close()

    def _rel(self, path: str | Path) -> str:
        p = Path(path)
        if self.root is not None:
            try:
                return str(p.relative_to(self.root))
            except ValueError:
                pass
        return str(p)

    def scrub(self, fields: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in fields.items():
            if k == "series_uid" and v:
                out["series_ref"] = ref(str(v))
            elif k == "path" and v:
                rel = self._rel(v)
                out["file_ref"] = ref(rel)
                if self.log_paths:
                    out["file"] = rel
            elif k == "message":
                if self.log_paths and v:
                    out["message"] = v
            else:
                out[k] = v
        return out

    def event(self, name: str, level: int = logging.INFO, **fields: Any) -> None:
        self.logger.log(level, name, extra={"fields": self.scrub(fields)})

    def warning(self, name: str, **fields: Any) -> None:
        self.event(name, logging.WARNING, **fields)

    def error(self, name: str, **fields: Any) -> None:
        self.event(name, logging.ERROR, **fields)


def monotonic_ms() -> float:
    return time.monotonic() * 1e3
