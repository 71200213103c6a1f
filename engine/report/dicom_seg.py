"""Per-artery lesion masks as a DICOM Segmentation (highdicom, BINARY, one segment per artery present).

Every pixel of a scored lesion belongs to its lesion's artery (the segmenter's majority class), so the
SEG shows exactly what was counted. Frames reference the source CT instances they were computed on;
only slices with a lesion get a frame (empty frames are omitted). A series without any lesion gets no
SEG (a SEG needs at least one segment; the SR and JSON report say "0").

Codes: category "Morphologically altered structure" (SCT 49755003), type "Calcified atheromatous
plaque" (SCT 29483008), anatomic region the artery (SCT, see :data:`dicom_sr.ARTERY_CODES`). In
threshold mode one segment "Calcium" (category "Substance" SCT 105590001, type "Calcium" SCT 5540006)
covers every lesion ≥ threshold, bone included, without anatomic region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from cacstream import __version__
from cacstream.engine.domain import ARTERIES, ARTERY_LABEL
from cacstream.engine.pipeline.stages import UNASSIGNED_LABEL
from cacstream.engine.report.dicom_sr import MANUFACTURER, artery_code

#: CIELab-friendly display colours (RGB 0-255) by artery, shared with the key image.
ARTERY_RGB: dict[str, tuple[int, int, int]] = {
    "LM": (255, 215, 0),
    "LAD": (255, 64, 64),
    "LCX": (64, 160, 255),
    "RCA": (64, 220, 96),
    "calcium": (255, 140, 0),
}


def _code(value: str, scheme: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _segment(number: int, name: str, label_value: int) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="cacstream", version=__version__, family=codes.cid7162.ArtificialIntelligence)
    color = hd.color.CIELabColor(*_rgb_to_lab(ARTERY_RGB[name]))
    if label_value == UNASSIGNED_LABEL:
        return hd.seg.SegmentDescription(
            segment_number=number, segment_label="Calcium",
            segmented_property_category=_code("105590001", "SCT", "Substance"),
            segmented_property_type=_code("5540006", "SCT", "Calcium"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=color)
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=f"{name} calcium",
        segmented_property_category=_code("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=_code("29483008", "SCT", "Calcified atheromatous plaque"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[artery_code(name)], display_color=color)


def _rgb_to_lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """sRGB (D65) → CIE L*a*b*, clipped to the ranges highdicom accepts."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ c / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    return (float(np.clip(lab[0], 0, 100)), float(np.clip(lab[1], -127, 128)), float(np.clip(lab[2], -128, 127)))


def segments_present(label_maps: Mapping[int, np.ndarray]) -> list[tuple[str, int]]:
    """(name, label value) of every artery (or 'calcium' in threshold mode) present, in ARTERIES order."""
    counts = np.zeros(256, dtype=np.int64)
    for m in label_maps.values():
        counts += np.bincount(np.asarray(m, dtype=np.uint8).ravel(), minlength=256)
    present = {int(v) for v in np.flatnonzero(counts) if v}
    out = [(a, ARTERY_LABEL[a]) for a in ARTERIES if ARTERY_LABEL[a] in present]
    if UNASSIGNED_LABEL in present:
        out.append(("calcium", UNASSIGNED_LABEL))
    return out


def build_seg(
    label_maps: Mapping[int, np.ndarray],
    source_datasets: Sequence[Dataset],
    frames: Sequence[int | None],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int = 1,
    series_number: int = 9002,
) -> Dataset | None:
    """A BINARY SEG from lesion label maps, or None when there is no lesion.

    ``label_maps``: slice index → uint8 label map; ``source_datasets[i]`` / ``frames[i]``: the header
    dataset and frame number (None for single-frame files) of slice ``i`` of the series.
    """
    import highdicom as hd

    segments = segments_present(label_maps)
    if not segments:
        return None
    seg_number = {value: k + 1 for k, (_, value) in enumerate(segments)}
    descriptions = [_segment(k + 1, name, value) for k, (name, value) in enumerate(segments)]
    lut = np.zeros(256, dtype=np.uint8)
    for value, number in seg_number.items():
        lut[value] = number
    indices = sorted(label_maps)
    multi = any(frames[i] is not None for i in indices)
    if multi:
        # one enhanced multi-frame source: a label frame for every frame of that file
        source = source_datasets[indices[0]]
        if any(source_datasets[i] is not source for i in indices):
            raise ValueError("lesions span several multi-frame files; one SEG per source file is not supported")
        n_frames = int(source.get("NumberOfFrames", 1))
        pixel_array = np.zeros((n_frames, int(source.Rows), int(source.Columns)), dtype=np.uint8)
        for i in indices:
            pixel_array[int(frames[i])] = lut[label_maps[i]]
        sources = [source]
    else:
        sources = [source_datasets[i] for i in indices]
        pixel_array = np.stack([lut[label_maps[i]] for i in indices])
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="cacstream",
        software_versions=__version__,
        device_serial_number="0",
        content_description="Coronary calcium lesions by artery",
        content_label="CALCIUM",
    )
    seg.SeriesDescription = "Calcium lesions (cacstream)"
    return seg
