"""Training data for sites with their own annotations: a folder of DICOM series plus mask files.

Layout::

    ROOT/series/...              DICOM CT files, any nesting and file names; grouped into series by
                                 SeriesInstanceUID and ordered along the slice normal by
                                 ``cacstream.engine.series.scan_path`` (never by file name).
    ROOT/masks/<SeriesInstanceUID>.npy
                                 integer label volume, shape (slices, rows, columns) in that
                                 GEOMETRIC order (slice 0 = lowest position along the normal);
                                 values 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA (engine/domain.py),
                                 marking each artery's calcium region.
    ROOT/masks/<SeriesInstanceUID>.npz
                                 the same array stored as ``labels`` (or as the archive's only array).
    ROOT/masks/<any name>.dcm    a DICOM Segmentation (SEG) whose source images are the series'
                                 instances; one segment per artery, SegmentLabel ``LM``/``LAD``/
                                 ``LCX``/``RCA`` (COCA's long names are accepted too). Read with
                                 highdicom; single-frame CT sources only.

A series without a mask file is listed as unlabelled (still useful for self-supervised
pretraining); a mask naming a series that is not there, two masks for one series, a shape that is
not the series', and label values outside 0..4 are errors naming the file and the reason. Other
files under ``masks/`` are listed as skipped with their reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np

from cacstream.engine.config import EligibilityConfig
from cacstream.engine.domain import ARTERIES, ARTERY_LABEL, NUM_SEG_CLASSES
from cacstream.engine.series.types import RejectedSeries, Series, SkippedFile, Volume
from cacstream.training.data.coca_rois import artery_for_roi_name

SERIES_FOLDER: Final[str] = "series"
MASKS_FOLDER: Final[str] = "masks"
NPZ_KEY: Final[str] = "labels"
SEG_SOP_CLASS_UID: Final[str] = "1.2.840.10008.5.1.4.1.1.66.4"

MaskKind = Literal["npy", "npz", "seg"]


class MaskFolderError(ValueError):
    """A mask folder or mask file is not usable (the message names the file and the reason)."""


@dataclass(frozen=True)
class MaskFile:
    """A label file and the series it belongs to (from its name, or a SEG's references)."""

    path: Path
    kind: MaskKind
    series_uid: str


@dataclass(frozen=True)
class LabelledSeries:
    """A series with its mask file; load it with :func:`load_case`."""

    series: Series
    mask: MaskFile


@dataclass
class MaskFolderIndex:
    """Everything found under a mask-folder root, before any pixels are read."""

    root: Path
    labelled: list[LabelledSeries] = field(default_factory=list)
    unlabelled: list[Series] = field(default_factory=list)
    rejected: list[RejectedSeries] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


@dataclass
class MaskCase:
    """A decoded training case: HU volume and its uint8 label volume (geometric slice order)."""

    series_uid: str
    volume: Volume
    labels: np.ndarray
    mask_path: Path


# ---------------------------------------------------------------------------------- label checks


def validate_labels(labels: np.ndarray, series: Series, source: Path) -> np.ndarray:
    """Check a label volume against its series and return it as uint8 (slices, rows, columns)."""
    arr = np.asarray(labels)
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise MaskFolderError(
            f"{source}: labels have dtype {arr.dtype}; store integers 0..{NUM_SEG_CLASSES - 1} (e.g. .astype(np.uint8))"
        )
    geom = series.geometry
    expected = (geom.n_slices, geom.rows, geom.columns)
    if arr.shape != expected:
        raise MaskFolderError(
            f"{source}: label shape {arr.shape} does not match series {series.uid} "
            f"(slices, rows, columns) = {expected}"
        )
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > NUM_SEG_CLASSES - 1:
            bad = np.unique(arr[(arr < 0) | (arr > NUM_SEG_CLASSES - 1)])[:10].tolist()
            raise MaskFolderError(
                f"{source}: label values {bad} outside 0..{NUM_SEG_CLASSES - 1} "
                f"(0 background, {', '.join(f'{ARTERY_LABEL[a]} {a}' for a in ARTERIES)})"
            )
    return arr.astype(np.uint8, copy=False)


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # ValueError (pickled / bad header), OSError, EOFError
        raise MaskFolderError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from exc


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if NPZ_KEY in names:
                return archive[NPZ_KEY]
            if len(names) == 1:
                return archive[names[0]]
    except MaskFolderError:
        raise
    except Exception as exc:
        raise MaskFolderError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from exc
    raise MaskFolderError(f"{path}: .npz holds arrays {names}; name the label volume {NPZ_KEY!r}")


# ---------------------------------------------------------------------------------- DICOM SEG


def segment_artery(label: str) -> str | None:
    """Artery key for a SEG SegmentLabel: LM/LAD/LCX/RCA, or COCA's long names."""
    text = " ".join(str(label).split())
    for artery in ARTERIES:
        if text.casefold() == artery.casefold():
            return artery
    return artery_for_roi_name(text)


def _seg_series_uid(path: Path) -> str | None:
    """The referenced series UID when ``path`` is a DICOM SEG, None when it is no SEG at all."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS_UID and ds.get("Modality") != "SEG":
        return None
    refs = ds.get("ReferencedSeriesSequence") or []
    uids = {str(item.SeriesInstanceUID) for item in refs if "SeriesInstanceUID" in item}
    if len(uids) != 1:
        raise MaskFolderError(
            f"{path}: DICOM SEG references {len(uids)} series ({sorted(uids)}); expected exactly one"
        )
    return uids.pop()


def _read_seg(path: Path, series: Series) -> np.ndarray:
    """Label volume from a DICOM SEG, in the series' geometric order (via its source instances)."""
    import highdicom as hd

    if any(s.frame is not None for s in series.slices):
        raise MaskFolderError(f"{path}: DICOM SEG masks are supported for single-frame CT series only")
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:
        raise MaskFolderError(f"{path}: not a readable DICOM SEG ({type(exc).__name__}: {exc})") from exc
    numbers = list(seg.get_segment_numbers())
    arteries: dict[int, str] = {}
    for number in numbers:
        seg_label = seg.get_segment_description(number).segment_label
        artery = segment_artery(seg_label)
        if artery is None:
            raise MaskFolderError(
                f"{path}: segment {number} is labelled {seg_label!r}; expected one of {list(ARTERIES)}"
            )
        arteries[number] = artery
    sop_uids = [s.sop_instance_uid for s in series.slices]
    known = {uid for _, _, uid in seg.get_source_image_uids()}
    unknown_refs = known - set(sop_uids)
    if unknown_refs:
        raise MaskFolderError(
            f"{path}: references {len(unknown_refs)} instance(s) that are not in series {series.uid}"
        )
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=sop_uids,
            segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
        )
    except Exception as exc:
        raise MaskFolderError(f"{path}: cannot map SEG frames onto series {series.uid} ({exc})") from exc
    labels = np.zeros(pixels.shape[:3], dtype=np.uint8)
    for j, number in enumerate(numbers):
        on = pixels[..., j] > 0
        value = ARTERY_LABEL[arteries[number]]
        clash = on & (labels != 0) & (labels != value)
        if clash.any():
            raise MaskFolderError(
                f"{path}: segment {number} ({arteries[number]}) overlaps another artery on {int(clash.sum())} pixel(s)"
            )
        labels[on] = value
    return labels


# ---------------------------------------------------------------------------------- indexing


def _mask_file(path: Path) -> MaskFile | SkippedFile:
    name = path.name
    if name.endswith(".npy"):
        return MaskFile(path, "npy", name[: -len(".npy")])
    if name.endswith(".npz"):
        return MaskFile(path, "npz", name[: -len(".npz")])
    uid = _seg_series_uid(path)
    if uid is not None:
        return MaskFile(path, "seg", uid)
    return SkippedFile(path, "not_a_mask", "not a .npy/.npz label volume nor a DICOM SEG; ignored")


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise MaskFolderError(f"{root}: expected a {name}/ folder (layout: {SERIES_FOLDER}/ DICOM, {MASKS_FOLDER}/ masks)")
    return folder


def index_mask_folder(
    root: Path, eligibility: EligibilityConfig = EligibilityConfig(), progress: bool = False
) -> MaskFolderIndex:
    """Scan ``ROOT/series`` (headers only) and pair each series with its file in ``ROOT/masks``."""
    from cacstream.engine.series import scan_path

    root = Path(root)
    series_dir, masks_dir = _folder(root, SERIES_FOLDER), _folder(root, MASKS_FOLDER)
    scan = scan_path(series_dir, eligibility, progress=progress)
    index = MaskFolderIndex(root=root, rejected=list(scan.rejected), skipped=list(scan.skipped))
    masks: dict[str, MaskFile] = {}
    for path in sorted(p for p in masks_dir.rglob("*") if p.is_file()):
        found = _mask_file(path)
        if isinstance(found, SkippedFile):
            index.skipped.append(found)
            continue
        if found.series_uid in masks:
            raise MaskFolderError(f"{path}: series {found.series_uid} already has a mask ({masks[found.series_uid].path})")
        masks[found.series_uid] = found
    by_uid = {s.uid: s for s in scan.series}
    rejected_uids = {r.uid: r for r in scan.rejected}
    for uid, mask in masks.items():
        if uid not in by_uid:
            why = (
                f"that series was rejected ({rejected_uids[uid].reason}: {rejected_uids[uid].message})"
                if uid in rejected_uids
                else f"no series with that SeriesInstanceUID under {series_dir}"
            )
            raise MaskFolderError(f"{mask.path}: mask for series {uid}, but {why}")
    for series in scan.series:
        if series.uid in masks:
            index.labelled.append(LabelledSeries(series, masks[series.uid]))
        else:
            index.unlabelled.append(series)
    return index


def read_labels(item: LabelledSeries) -> np.ndarray:
    """The validated uint8 label volume of a labelled series (geometric slice order)."""
    mask = item.mask
    if mask.kind == "npy":
        raw = _read_npy(mask.path)
    elif mask.kind == "npz":
        raw = _read_npz(mask.path)
    else:
        raw = _read_seg(mask.path, item.series)
    return validate_labels(raw, item.series, mask.path)


def load_case(item: LabelledSeries, threads: int = 0) -> MaskCase:
    """Decode the series to HU and read its labels (labels first: a bad mask fails before decoding)."""
    from cacstream.engine.series import read_volume

    labels = read_labels(item)
    volume = read_volume(item.series, threads=threads)
    return MaskCase(item.series.uid, volume, labels, item.mask.path)


def iter_cases(
    root: Path, eligibility: EligibilityConfig = EligibilityConfig(), threads: int = 0
) -> Iterator[MaskCase]:
    """Every labelled series under ``root``, decoded, in SeriesInstanceUID order."""
    index = index_mask_folder(root, eligibility)
    for item in sorted(index.labelled, key=lambda i: i.series.uid):
        yield load_case(item, threads=threads)
