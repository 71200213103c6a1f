"""Load the cases a data config names: npz files, case folders, phantoms, COCA, DICOM + mask folders.

Every source yields :class:`Case` objects with a ``patient_id`` that is unique across sources (prefixed
by the source kind), because splits are made of patients. The readers of the other parts are imported
only when their source is used (``cacstream.training.phantom``, ``cacstream.training.data.coca``,
``cacstream.training.data.mask_folders``), and a missing reader is a clear error, not a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from cacstream.training.config import SourceConfig
from cacstream.training.datasets.cases import (
    Case,
    CaseError,
    load_case_dir,
    load_npz_case,
    save_case_dir,
)

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A data source that cannot be read (the message says which and why)."""


def _drop_labels(case: Case, src: SourceConfig) -> Case:
    if not src.use_labels and case.labels is not None:
        return Case(case.case_id, case.patient_id, case.hu, None, case.pixel_spacing_mm, case.source)
    return case


def _cached(src: SourceConfig, case_id: str, make: Callable[[], Case]) -> Case:
    """Load ``case_id`` from ``src.cache_dir`` if a complete copy is there, else make and cache it."""
    if not src.cache_dir:
        return make()
    d = Path(src.cache_dir) / case_id
    if (d / "case.json").is_file():
        try:
            return load_case_dir(d)
        except CaseError as e:
            log.warning("cache entry unusable, regenerating: %s", e)
    case = make()
    save_case_dir(case, Path(src.cache_dir))
    return load_case_dir(d)  # memory-mapped from now on


def _npz(src: SourceConfig) -> Iterator[Case]:
    root = Path(src.path)
    files = sorted(root.glob("*.npz")) if root.is_dir() else ([root] if root.suffix == ".npz" else [])
    if not files:
        raise SourceError(f"{root}: no .npz case files found")
    for f in files:
        yield load_npz_case(f)


def _case_dir(src: SourceConfig) -> Iterator[Case]:
    root = Path(src.path)
    dirs = sorted(p.parent for p in root.glob("*/case.json"))
    if not dirs:
        raise SourceError(f"{root}: no case folders (<case>/case.json) found")
    for d in dirs:
        yield load_case_dir(d)


def _phantom(src: SourceConfig) -> Iterator[Case]:
    try:
        from cacstream.training.phantom import PhantomConfig, make_phantom
    except ImportError as e:
        raise SourceError(f"phantom source: the phantom generator is not available ({e})") from None
    first, count = int(src.seeds[0]), int(src.seeds[1])
    try:
        pconf = PhantomConfig(**src.phantom) if src.phantom else PhantomConfig()
    except TypeError as e:
        raise SourceError(f"phantom source: bad PhantomConfig keys {sorted(src.phantom)}: {e}") from None
    for seed in range(first, first + count):

        def make(seed: int = seed) -> Case:
            ph = make_phantom(seed, pconf)
            sp = ph.geometry.pixel_spacing_mm
            return Case(
                f"phantom-{seed}",
                f"phantom-{seed}",
                ph.hu,
                ph.labels,
                (float(sp[0]), float(sp[1])),
                f"phantom:seed={seed}",
            )

        yield _cached(src, f"phantom-{seed}", make)


def _coca(src: SourceConfig) -> Iterator[Case]:
    try:
        from cacstream.training.data import coca
    except ImportError as e:
        raise SourceError(f"coca source: the COCA reader is not available ({e})") from None
    root = Path(src.path)
    if src.gated:
        pids = list(src.patients) or coca.list_gated_patients(root)
    else:
        pids = list(src.patients) or coca.list_nongated_patients(root)
    if not pids:
        raise SourceError(f"{root}: no {'gated' if src.gated else 'non-gated'} COCA patients found")
    for pid in pids:
        kind = "gated" if src.gated else "nongated"
        case_id = f"coca-{kind}-{pid}"

        def make(pid: str = pid, case_id: str = case_id, kind: str = kind) -> Case:
            if src.gated:
                c = coca.load_gated_patient(root, pid)
                vol, labels = c.volume, c.labels
            else:
                n = coca.load_nongated_patient(root, pid)
                vol, labels = n.volume, None
            sp = vol.geometry.pixel_spacing_mm
            # COCA gated and non-gated folders number patients independently: keep them apart.
            return Case(
                case_id,
                f"coca-{kind}-{pid}",
                vol.hu,
                labels,
                (float(sp[0]), float(sp[1])),
                f"coca:{kind}:{pid}",
            )

        yield _cached(src, case_id, make)


def _mask_folder(src: SourceConfig) -> Iterator[Case]:
    try:
        from cacstream.engine.series import read_volume
        from cacstream.training.data import mask_folders
    except ImportError as e:
        raise SourceError(f"mask_folder source: the mask-folder reader is not available ({e})") from None
    index = mask_folders.index_mask_folder(Path(src.path))
    wanted = set(src.patients)

    def patient_of(series: object) -> str:
        # The series types carry no PatientID; the study is the closest stand-in (one visit of one
        # patient). Two studies of one patient could land in different splits: give explicit
        # split lists when that matters.
        return f"study-{series.first.study_instance_uid}"  # type: ignore[attr-defined]

    for item in index.labelled:
        pid = patient_of(item.series)
        if wanted and pid not in wanted:
            continue
        c = mask_folders.load_case(item)
        sp = c.volume.geometry.pixel_spacing_mm
        yield Case(
            f"series-{c.series_uid}",
            pid,
            c.volume.hu,
            c.labels,
            (float(sp[0]), float(sp[1])),
            f"mask_folder:{c.mask_path.name}",
        )
    for series in index.unlabelled:
        pid = patient_of(series)
        if wanted and pid not in wanted:
            continue
        vol = read_volume(series)
        sp = vol.geometry.pixel_spacing_mm
        yield Case(
            f"series-{series.uid}",
            pid,
            vol.hu,
            None,
            (float(sp[0]), float(sp[1])),
            f"mask_folder:unlabelled:{series.uid}",
        )


_READERS: dict[str, Callable[[SourceConfig], Iterator[Case]]] = {
    "npz": _npz,
    "case_dir": _case_dir,
    "phantom": _phantom,
    "coca": _coca,
    "mask_folder": _mask_folder,
}


def iter_source(src: SourceConfig) -> Iterator[Case]:
    reader = _READERS.get(src.kind)
    if reader is None:
        raise SourceError(f"unknown source kind {src.kind!r}; known: {sorted(_READERS)}")
    for case in reader(src):
        yield _drop_labels(case, src)


def describe_source(src: SourceConfig) -> str:
    """One line for config.json's training-data description."""
    if src.kind == "phantom":
        return f"phantom seeds {src.seeds[0]}..{src.seeds[0] + src.seeds[1] - 1} {src.phantom or ''}".strip()
    if src.kind == "coca":
        who = ",".join(src.patients) if src.patients else "all"
        return f"coca {'gated' if src.gated else 'non-gated'} patients {who} at {src.path}"
    return f"{src.kind} {src.path}" + ("" if src.use_labels else " (labels ignored)")
