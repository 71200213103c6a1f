"""Calibration sets on disk: a versioned folder of preprocessed slices and the manifest of where each came from.

A set is what INT8 quantisation sees of the world, so an operator must be able to tell, months later,
exactly which slices it holds, how they were chosen and with which preprocessing. Layout::

    SET/
      manifest.json          format, set id + version, strategy, seed, weights id, PreprocessConfig per
                             role, population summary, and one record per slice (source file,
                             SOPInstanceUID, series UID, slice index, stratum, stats)
      filter_inputs.npy      (N, 1, S_f, S_f) float32: the slice filter's model input, in manifest order
      segmenter_inputs.npy   (N, 1, S_s, S_s) float32: the segmenter's model input, same order
      inspect/               what `cacstream calibrate inspect` writes (tables, PNGs, activation ranges)

The arrays are plain ``.npy`` (memory-mappable: a 512² segmenter set of 500 slices is 0.5 GB); their
SHA-256 is in the manifest and :func:`load_set` refuses a set whose arrays do not match it. The set id
is ``<name>@<first 12 hex of the hash of the arrays and the slice list>``: two sets with the same id
hold the same slices, preprocessed the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cacstream.engine.file_hash import file_sha256
from cacstream.kernels.config import PreprocessConfig

SET_FORMAT = "cacstream-calibration-set/1"
MANIFEST = "manifest.json"
ROLES: tuple[str, ...] = ("filter", "segmenter")
ARRAY_FILES: dict[str, str] = {"filter": "filter_inputs.npy", "segmenter": "segmenter_inputs.npy"}
INSPECT_DIR = "inspect"


class CalibrationSetError(ValueError):
    """A calibration set that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class SliceRecord:
    """Where one slice of a set came from and what it looked like (JSON in the manifest)."""

    path: str
    sop_instance_uid: str
    series_instance_uid: str
    slice_index: int
    frame: int | None
    stratum: str
    strata: dict[str, str]
    stats: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "slice_index": self.slice_index,
            "frame": self.frame,
            "stratum": self.stratum,
            "strata": dict(self.strata),
            "stats": dict(self.stats),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SliceRecord:
        return cls(
            str(d["path"]),
            str(d["sop_instance_uid"]),
            str(d["series_instance_uid"]),
            int(d["slice_index"]),
            None if d.get("frame") is None else int(d["frame"]),
            str(d["stratum"]),
            {str(k): str(v) for k, v in d.get("strata", {}).items()},
            dict(d.get("stats", {})),
        )


@dataclass
class CalibrationSet:
    """A loaded set: the manifest plus the arrays (memory-mapped, read-only)."""

    directory: Path
    manifest: dict[str, Any]
    slices: list[SliceRecord]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def set_id(self) -> str:
        return str(self.manifest["set_id"])

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.directory.name))

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def strategy(self) -> dict[str, Any]:
        return dict(self.manifest["strategy"])

    @property
    def weights_id(self) -> str:
        return str(self.manifest.get("weights_id", ""))

    def preprocess(self, role: str) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.manifest["preprocess"][role])

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def inspect_dir(self) -> Path:
        return self.directory / INSPECT_DIR


def _set_hash(array_shas: dict[str, str], slices: list[SliceRecord]) -> str:
    h = hashlib.sha256()
    for role in sorted(array_shas):
        h.update(f"{role}:{array_shas[role]}\n".encode())
    for s in slices:
        h.update(f"{s.series_instance_uid}|{s.sop_instance_uid}|{s.frame}|{s.slice_index}\n".encode())
    return h.hexdigest()


def write_set(
    directory: Path,
    *,
    name: str,
    version: int,
    strategy: dict[str, Any],
    seed: int,
    weights_id: str,
    weights_dir: str,
    preprocess: dict[str, PreprocessConfig],
    filter_threshold: float | None,
    slices: list[SliceRecord],
    inputs: dict[str, np.ndarray],
    population: dict[str, Any],
    sources: list[str],
    command: list[str] | None = None,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> CalibrationSet:
    """Write a set atomically (into a hidden temporary folder, then renamed), and return it loaded.

    ``inputs[role]`` must be (N, 1, S, S) float32 with N = len(slices) and S = preprocess[role].input_size.
    """
    directory = Path(directory)
    if directory.exists():
        if not overwrite:
            raise CalibrationSetError(
                f"{directory}: already exists; choose another folder or pass --overwrite "
                "(a set is never changed in place: its id names its content)"
            )
        if not (directory / MANIFEST).is_file() and any(directory.iterdir()):
            raise CalibrationSetError(
                f"{directory}: exists, is not empty and is not a calibration set; refusing to overwrite it"
            )
    if version < 1:
        raise CalibrationSetError(f"set version must be >= 1, got {version}")
    n = len(slices)
    for role in ROLES:
        if role not in inputs or role not in preprocess:
            raise CalibrationSetError(f"{directory}: no {role} inputs or preprocessing given")
        a = inputs[role]
        s = preprocess[role].input_size
        if a.shape != (n, 1, s, s) or a.dtype != np.float32:
            raise CalibrationSetError(
                f"{directory}: {role} inputs must be ({n}, 1, {s}, {s}) float32, got {a.shape} {a.dtype}"
            )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shas: dict[str, str] = {}
        arrays: dict[str, Any] = {}
        for role in ROLES:
            path = tmp / ARRAY_FILES[role]
            np.save(path, np.ascontiguousarray(inputs[role]))
            shas[role] = file_sha256(path)
            arrays[role] = {
                "file": ARRAY_FILES[role],
                "shape": list(inputs[role].shape),
                "dtype": "float32",
                "sha256": shas[role],
            }
        set_id = f"{name}@{_set_hash(shas, slices)[:12]}"
        manifest: dict[str, Any] = {
            "format": SET_FORMAT,
            "set_id": set_id,
            "name": name,
            "version": int(version),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": list(command or []),
            "strategy": strategy,
            "seed": int(seed),
            "weights_id": weights_id,
            "weights_dir": weights_dir,
            "filter_threshold": filter_threshold,
            "preprocess": {role: preprocess[role].to_dict() for role in ROLES},
            "sources": list(sources),
            "population": population,
            "n_slices": n,
            "arrays": arrays,
            **(extra or {}),
            "slices": [s.to_dict() for s in slices],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_set(directory, verify=False)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CalibrationSetError(
            f"{path}: not found — {directory} is not a calibration set "
            "(build one with `cacstream calibrate build`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationSetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SET_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CalibrationSetError(f"{path}: format {got!r}, expected {SET_FORMAT!r}")
    for key in ("set_id", "strategy", "seed", "preprocess", "arrays", "slices"):
        if key not in manifest:
            raise CalibrationSetError(f"{path}: missing key {key!r}")
    return manifest


def load_set(directory: Path | str, *, verify: bool = True, mmap: bool = True) -> CalibrationSet:
    """Load a set; ``verify`` re-hashes the arrays against the manifest (a changed file is an error)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    where = directory / MANIFEST
    try:
        slices = [SliceRecord.from_dict(d) for d in manifest["slices"]]
    except (KeyError, TypeError, ValueError) as e:
        raise CalibrationSetError(f"{where}: a slice record is malformed ({type(e).__name__}: {e})") from None
    inputs: dict[str, np.ndarray] = {}
    for role in ROLES:
        meta = manifest["arrays"].get(role)
        if meta is None:
            raise CalibrationSetError(f"{where}: no {role!r} array listed")
        path = directory / meta["file"]
        if not path.is_file():
            raise CalibrationSetError(f"{path}: array file missing (listed in {where})")
        if verify and file_sha256(path) != meta["sha256"]:
            raise CalibrationSetError(
                f"{path}: content does not match the SHA-256 in {where}; the set was modified "
                "after it was built — rebuild it"
            )
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise CalibrationSetError(f"{path}: not a readable .npy array ({e})") from None
        size = int(manifest["preprocess"][role]["input_size"])
        if arr.shape != (len(slices), 1, size, size) or arr.dtype != np.float32:
            raise CalibrationSetError(
                f"{path}: shape {arr.shape} {arr.dtype}, expected ({len(slices)}, 1, {size}, "
                f"{size}) float32 per {where}"
            )
        inputs[role] = arr
    return CalibrationSet(directory, manifest, slices, inputs)
