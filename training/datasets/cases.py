"""A training case (one CT series of one patient) and its on-disk forms.

* ``.npz`` files (small sets, tests, interchange): arrays ``hu`` (Z, Y, X), optional ``labels`` uint8,
  ``pixel_spacing_mm`` (2,), and strings ``patient_id`` / ``case_id`` / ``source``.
* case folders (large sets, caches): ``<root>/<case_id>/case.json`` + ``hu.npy`` + ``labels.npy``, loaded
  memory-mapped so hundreds of phantoms do not have to fit in RAM at once.

Labels follow CONTRACTS.md ("Label volumes"): 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cacstream.engine.domain import NUM_SEG_CLASSES


class CaseError(ValueError):
    """A case file that cannot be used; the message names the file and the reason."""


@dataclass
class Case:
    """One series: HU volume (Z, Y, X), optional artery labels of the same shape, pixel spacing, patient.

    ``patient_id`` is what splits are made of: all series of a patient land in the same split.
    """

    case_id: str
    patient_id: str
    hu: np.ndarray
    labels: np.ndarray | None
    pixel_spacing_mm: tuple[float, float]
    source: str = ""
    _calcified: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise CaseError(
                f"case {self.case_id}: hu must be (slices, rows, cols), got shape {self.hu.shape}"
            )
        if self.labels is not None:
            if self.labels.shape != self.hu.shape:
                raise CaseError(
                    f"case {self.case_id}: labels shape {self.labels.shape} != hu shape {self.hu.shape}"
                )
            if self.labels.dtype != np.uint8:
                raise CaseError(f"case {self.case_id}: labels must be uint8, got {self.labels.dtype}")

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])

    def calcified_slices(self) -> np.ndarray:
        """Per slice: it holds at least one labelled calcium pixel (all False when unlabelled)."""
        if self._calcified is None:
            if self.labels is None:
                self._calcified = np.zeros(self.n_slices, dtype=bool)
            else:
                self._calcified = np.asarray(self.labels.reshape(self.n_slices, -1).max(axis=1) > 0)
        return self._calcified


def _check_labels(labels: np.ndarray, where: str) -> None:
    top = int(labels.max()) if labels.size else 0
    if top >= NUM_SEG_CLASSES:
        raise CaseError(f"{where}: label value {top} is not a class (0 background, 1-4 LM/LAD/LCX/RCA)")


def _str(arr: np.ndarray | None, default: str) -> str:
    if arr is None:
        return default
    return str(arr.item() if arr.ndim == 0 else arr[0])


def load_npz_case(path: Path) -> Case:
    """Read a ``.npz`` case; every problem raises CaseError naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if "hu" not in keys or "pixel_spacing_mm" not in keys:
                raise CaseError(f"{path}: needs arrays 'hu' and 'pixel_spacing_mm' (has {sorted(keys)})")
            hu = np.asarray(z["hu"], dtype=np.float32)
            labels = np.asarray(z["labels"]).astype(np.uint8, copy=False) if "labels" in keys else None
            spacing = np.asarray(z["pixel_spacing_mm"], dtype=np.float64).reshape(-1)
            patient = _str(z["patient_id"] if "patient_id" in keys else None, path.stem)
            case_id = _str(z["case_id"] if "case_id" in keys else None, path.stem)
            source = _str(z["source"] if "source" in keys else None, f"npz:{path.name}")
    except CaseError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise CaseError(f"{path}: not a readable case .npz ({e})") from None
    if spacing.shape != (2,) or not np.all(spacing > 0):
        raise CaseError(f"{path}: pixel_spacing_mm must be two positive numbers, got {spacing.tolist()}")
    if labels is not None:
        _check_labels(labels, str(path))
    try:
        return Case(case_id, patient, hu, labels, (float(spacing[0]), float(spacing[1])), source)
    except CaseError as e:
        raise CaseError(f"{path}: {e}") from None


def save_npz_case(case: Case, path: Path) -> Path:
    """Write a case as ``.npz`` (uncompressed; atomic rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "hu": np.asarray(case.hu, dtype=np.float32),
        "pixel_spacing_mm": np.asarray(case.pixel_spacing_mm, dtype=np.float64),
        "patient_id": np.array(case.patient_id),
        "case_id": np.array(case.case_id),
        "source": np.array(case.source),
    }
    if case.labels is not None:
        arrays["labels"] = np.asarray(case.labels, dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return path


def save_case_dir(case: Case, root: Path) -> Path:
    """Write ``root/<case_id>/`` (hu.npy as int16 when the HU are integers in range, else float32)."""
    d = Path(root) / case.case_id
    d.mkdir(parents=True, exist_ok=True)
    hu = np.asarray(case.hu)
    if np.issubdtype(hu.dtype, np.integer) or (
        np.array_equal(hu, np.round(hu)) and hu.min() >= -32768 and hu.max() <= 32767
    ):
        hu = hu.astype(np.int16)
    else:
        hu = hu.astype(np.float32)
    np.save(d / "hu.npy.tmp.npy", hu)
    os.replace(d / "hu.npy.tmp.npy", d / "hu.npy")
    if case.labels is not None:
        np.save(d / "labels.npy.tmp.npy", np.asarray(case.labels, dtype=np.uint8))
        os.replace(d / "labels.npy.tmp.npy", d / "labels.npy")
    meta = {
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "source": case.source,
        "pixel_spacing_mm": list(case.pixel_spacing_mm),
        "shape": list(hu.shape),
        "has_labels": case.labels is not None,
    }
    (d / "case.json.tmp").write_text(json.dumps(meta, indent=1))
    os.replace(d / "case.json.tmp", d / "case.json")  # written last: its presence marks a complete case
    return d


def load_case_dir(d: Path) -> Case:
    """Open a case folder memory-mapped; raises CaseError naming the folder on any problem."""
    d = Path(d)
    meta_path = d / "case.json"
    try:
        meta = json.loads(meta_path.read_text())
        hu = np.load(d / "hu.npy", mmap_mode="r")
        labels = np.load(d / "labels.npy", mmap_mode="r") if meta.get("has_labels") else None
        spacing = tuple(float(v) for v in meta["pixel_spacing_mm"])
    except FileNotFoundError as e:
        raise CaseError(f"{d}: incomplete case folder ({e.filename} missing)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CaseError(f"{d}: unreadable case folder ({e})") from None
    if list(hu.shape) != list(meta.get("shape", hu.shape)):
        raise CaseError(f"{d}: hu.npy shape {hu.shape} does not match case.json {meta.get('shape')}")
    if len(spacing) != 2:
        raise CaseError(f"{meta_path}: pixel_spacing_mm must have two values")
    try:
        return Case(
            str(meta.get("case_id", d.name)),
            str(meta["patient_id"]),
            hu,
            labels,
            (spacing[0], spacing[1]),
            str(meta.get("source", f"case_dir:{d.name}")),
        )
    except CaseError as e:
        raise CaseError(f"{d}: {e}") from None
