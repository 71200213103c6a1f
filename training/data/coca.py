"""COCA (Stanford AIMI coronary calcium) reader: gated scans with ROIs, non-gated scans with scores.

Layout (COCA's own, as downloaded)::

    ROOT/Gated_release_final/patient/<pid>/<series folder>/*.dcm
    ROOT/Gated_release_final/calcium_xml/<pid>.xml          OsiriX plist ROIs (see coca_rois.py)
    ROOT/deidentified_nongated/<pid>/<series folder>/*.dcm
    ROOT/deidentified_nongated/scores.xlsx                   expert per-artery Agatston (id "1A" = pid 1)

``ROOT`` may also be the ``Gated_release_final`` / ``deidentified_nongated`` folder itself.

Placing ROIs on the volume: ROI ``ImageIndex`` *i* is the *(N−1−i)*-th file of the series in sorted
file-name order. That picks a FILE; the file's slice index in the volume is where the series reader
put it by geometry (ImagePositionPatient along the normal), never assumed from the file order. The
ROI's ``Center`` (patient mm) is then checked against that slice's position, so a wrong mapping is
an error instead of a silently shifted label. Every ROI is kept: several ROIs may share a slice and
an artery. A gated patient without an XML file is read as having no calcium ROIs (``roi_file`` is
None), on the understanding that COCA omits the file for patients without annotated calcium (all
three samples here have one, so this is not verified on them); ``require_xml=True`` makes a
missing file an error instead.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cacstream.engine.config import EligibilityConfig
from cacstream.engine.domain import ARTERY_LABEL
from cacstream.engine.series.types import ScanResult, Series, Volume
from cacstream.training.data.coca_rois import (
    CocaFormatError,
    RoiRecord,
    SkippedRoi,
    UnknownNamePolicy,
    expected_pixel_count,
    parse_roi_plist,
    polygon_pixels,
)
from cacstream.training.data.nongated_scores import NongatedScoreRow, read_scores_sheet

__all__ = [
    "CocaCase",
    "CocaFormatError",
    "CocaRoi",
    "NongatedCase",
    "gated_dir",
    "list_gated_patients",
    "list_nongated_patients",
    "load_gated_patient",
    "load_nongated_patient",
    "load_nongated_scores",
    "nongated_dir",
    "read_single_series",
]

GATED_FOLDER = "Gated_release_final"
NONGATED_FOLDER = "deidentified_nongated"
SCORES_FILE = "scores.xlsx"

#: An ROI whose Center lies farther than this fraction of the slice increment from its slice's
#: position was mapped to the wrong slice.
_CENTER_TOLERANCE_FRACTION = 0.25
#: OsiriX stores Area as float32: the implied pixel count is integral to well within this.
_PIXEL_COUNT_TOLERANCE = 1e-3


@dataclass(frozen=True, eq=False)
class CocaRoi:
    """One COCA ROI placed on its volume: plist fields, the slice it lies on and its pixels.

    ``slice_index`` indexes the volume in geometric order; ``file`` is the DICOM file ImageIndex
    names. ``pixel_rows``/``pixel_cols`` are the ROI's interior pixels on that slice. ``mask_*_hu``
    are statistics of the volume's HU over those pixels (None for an empty ROI), to compare with
    OsiriX's own ``max_hu``/``min_hu``/``mean_hu``.
    """

    record: RoiRecord
    slice_index: int
    file: Path
    pixel_rows: np.ndarray
    pixel_cols: np.ndarray
    pixel_area_mm2: float
    mask_max_hu: float | None
    mask_min_hu: float | None
    mask_mean_hu: float | None

    @property
    def artery(self) -> str:
        return self.record.artery

    @property
    def label(self) -> int:
        return ARTERY_LABEL[self.record.artery]

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def image_index(self) -> int:
        return self.record.image_index

    @property
    def index_in_image(self) -> int:
        return self.record.index_in_image

    @property
    def points_px(self) -> np.ndarray:
        return self.record.points_px

    @property
    def area_cm2(self) -> float:
        return self.record.area_cm2

    @property
    def max_hu(self) -> float:
        return self.record.max_hu

    @property
    def mean_hu(self) -> float:
        return self.record.mean_hu

    @property
    def min_hu(self) -> float:
        return self.record.min_hu

    @property
    def n_pixels(self) -> int:
        return int(self.pixel_rows.size)

    @property
    def expected_pixels(self) -> float:
        """Pixel count implied by the ROI's own Area (cm²) and the series' pixel area."""
        return expected_pixel_count(self.record.area_cm2, self.pixel_area_mm2)

    def disagreements(self) -> list[str]:
        """How the rasterised pixels disagree with the ROI's own fields (empty list: they agree)."""
        out: list[str] = []
        expected = self.expected_pixels
        if abs(expected - round(expected)) > _PIXEL_COUNT_TOLERANCE:
            out.append(f"Area {self.area_cm2} cm² is not a whole number of pixels ({expected:.4f})")
        if self.n_pixels != round(expected):
            out.append(f"{self.n_pixels} pixels rasterised, Area implies {expected:.3f}")
        if self.n_pixels and self.mask_max_hu != self.max_hu:
            out.append(f"max HU in mask {self.mask_max_hu} != ROI Max {self.max_hu}")
        if self.n_pixels and self.mask_min_hu != self.min_hu:
            out.append(f"min HU in mask {self.mask_min_hu} != ROI Min {self.min_hu}")
        return out


@dataclass
class CocaCase:
    """A gated COCA patient: HU volume, per-artery ROI label volume and the ROIs themselves.

    ``labels`` is uint8 (slices, rows, columns) with the ``engine.domain`` artery labels (0
    background, 1 LM, 2 LAD, 3 LCX, 4 RCA) marking each ROI's interior. ``problems`` lists ROIs whose
    rasterised pixels disagree with their own Area/Max/Min (also emitted as warnings).
    """

    patient_id: str
    volume: Volume
    labels: np.ndarray
    rois: list[CocaRoi]
    roi_file: Path | None
    skipped_rois: list[SkippedRoi] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class NongatedCase:
    """A non-gated COCA patient: HU volume and the expert per-artery Agatston from scores.xlsx."""

    patient_id: str
    sheet_id: str
    volume: Volume
    expected_scores: dict[str, float]


# ----------------------------------------------------------------------------------------- layout


def _natural_key(name: str) -> tuple[object, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def gated_dir(root: Path) -> Path:
    """The ``Gated_release_final`` folder under ``root`` (or ``root`` itself when it is that folder)."""
    root = Path(root)
    for candidate in (root / GATED_FOLDER, root):
        if (candidate / "patient").is_dir():
            return candidate
    raise FileNotFoundError(f"{root}: no COCA gated data (expected {GATED_FOLDER}/patient/ or patient/ here)")


def nongated_dir(root: Path) -> Path:
    """The ``deidentified_nongated`` folder under ``root`` (or ``root`` itself when it is that folder)."""
    root = Path(root)
    for candidate in (root / NONGATED_FOLDER, root):
        if (candidate / SCORES_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"{root}: no COCA non-gated data (expected {NONGATED_FOLDER}/{SCORES_FILE} or {SCORES_FILE} here)"
    )


def _patient_folders(parent: Path) -> list[str]:
    return sorted((p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key)


def list_gated_patients(root: Path) -> list[str]:
    """Gated patient ids (folder names under ``patient/``), in natural order."""
    return _patient_folders(gated_dir(root) / "patient")


def list_nongated_patients(root: Path) -> list[str]:
    """Non-gated patient ids (folder names under ``deidentified_nongated/``), in natural order."""
    return _patient_folders(nongated_dir(root))


# ----------------------------------------------------------------------------------------- series


def _describe_scan(folder: Path, scan: ScanResult) -> str:
    reasons = [f"series {r.uid}: {r.reason} ({r.message})" for r in scan.rejected]
    if scan.skipped:
        counts = Counter(s.reason for s in scan.skipped)
        first = scan.skipped[0]
        reasons.append(
            f"{len(scan.skipped)} file(s) skipped ({', '.join(f'{k} ×{v}' for k, v in counts.items())}; "
            f"e.g. {first.message})"
        )
    return f"{folder}: no eligible CT series ({'; '.join(reasons) or 'no DICOM files found'})"


def read_single_series(
    folder: Path, eligibility: EligibilityConfig = EligibilityConfig(), threads: int = 0
) -> Volume:
    """Decode the one eligible CT series under ``folder`` (COCA has one per patient folder).

    COCA's non-gated files were de-identified without a SeriesInstanceUID; the engine's reader
    derives a stand-in UID per folder for such files, so they still form one series. Raises
    :class:`CocaFormatError` naming the folder when there is no eligible series (with the reader's
    reasons) or more than one.
    """
    from cacstream.engine.series import read_volume, scan_path

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: patient folder not found")
    scan = scan_path(folder, eligibility)
    if len(scan.series) == 1:
        return read_volume(scan.series[0], threads=threads)
    if not scan.series:
        raise CocaFormatError(_describe_scan(folder, scan))
    uids = ", ".join(s.uid for s in scan.series)
    raise CocaFormatError(f"{folder}: {len(scan.series)} eligible series ({uids}); COCA has one per patient")


def _file_for_image_index(series: Series, image_index: int, where: str) -> Path:
    """The file OsiriX's ImageIndex points at: the (N−1−i)-th in sorted file-name order."""
    paths = [s.path for s in series.slices]
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise CocaFormatError(f"{where}: series has repeated file names; ImageIndex cannot be mapped to files")
    by_name = sorted(paths, key=lambda p: p.name)
    n = len(by_name)
    if not 0 <= image_index < n:
        raise CocaFormatError(f"{where}: ImageIndex {image_index} is outside the series' {n} images")
    return by_name[n - 1 - image_index]


def _slice_of_file(series: Series) -> dict[Path, int]:
    out: dict[Path, int] = {}
    for i, s in enumerate(series.slices):
        if s.frame is not None:
            raise CocaFormatError(f"{s.path}: multi-frame images are not part of the COCA layout")
        out[s.path] = i
    return out


def _check_center(record: RoiRecord, series: Series, slice_index: int, file: Path) -> None:
    """The ROI's Center must lie on the slice its ImageIndex mapped to (else the mapping is wrong)."""
    if record.center_mm is None:
        return
    geom = series.geometry
    z_center = float(np.dot(np.asarray(record.center_mm), np.asarray(geom.normal)))
    z_slice = float(geom.z_mm[slice_index])
    if abs(z_center - z_slice) > _CENTER_TOLERANCE_FRACTION * geom.slice_increment_mm:
        raise CocaFormatError(
            f"{record.where()}: Center lies at {z_center:.2f} mm along the normal but ImageIndex maps to "
            f"{file.name} (slice {slice_index}) at {z_slice:.2f} mm; the ROI file does not fit this series"
        )


# ----------------------------------------------------------------------------------------- gated


def _place_roi(record: RoiRecord, volume: Volume, slice_of_file: dict[Path, int]) -> CocaRoi:
    series = volume.series
    file = _file_for_image_index(series, record.image_index, record.where())
    slice_index = slice_of_file[file]
    _check_center(record, series, slice_index, file)
    rows, cols = polygon_pixels(record.points_px, (series.geometry.rows, series.geometry.columns))
    values = volume.hu[slice_index][rows, cols]
    has = values.size > 0
    return CocaRoi(
        record=record,
        slice_index=slice_index,
        file=file,
        pixel_rows=rows,
        pixel_cols=cols,
        pixel_area_mm2=series.geometry.pixel_area_mm2,
        mask_max_hu=float(values.max()) if has else None,
        mask_min_hu=float(values.min()) if has else None,
        mask_mean_hu=float(values.mean(dtype=np.float64)) if has else None,
    )


def rois_to_labels(rois: list[CocaRoi], shape: tuple[int, int, int]) -> np.ndarray:
    """Label volume (uint8, engine.domain labels) painting every ROI's interior with its artery.

    ROIs of the same artery may overlap (union). Pixels claimed by two different arteries are
    ambiguous truth: :class:`CocaFormatError` names both ROIs.
    """
    labels = np.zeros(shape, dtype=np.uint8)
    owner: dict[tuple[int, int, int], CocaRoi] = {}
    for roi in rois:
        current = labels[roi.slice_index, roi.pixel_rows, roi.pixel_cols]
        clash = (current != 0) & (current != roi.label)
        if clash.any():
            k = int(np.argmax(clash))
            other = owner[(roi.slice_index, int(roi.pixel_rows[k]), int(roi.pixel_cols[k]))]
            raise CocaFormatError(
                f"{roi.record.where()} overlaps {other.record.where()} on {int(clash.sum())} pixel(s) of "
                f"slice {roi.slice_index} with a different artery; the label there is ambiguous"
            )
        labels[roi.slice_index, roi.pixel_rows, roi.pixel_cols] = roi.label
        for r, c in zip(roi.pixel_rows.tolist(), roi.pixel_cols.tolist()):
            owner.setdefault((roi.slice_index, r, c), roi)
    return labels


def load_gated_patient(
    root: Path,
    patient_id: str,
    *,
    unknown_names: UnknownNamePolicy = "raise",
    require_xml: bool = False,
    eligibility: EligibilityConfig = EligibilityConfig(),
    threads: int = 0,
) -> CocaCase:
    """Load one gated COCA patient: HU volume, ROI label volume and every ROI placed on its slice.

    Raises :class:`CocaFormatError` (file and reason in the message) for a malformed ROI file, an
    unknown ROI name (unless ``unknown_names="skip"``, which lists them in ``skipped_rois``), a ROI
    that does not lie on the slice its ImageIndex names, or two arteries claiming one pixel.
    ROIs whose pixels disagree with their own Area/Max/Min are kept, listed in ``problems`` and
    warned about.
    """
    base = gated_dir(root)
    pid = str(patient_id)
    patient_folder = base / "patient" / pid
    if not patient_folder.is_dir():
        raise FileNotFoundError(f"{patient_folder}: gated patient {pid!r} not found")
    xml = base / "calcium_xml" / f"{pid}.xml"
    volume = read_single_series(patient_folder, eligibility, threads)
    if not xml.is_file():
        if require_xml:
            raise FileNotFoundError(f"{xml}: no ROI file for gated patient {pid!r}")
        return CocaCase(pid, volume, np.zeros(volume.hu.shape, np.uint8), [], None)
    records, skipped = parse_roi_plist(xml, unknown_names)
    slice_of_file = _slice_of_file(volume.series)
    rois = [_place_roi(r, volume, slice_of_file) for r in records]
    problems = [f"{roi.record.where()}: {d}" for roi in rois for d in roi.disagreements()]
    for message in problems:
        warnings.warn(message, stacklevel=2)
    for s in skipped:
        warnings.warn(f"{s.source} ImageIndex {s.image_index} ROI {s.index_in_image}: skipped ({s.reason}: {s.name!r})", stacklevel=2)
    labels = rois_to_labels(rois, volume.hu.shape)
    return CocaCase(pid, volume, labels, rois, xml, skipped, problems)


# ----------------------------------------------------------------------------------------- non-gated


def load_nongated_score_rows(root: Path) -> list[NongatedScoreRow]:
    """Every row of ``scores.xlsx`` (sheet id, patient folder id, per-artery Agatston)."""
    return read_scores_sheet(nongated_dir(root) / SCORES_FILE)


def load_nongated_scores(root: Path) -> dict[str, dict[str, float]]:
    """Expert Agatston per non-gated patient folder id: {pid: {LM, LAD, LCX, RCA, total}}.

    ``total`` is the sheet's own total column (it is rounded in COCA, so it may differ from the
    sum of the arteries by a fraction of a point).
    """
    return {row.patient_id: dict(row.scores) for row in load_nongated_score_rows(root)}


def load_nongated_patient(
    root: Path,
    patient_id: str,
    *,
    eligibility: EligibilityConfig = EligibilityConfig(),
    threads: int = 0,
) -> NongatedCase:
    """Load one non-gated COCA patient: HU volume plus the expert scores of its sheet row."""
    base = nongated_dir(root)
    pid = str(patient_id)
    rows = {row.patient_id: row for row in read_scores_sheet(base / SCORES_FILE)}
    if pid not in rows:
        raise CocaFormatError(f"{base / SCORES_FILE}: no score row for non-gated patient {pid!r} (have {sorted(rows)})")
    volume = read_single_series(base / pid, eligibility, threads)
    row = rows[pid]
    return NongatedCase(pid, row.sheet_id, volume, dict(row.scores))
