"""Everything a finished series leaves in the output folder, written so that a crash never half-publishes.

Files of a series (``DIR/<SeriesInstanceUID>`` + suffix): ``.json`` (the report, the contract),
``.sr.dcm`` (DICOM SR with the scores), ``.seg.dcm`` (DICOM SEG with the lesion masks; only when there
is a lesion), ``.key.png`` (key image); plus one CSV ledger line per report version.

Publishing is two-phase (crash-safe, idempotent):

1. **stage**: every artifact is written and fsynced into ``DIR/.staging/<uid>.v<N>/``;
2. **publish**: the previous version's files (when a late slice re-opened the series) are copied to
   ``DIR/archive/<uid>/v<old>/`` (a ``.complete`` marker closes the copy), then the staged files replace
   the published ones — the JSON last, so the JSON is the mark that version N is out — then the
   ledger line is appended unless it is there already, then the staging folder is removed.

Running publish again after a crash anywhere in step 2 finishes the job without duplicating anything.
Design decision on versions: ``DIR/<uid>.json`` is always the latest version; older versions are
archived, never deleted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from cacstream.engine.pipeline.finalize import SeriesScore
from cacstream.engine.report.json_report import report_path, validate_report
from cacstream.engine.report.ledger import append_to_ledger
from cacstream.engine.series.types import Series

#: Artifact kind → file suffix after the SeriesInstanceUID (the JSON path is the DESIGN.md contract).
SUFFIXES: dict[str, str] = {"sr": ".sr.dcm", "seg": ".seg.dcm", "key_image": ".key.png", "json": ".json"}
#: Publication order: the JSON last.
PUBLISH_ORDER: tuple[str, ...] = ("sr", "seg", "key_image", "json")
STAGING = ".staging"
MANIFEST = "MANIFEST.json"
ARCHIVE = "archive"


@dataclass(frozen=True)
class OutputConfig:
    """Which artifacts to write besides the JSON report and the ledger line."""

    sr: bool = True
    seg: bool = True
    key_image: bool = True
    key_image_panels: int = 3


def series_ref(uid: str) -> str:
    """A short, stable, non-identifying handle of a series for logs (sha256 of the UID, 16 hex)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:16]


def artifact_path(out_dir: Path, uid: str, kind: str) -> Path:
    if kind == "json":
        return report_path(out_dir, uid)
    return Path(out_dir) / f"{uid}{SUFFIXES[kind]}"


def staging_dir(out_dir: Path, uid: str, version: int) -> Path:
    return Path(out_dir) / STAGING / f"{uid}.v{version}"


def _uid_from(seed: str) -> str:
    """A deterministic DICOM UID (2.25 + UUID-sized integer) from a seed string."""
    return "2.25." + str(int(hashlib.sha256(seed.encode()).hexdigest()[:32], 16))


def source_datasets(series: Series) -> tuple[list[Dataset], list[int | None]]:
    """Header datasets (no pixel data) of the series' slices, in slice order, and each slice's frame."""
    from pydicom import dcmread

    cache: dict[Path, Dataset] = {}
    out: list[Dataset] = []
    for h in series.slices:
        if h.path not in cache:
            cache[h.path] = dcmread(h.path, stop_before_pixels=True, force=True)
        out.append(cache[h.path])
    return out, [h.frame for h in series.slices]


def build_artifacts(
    report: dict[str, Any],
    score: SeriesScore | None,
    config: OutputConfig = OutputConfig(),
) -> dict[str, bytes]:
    """Bytes of every artifact of one report version (JSON always; SR/SEG/key image for scored series).

    The report dict gets ``series_ref`` and ``artifacts`` (file names) added and is validated."""
    from cacstream.engine.pipeline.stages import decode_hu

    uid = report["series_instance_uid"]
    version = int(report["report_version"])
    report["series_ref"] = series_ref(uid)
    out: dict[str, bytes] = {}
    if score is not None and report["status"] == "scored":
        series = score.scored.series
        seed = f"{uid}/{version}/{report['created_utc']}"
        datasets: list[Dataset] = []
        frames: list[int | None] = []
        if config.sr or (config.seg and score.label_maps):
            try:
                datasets, frames = source_datasets(series)
            except Exception as exc:  # noqa: BLE001 (a file moved or damaged since it was scored)
                report.setdefault("warnings", []).append(
                    f"DICOM SR / SEG not written: source headers unreadable ({type(exc).__name__}: {exc})")
                config = OutputConfig(sr=False, seg=False, key_image=config.key_image,
                                      key_image_panels=config.key_image_panels)
        if config.sr:
            _optional(report, out, "sr", "DICOM SR", lambda: _build_sr(report, datasets, seed, version))
        if config.seg and score.label_maps:
            _optional(report, out, "seg", "DICOM SEG", lambda: _build_seg(score, datasets, frames, seed, version))
        if config.key_image:
            def key_image() -> bytes:
                from cacstream.engine.report.key_image import render_key_image, top_slices

                chosen = top_slices(report, config.key_image_panels)
                hu = {i: decode_hu(series.slices[i]) for i in chosen}
                return render_key_image(report, hu, score.label_maps, chosen)

            _optional(report, out, "key_image", "key image", key_image)
    report["artifacts"] = {k: artifact_path(Path("."), uid, k).name for k in ("json", *out)}
    validate_report(report)
    out["json"] = (json.dumps(report, indent=2, allow_nan=False) + "\n").encode()
    return out


class SourceReferenceMissing(ValueError):
    """The source images lack an identifier a DICOM SR / SEG must copy to reference them."""


#: What an SR or a SEG copies from its source images to stand beside them (study, series; a SEG also
#: shares their frame of reference). De-identification sometimes strips them (the COCA non-gated export).
REFERENCE_KEYS = {"DICOM SR": ("StudyInstanceUID", "SeriesInstanceUID"),
                  "DICOM SEG": ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")}


def check_references(what: str, datasets: list[Dataset]) -> None:
    """Raise :class:`SourceReferenceMissing` naming what the first source image lacks for ``what``."""
    missing = [k for k in REFERENCE_KEYS[what] if datasets and not str(getattr(datasets[0], k, "") or "")]
    if missing:
        raise SourceReferenceMissing(
            f"the source images have no {' or '.join(missing)}, which a {what} must reference to stand "
            "beside them (stripped by de-identification?); the JSON report and key image carry the result")


def _optional(report: dict[str, Any], out: dict[str, bytes], kind: str, what: str, build) -> None:
    """Build a secondary artifact; if it cannot be built, the report says why and goes out without it
    (the JSON report is the contract; e.g. a de-identified series without StudyInstanceUID can have no SR)."""
    try:
        data = build()
    except SourceReferenceMissing as exc:
        report.setdefault("warnings", []).append(f"{what} not written: {exc}")
        return
    except Exception as exc:  # noqa: BLE001
        report.setdefault("warnings", []).append(f"{what} not written: {type(exc).__name__}: {exc}")
        return
    if data is not None:
        out[kind] = data


def _build_sr(report: dict[str, Any], datasets: list[Dataset], seed: str, version: int) -> bytes:
    from cacstream.engine.report.dicom_sr import build_sr

    check_references("DICOM SR", datasets)
    return _dicom_bytes(build_sr(report, datasets, series_instance_uid=_uid_from(seed + "/sr-series"),
                                 sop_instance_uid=_uid_from(seed + "/sr"), instance_number=version))


def _build_seg(score: SeriesScore, datasets: list[Dataset], frames: list[int | None], seed: str,
               version: int) -> bytes | None:
    from cacstream.engine.report.dicom_seg import build_seg

    check_references("DICOM SEG", datasets)
    seg = build_seg(score.label_maps, datasets, frames, series_instance_uid=_uid_from(seed + "/seg-series"),
                    sop_instance_uid=_uid_from(seed + "/seg"), instance_number=version)
    return None if seg is None else _dicom_bytes(seg)


def warmup() -> None:
    """Build a tiny SR, SEG and key image once, so that the first real report does not pay for
    highdicom's and PIL's lazy initialisation (about 2 s). Call it in a background thread at start-up."""
    import numpy as np
    from pydicom.uid import CTImageStorage, generate_uid

    from cacstream.engine.report.dicom_seg import build_seg
    from cacstream.engine.report.dicom_sr import build_sr
    from cacstream.engine.report.key_image import render_key_image

    ds = Dataset()
    for k, v in {"SOPClassUID": CTImageStorage, "SOPInstanceUID": generate_uid(), "StudyInstanceUID": generate_uid(),
                 "SeriesInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid(), "PatientName": "WARMUP^",
                 "PatientID": "WARMUP", "PatientBirthDate": "", "PatientSex": "", "StudyDate": "20000101",
                 "StudyTime": "000000", "AccessionNumber": "", "ReferringPhysicianName": "", "StudyID": "1",
                 "Modality": "CT", "SeriesNumber": 1, "InstanceNumber": 1, "Rows": 8, "Columns": 8,
                 "PixelSpacing": [1.0, 1.0], "ImagePositionPatient": [0.0, 0.0, 0.0],
                 "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "SliceThickness": 3.0,
                 "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15, "PixelRepresentation": 1, "SamplesPerPixel": 1,
                 "PhotometricInterpretation": "MONOCHROME2", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}.items():
        setattr(ds, k, v)
    label = np.zeros((8, 8), np.uint8)
    label[2:4, 2:4] = 2
    report = {"status": "scored", "mode": "model", "report_version": 1, "agatston_total": 1.0,
              "volume_mm3_total": 1.0, "agatston_per_artery": {"LM": 0.0, "LAD": 1.0, "LCX": 0.0, "RCA": 0.0},
              "volume_mm3_per_artery": {"LM": 0.0, "LAD": 1.0, "LCX": 0.0, "RCA": 0.0}, "mass_mg_total": None,
              "agatston_config": {"threshold_hu": 130.0}, "series_instance_uid": ds.SeriesInstanceUID,
              "lesions": [{"slice_index": 0, "z_mm": 0.0, "score": 1.0}]}
    _dicom_bytes(build_sr(report, [ds], series_instance_uid=generate_uid(), sop_instance_uid=generate_uid()))
    seg = build_seg({0: label}, [ds], [None], series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())
    if seg is not None:
        _dicom_bytes(seg)
    render_key_image(report, {0: np.zeros((8, 8), np.float32)}, {0: label}, [0])


def _dicom_bytes(ds: Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage(out_dir: Path, uid: str, version: int, artifacts: dict[str, bytes]) -> Path:
    """Phase 1: write every artifact into the staging folder (fsynced). Returns the folder."""
    d = staging_dir(out_dir, uid, version)
    if d.exists():
        shutil.rmtree(d)
    tmp = d.with_name(d.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for kind, data in artifacts.items():
        _write_synced(tmp / artifact_path(Path("."), uid, kind).name, data)
    _write_synced(tmp / MANIFEST, json.dumps(sorted(artifacts)).encode())
    _fsync_dir(tmp)
    os.replace(tmp, d)  # the staging folder appears complete or not at all
    _fsync_dir(d.parent)
    return d


def published_version(out_dir: Path, uid: str) -> int | None:
    """report_version of the published JSON, or None when there is none (or it cannot be read)."""
    try:
        return int(json.loads(report_path(out_dir, uid).read_text())["report_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _archive_previous(out_dir: Path, uid: str, new_version: int) -> None:
    old = published_version(out_dir, uid)
    if old is None or old >= new_version:
        return
    dest = Path(out_dir) / ARCHIVE / uid / f"v{old}"
    if (dest / ".complete").exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for kind in PUBLISH_ORDER:
        src = artifact_path(out_dir, uid, kind)
        if src.exists():
            tmp = dest / (src.name + ".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest / src.name)
    _write_synced(dest / ".complete", b"")


def ledger_has(ledger: Path, uid: str, version: int) -> bool:
    """Whether the CSV ledger already has a line for this report version (crash recovery)."""
    try:
        with open(ledger, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("series_instance_uid") == uid and str(row.get("report_version")) == str(version):
                    return True
    except FileNotFoundError:
        return False
    return False


def publish(out_dir: Path, uid: str, version: int, ledger: Path, *, dedupe_ledger: bool = True,
            checkpoint: Callable[[str], None] | None = None) -> list[Path]:
    """Phase 2 (idempotent): archive the previous version, move the staged files in place (JSON last),
    append the ledger line, drop the staging folder. Returns the published paths."""
    out_dir = Path(out_dir)
    d = staging_dir(out_dir, uid, version)
    _archive_previous(out_dir, uid, version)
    published: list[Path] = []
    staged_json = d / artifact_path(Path("."), uid, "json").name
    if staged_json.exists():
        kinds_now = set(json.loads((d / MANIFEST).read_text()))
        for kind in PUBLISH_ORDER:  # an artifact of the old version that the new one lacks is withdrawn
            if kind not in kinds_now and artifact_path(out_dir, uid, kind).exists():
                artifact_path(out_dir, uid, kind).unlink()
        for kind in PUBLISH_ORDER:
            src = d / artifact_path(Path("."), uid, kind).name
            if src.exists():
                os.replace(src, artifact_path(out_dir, uid, kind))
                if checkpoint is not None:
                    checkpoint(f"published_{kind}")
        _fsync_dir(out_dir)
    report = json.loads(report_path(out_dir, uid).read_text())
    if int(report["report_version"]) != version:
        raise RuntimeError(f"{report_path(out_dir, uid)}: holds version {report['report_version']}, "
                           f"expected {version} (staging folder lost?)")
    for kind in PUBLISH_ORDER:
        p = artifact_path(out_dir, uid, kind)
        if p.exists():
            published.append(p)
    if not (dedupe_ledger and ledger_has(ledger, uid, version)):
        append_to_ledger(ledger, report, report_path(out_dir, uid).name)
    if d.exists():
        shutil.rmtree(d)
    return published


def write_outputs(
    out_dir: Path,
    report: dict[str, Any],
    score: SeriesScore | None,
    ledger: Path,
    config: OutputConfig = OutputConfig(),
    *,
    dedupe_ledger: bool = False,
) -> list[Path]:
    """Build, stage and publish one report version in one go (what `cacstream score` does)."""
    artifacts = build_artifacts(report, score, config)
    uid, version = report["series_instance_uid"], int(report["report_version"])
    stage(out_dir, uid, version, artifacts)
    return publish(out_dir, uid, version, ledger, dedupe_ledger=dedupe_ledger)


def clean_orphan_staging(out_dir: Path, keep: Sequence[tuple[str, int]]) -> list[Path]:
    """Remove staging folders that no pending publication needs (a crash before the DB knew of them)."""
    root = Path(out_dir) / STAGING
    if not root.is_dir():
        return []
    keep_names = {f"{uid}.v{v}" for uid, v in keep}
    removed = []
    for d in root.iterdir():
        if d.name not in keep_names:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
