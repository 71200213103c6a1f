"""COCA calcium ROIs: OsiriX plist parsing and polygon rasterisation.

COCA ships each gated patient's calcium annotations as an OsiriX ROI export (an XML property list):
``Images`` → one dict per annotated image with ``ImageIndex`` and ``ROIs`` → one dict per ROI with
``Name`` (the artery), ``Point_px`` (the contour, strings ``"(x, y)"`` in pixel units, x = column,
y = row), and OsiriX's own statistics of the ROI: ``Area`` (cm²), ``Max``/``Min``/``Mean``/``Total``
(HU over the ROI's pixels).

Which pixels OsiriX counts as the ROI (verified on all 40 ROIs of the three gated samples, see
``tests/test_coca.py``): the ROIs are brush ROIs (``Type`` 20) whose contour is an iso-line of the
painted mask that passes 1/255 px inside the centres of the UNpainted pixels bordering the region.
With pixel *centres at integer coordinates* (``mask[row, col]`` ↔ point ``(col, row)``), the ROI
is the set of pixel centres strictly inside the polygon by the even-odd rule. That set reproduces
every ROI's ``Area`` (pixel count × pixel area) and its ``Max``/``Min``/``Mean`` exactly. No pixel
centre lies closer than 0.0028 px (1/255/√2) to a contour, so whether the boundary itself counts
never decides a pixel; a tolerance of 0.01 px would (and then no ROI matches). Half-pixel-shifted
centres, edge-inclusive scan conversion (PIL) and rounded vertices match 0, 0 and 19 of the 30
non-empty ROIs. (``Point_mm`` sits half a pixel off ``Point_px``: OsiriX's mm coordinates put a
pixel's corner, not its centre, at the integer; the HU statistics prove the centre convention.)

This module knows nothing of DICOM: it turns the XML into typed records and polygons into masks.
``coca.py`` maps them onto a decoded series.
"""

from __future__ import annotations

import math
import plistlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from cacstream.engine.domain import ARTERIES

#: COCA / OsiriX ROI names → report artery keys. "Left Coronary Artery" is the left main (LM);
#: the circumflex is its own artery (merging it into the left coronary is a known public-reader bug).
ROI_NAME_TO_ARTERY: Final[dict[str, str]] = {
    "Left Coronary Artery": "LM",
    "Left Anterior Descending Artery": "LAD",
    "Left Circumflex Artery": "LCX",
    "Right Coronary Artery": "RCA",
}

if sorted(ROI_NAME_TO_ARTERY.values()) != sorted(ARTERIES):  # pragma: no cover - guards edits of domain.py
    raise RuntimeError(f"COCA ROI names map to {sorted(ROI_NAME_TO_ARTERY.values())}, domain has {ARTERIES}")

_NAME_LOOKUP: Final[dict[str, str]] = {" ".join(k.split()).casefold(): v for k, v in ROI_NAME_TO_ARTERY.items()}

#: A plist point string: "(x, y)" as OsiriX writes it, or "{x, y}" (NSStringFromPoint).
_POINT_RE: Final[re.Pattern[str]] = re.compile(
    r"^\s*[({]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*,\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*[)}]\s*$"
)
_POINT3_RE: Final[re.Pattern[str]] = re.compile(
    r"^\s*[({]\s*([^,]+),\s*([^,]+),\s*([^,)}]+)[)}]\s*$"
)

UnknownNamePolicy = Literal["raise", "skip"]


class CocaFormatError(ValueError):
    """A COCA file does not have the structure this reader relies on (message names file and place)."""


class UnknownRoiNameError(CocaFormatError):
    """A ROI's ``Name`` is not one of the four coronary artery names COCA uses."""


@dataclass(frozen=True, eq=False)
class RoiRecord:
    """One ROI as written in the plist, before it is placed on a series.

    ``points_px`` is float64 (K, 2) in (column, row) order, exactly as ``Point_px``. ``area_cm2``,
    ``max_hu``, ``min_hu``, ``mean_hu`` and ``total_hu`` are OsiriX's own statistics of the ROI
    (all 0 for an empty ROI, one with no points). ``center_mm`` is the ``Center`` field (patient
    coordinates); its projection on the slice normal tells which slice OsiriX drew on.
    """

    source: Path
    image_index: int
    index_in_image: int
    name: str
    artery: str
    points_px: np.ndarray
    area_cm2: float
    max_hu: float
    min_hu: float
    mean_hu: float
    total_hu: float
    center_mm: tuple[float, float, float] | None
    roi_type: int | None

    @property
    def is_empty(self) -> bool:
        """An ROI without a contour (OsiriX keeps them with Area 0); it holds no pixels."""
        return self.points_px.shape[0] < 3

    def where(self) -> str:
        """Where this ROI sits, for messages."""
        return f"{self.source} ImageIndex {self.image_index} ROI {self.index_in_image} ({self.name!r})"


@dataclass(frozen=True)
class SkippedRoi:
    """An ROI left out under ``unknown_names="skip"``, with the reason (kept so nothing vanishes)."""

    source: Path
    image_index: int
    index_in_image: int
    name: str
    reason: str


def artery_for_roi_name(name: str) -> str | None:
    """Artery key for a COCA ROI name (whitespace and case tolerant), or None when unknown."""
    return _NAME_LOOKUP.get(" ".join(str(name).split()).casefold())


def parse_point_px(text: str, where: str) -> tuple[float, float]:
    """Parse one ``Point_px`` string into (x, y) = (column, row); ``where`` names it in errors."""
    m = _POINT_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise CocaFormatError(f"{where}: Point_px entry {text!r} is not of the form '(x, y)'")
    x, y = float(m.group(1)), float(m.group(2))
    if not (math.isfinite(x) and math.isfinite(y)):
        raise CocaFormatError(f"{where}: Point_px entry {text!r} is not finite")
    return x, y


def _parse_center(text: Any, where: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    m = _POINT3_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise CocaFormatError(f"{where}: Center {text!r} is not of the form '(x, y, z)'")
    try:
        return (float(m.group(1)), float(m.group(2)), float(m.group(3)))
    except ValueError as exc:
        raise CocaFormatError(f"{where}: Center {text!r} has a non-numeric coordinate") from exc


def _number(roi: dict[str, Any], key: str, where: str) -> float:
    value = roi.get(key, None)
    if value is None:
        raise CocaFormatError(f"{where}: ROI has no {key!r} field")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CocaFormatError(f"{where}: ROI field {key!r} is {value!r}, not a number")
    return float(value)


def _int_field(d: dict[str, Any], key: str, where: str) -> int:
    value = d.get(key, None)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CocaFormatError(f"{where}: field {key!r} is {value!r}, expected an integer")
    return int(value)


def _parse_roi(
    roi: Any, source: Path, image_index: int, position: int
) -> RoiRecord | SkippedRoi:
    where0 = f"{source} ImageIndex {image_index} ROI #{position}"
    if not isinstance(roi, dict):
        raise CocaFormatError(f"{where0}: ROI entry is a {type(roi).__name__}, expected a dict")
    index_in_image = roi.get("IndexInImage", position)
    if isinstance(index_in_image, bool) or not isinstance(index_in_image, int):
        raise CocaFormatError(f"{where0}: IndexInImage is {index_in_image!r}, expected an integer")
    name = roi.get("Name")
    where = f"{source} ImageIndex {image_index} ROI {index_in_image} ({name!r})"
    if not isinstance(name, str):
        raise CocaFormatError(f"{where}: ROI has no Name string")
    artery = artery_for_roi_name(name)
    if artery is None:
        return SkippedRoi(source, image_index, int(index_in_image), name, "unknown ROI name")
    raw_points = roi.get("Point_px", [])
    if not isinstance(raw_points, list):
        raise CocaFormatError(f"{where}: Point_px is a {type(raw_points).__name__}, expected an array")
    points = np.array([parse_point_px(p, where) for p in raw_points], dtype=np.float64).reshape(-1, 2)
    n_declared = roi.get("NumberOfPoints")
    if isinstance(n_declared, int) and not isinstance(n_declared, bool) and n_declared != len(points):
        raise CocaFormatError(f"{where}: NumberOfPoints is {n_declared} but Point_px holds {len(points)} points")
    roi_type = roi.get("Type")
    return RoiRecord(
        source=source,
        image_index=image_index,
        index_in_image=int(index_in_image),
        name=name,
        artery=artery,
        points_px=points,
        area_cm2=_number(roi, "Area", where),
        max_hu=_number(roi, "Max", where),
        min_hu=_number(roi, "Min", where),
        mean_hu=_number(roi, "Mean", where),
        total_hu=float(roi.get("Total", 0.0) or 0.0),
        center_mm=_parse_center(roi.get("Center"), where),
        roi_type=int(roi_type) if isinstance(roi_type, int) and not isinstance(roi_type, bool) else None,
    )


def parse_roi_plist(
    path: Path, unknown_names: UnknownNamePolicy = "raise"
) -> tuple[list[RoiRecord], list[SkippedRoi]]:
    """Read every ROI of an OsiriX plist export, keeping all ROIs of every image.

    Several ROIs may share an image and even an artery; all are returned, in file order.
    An ROI whose name is not a COCA artery name raises :class:`UnknownRoiNameError` (default) or,
    with ``unknown_names="skip"``, is returned in the second list with its place and reason.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            doc = plistlib.load(fh)
    except OSError:
        raise
    except Exception as exc:  # plistlib raises several unrelated types on malformed XML
        raise CocaFormatError(f"{path}: not a readable OsiriX plist ({type(exc).__name__}: {exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("Images"), list):
        raise CocaFormatError(f"{path}: plist has no 'Images' array at the top level")
    records: list[RoiRecord] = []
    skipped: list[SkippedRoi] = []
    for n, image in enumerate(doc["Images"]):
        if not isinstance(image, dict):
            raise CocaFormatError(f"{path}: Images[{n}] is a {type(image).__name__}, expected a dict")
        image_index = _int_field(image, "ImageIndex", f"{path} Images[{n}]")
        rois = image.get("ROIs", [])
        if not isinstance(rois, list):
            raise CocaFormatError(f"{path} ImageIndex {image_index}: ROIs is not an array")
        declared = image.get("NumberOfROIs")
        if isinstance(declared, int) and not isinstance(declared, bool) and declared != len(rois):
            raise CocaFormatError(
                f"{path} ImageIndex {image_index}: NumberOfROIs is {declared} but ROIs holds {len(rois)}"
            )
        for position, roi in enumerate(rois):
            parsed = _parse_roi(roi, path, image_index, position)
            if isinstance(parsed, SkippedRoi):
                if unknown_names == "raise":
                    raise UnknownRoiNameError(
                        f"{path} ImageIndex {image_index} ROI {parsed.index_in_image}: unknown ROI name "
                        f"{parsed.name!r} (expected one of {sorted(ROI_NAME_TO_ARTERY)}; "
                        f"pass unknown_names='skip' to leave such ROIs out, listed)"
                    )
                skipped.append(parsed)
            else:
                records.append(parsed)
    return records, skipped


def expected_pixel_count(area_cm2: float, pixel_area_mm2: float) -> float:
    """Pixels an ROI of OsiriX ``Area`` (cm²) covers (not rounded: callers check it is integral)."""
    if pixel_area_mm2 <= 0:
        raise ValueError(f"pixel area must be > 0 mm², got {pixel_area_mm2}")
    return area_cm2 * 100.0 / pixel_area_mm2


def _scanline_crossings(points: np.ndarray, ys: np.ndarray) -> list[np.ndarray]:
    """Sorted x where each horizontal line y crosses the closed polygon (half-open edge rule)."""
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    yy = ys[:, None].astype(np.float64)
    crosses = (y0[None, :] > yy) != (y1[None, :] > yy)
    dy = np.where(y1 == y0, 1.0, y1 - y0)  # rows with y1 == y0 never cross
    xs = x0[None, :] + (yy - y0[None, :]) * ((x1 - x0) / dy)[None, :]
    return [np.sort(xs[i, crosses[i]]) for i in range(len(ys))]


def polygon_pixels(points_xy: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels whose centres lie strictly inside the polygon (even-odd rule).

    ``points_xy`` is (K, 2) in (column, row) order with pixel centres at integer coordinates, the
    COCA ``Point_px`` convention. Fewer than 3 points enclose nothing. Pixels outside ``shape``
    are clipped away.
    """
    pts = np.asarray(points_xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"polygon must be (K, 2) points, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("polygon has non-finite coordinates")
    n_rows, n_cols = int(shape[0]), int(shape[1])
    empty = (np.zeros(0, np.intp), np.zeros(0, np.intp))
    if pts.shape[0] < 3:
        return empty
    first_row = max(0, math.floor(pts[:, 1].min()) + 1)
    last_row = min(n_rows - 1, math.ceil(pts[:, 1].max()) - 1)
    if last_row < first_row:
        return empty
    ys = np.arange(first_row, last_row + 1)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for y, xs in zip(ys, _scanline_crossings(pts, ys)):
        for left, right in zip(xs[0::2], xs[1::2]):
            c0 = max(0, math.floor(left) + 1)  # first integer strictly greater than left
            c1 = min(n_cols - 1, math.ceil(right) - 1)  # last integer strictly less than right
            if c1 >= c0:
                span = np.arange(c0, c1 + 1, dtype=np.intp)
                cols.append(span)
                rows.append(np.full(span.shape, y, dtype=np.intp))
    if not rows:
        return empty
    return np.concatenate(rows), np.concatenate(cols)


def polygon_mask(points_xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (rows, cols) mask of :func:`polygon_pixels`."""
    mask = np.zeros((int(shape[0]), int(shape[1])), dtype=bool)
    rr, cc = polygon_pixels(points_xy, shape)
    mask[rr, cc] = True
    return mask
