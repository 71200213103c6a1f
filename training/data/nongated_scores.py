"""COCA non-gated expert scores: ``deidentified_nongated/scores.xlsx`` → per-artery Agatston.

The sheet as COCA ships it (first worksheet, header in row 1)::

    A: "filename "   B: LCA   C: LAD   D: LCX   E: RCA   F: total
    1A               0        0        0        0        0
    2A               132      1.91     128      37.5     300

``filename`` ids are the patient folder name plus a letter ("1A" is folder ``1``). ``LCA`` is the left
coronary artery, i.e. the left main: reported as ``LM``. ``total`` is kept as written; in COCA it
is rounded (2A: the arteries sum to 299.41, the total says 300), so it is not recomputed here.
Columns are found by their header (case and surrounding spaces ignored), not by position.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cacstream.engine.domain import ARTERIES

#: Normalised header text → score key. LCA and LM both mean the left main.
_HEADER_KEYS: Final[dict[str, str]] = {
    "lca": "LM",
    "lm": "LM",
    "lad": "LAD",
    "lcx": "LCX",
    "rca": "RCA",
    "total": "total",
}
_ID_HEADERS: Final[frozenset[str]] = frozenset({"filename", "file name", "id", "patient", "patient id"})
_ID_RE: Final[re.Pattern[str]] = re.compile(r"^(\d+)([A-Za-z]?)$")

SCORE_KEYS: Final[tuple[str, ...]] = (*ARTERIES, "total")


class ScoresSheetError(ValueError):
    """``scores.xlsx`` does not have the layout described in this module (file and cell named)."""


@dataclass(frozen=True)
class NongatedScoreRow:
    """One patient row: the sheet's id ("2A"), its folder id ("2"), the row number, and the scores."""

    sheet_id: str
    patient_id: str
    row: int
    scores: dict[str, float]

    @property
    def sum_of_arteries(self) -> float:
        return float(sum(self.scores[a] for a in ARTERIES))


def _normalise_header(value: Any) -> str:
    return " ".join(str(value).split()).casefold() if value is not None else ""


def _header_columns(header: tuple[Any, ...], path: Path) -> tuple[int, dict[str, int]]:
    """Column index of the id and of each score key, from the header row."""
    id_col: int | None = None
    cols: dict[str, int] = {}
    for i, value in enumerate(header):
        text = _normalise_header(value)
        if text in _ID_HEADERS and id_col is None:
            id_col = i
        elif text in _HEADER_KEYS:
            key = _HEADER_KEYS[text]
            if key in cols:
                raise ScoresSheetError(f"{path}: two header columns mean {key} ({header[cols[key]]!r}, {value!r})")
            cols[key] = i
    missing = [k for k in SCORE_KEYS if k not in cols]
    if id_col is None or missing:
        need = (["filename"] if id_col is None else []) + missing
        raise ScoresSheetError(f"{path}: header row {list(header)!r} lacks column(s) {need}")
    return id_col, cols


def _cell_name(row: int, col: int) -> str:
    from openpyxl.utils import get_column_letter

    return f"{get_column_letter(col + 1)}{row}"


def _score(value: Any, path: Path, row: int, col: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScoresSheetError(f"{path} cell {_cell_name(row, col)}: {value!r} is not a number")
    score = float(value)
    if not math.isfinite(score) or score < 0:
        raise ScoresSheetError(f"{path} cell {_cell_name(row, col)}: {value!r} is not a valid Agatston score")
    return score


def _patient_id(value: Any, path: Path, row: int, col: int) -> tuple[str, str]:
    text = str(value).strip() if value is not None else ""
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    m = _ID_RE.match(text)
    if m is None:
        raise ScoresSheetError(
            f"{path} cell {_cell_name(row, col)}: id {value!r} is not a folder number with an optional letter (e.g. '1A')"
        )
    return text, m.group(1)


def read_scores_sheet(path: Path) -> list[NongatedScoreRow]:
    """Parse ``scores.xlsx``: one :class:`NongatedScoreRow` per non-empty row after the header.

    Raises :class:`ScoresSheetError` naming the file and cell for a missing column, a non-numeric
    or negative score, an unreadable id, or two rows naming the same patient folder.
    """
    import openpyxl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scores sheet not found")
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile / KeyError / InvalidFileException variants
        raise ScoresSheetError(f"{path}: not a readable .xlsx workbook ({type(exc).__name__}: {exc})") from exc
    try:
        sheet = workbook.worksheets[0]
        rows = list(sheet.iter_rows(values_only=True))
    finally:
        workbook.close()
    if not rows:
        raise ScoresSheetError(f"{path}: the first worksheet is empty")
    id_col, cols = _header_columns(rows[0], path)
    out: list[NongatedScoreRow] = []
    seen: dict[str, int] = {}
    for offset, values in enumerate(rows[1:]):
        row = offset + 2  # 1-based sheet row number, after the header
        if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
            continue
        padded = tuple(values) + (None,) * (max(cols.values()) + 1 - len(values))
        sheet_id, pid = _patient_id(padded[id_col], path, row, id_col)
        if pid in seen:
            raise ScoresSheetError(f"{path}: rows {seen[pid]} and {row} both name patient folder {pid!r}")
        seen[pid] = row
        scores = {key: _score(padded[c], path, row, c) for key, c in cols.items()}
        out.append(NongatedScoreRow(sheet_id, pid, row, {k: scores[k] for k in SCORE_KEYS}))
    return out
