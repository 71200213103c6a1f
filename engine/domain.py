"""Domain constants shared by every part: artery labels and risk categories.

One place so that the segmenter's class indices, the report's artery keys and the
phantom's truth files can never disagree.
"""

from __future__ import annotations

from typing import Final

#: Report keys for the four coronary arteries, in the segmenter's class order (class 0 is background).
ARTERIES: Final[tuple[str, ...]] = ("LM", "LAD", "LCX", "RCA")

#: Segmenter / label-volume class index of each artery.
ARTERY_LABEL: Final[dict[str, int]] = {name: i + 1 for i, name in enumerate(ARTERIES)}

#: Inverse of :data:`ARTERY_LABEL`.
LABEL_ARTERY: Final[dict[int, str]] = {i: name for name, i in ARTERY_LABEL.items()}

#: Number of segmenter classes (background + arteries).
NUM_SEG_CLASSES: Final[int] = len(ARTERIES) + 1

#: Risk categories in increasing order, as they appear in the report.
RISK_CATEGORIES: Final[tuple[str, ...]] = ("0", "1-10", "11-100", "101-400", ">400")


def risk_category(agatston_total: float) -> str:
    """Map a total Agatston score to its risk category (DESIGN.md: 0, 1-10, 11-100, 101-400, >400).

    Scores are real numbers (areas in mm² times weights), so the bins are half-open on the
    integer boundaries: (0, 10] is "1-10", (10, 100] is "11-100", and so on. Exactly 0 is "0".
    """
    if agatston_total < 0:
        raise ValueError(f"Agatston score cannot be negative: {agatston_total}")
    if agatston_total == 0:
        return "0"
    if agatston_total <= 10:
        return "1-10"
    if agatston_total <= 100:
        return "11-100"
    if agatston_total <= 400:
        return "101-400"
    return ">400"
