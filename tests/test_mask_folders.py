"""Generic "DICOM series + mask files" training data: layout, geometric order, validation errors.

Series are written with ``cacstream.training.dicom_writer.write_ct_series`` with positions that run
AGAINST the file order (and shuffled file names), so a reader that followed file names would put
the labels on the wrong slices. The expectation is built here from the arrays that were written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cacstream.training.data.mask_folders import (
    MaskFolderError,
    index_mask_folder,
    iter_cases,
    load_case,
    read_labels,
)
from cacstream.training.dicom_writer import write_ct_series

N_SLICES, ROWS, COLS = 9, 20, 28  # not square: a transposed mask cannot pass the shape check


def make_series(folder: Path, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """Write one CT series; return its UID, HU and labels, both in GEOMETRIC order (z increasing)."""
    rng = np.random.default_rng(seed)
    hu_written = rng.integers(-1000, 1500, size=(N_SLICES, ROWS, COLS)).astype(np.float32)
    labels_written = rng.integers(0, 5, size=(N_SLICES, ROWS, COLS)).astype(np.uint8)
    z = 40.0 - 3.0 * np.arange(N_SLICES)  # written top-down: file k is the (N-1-k)-th slice along z
    names = rng.permutation(N_SLICES) + 100  # file names unrelated to position
    paths = write_ct_series(
        hu_written,
        folder,
        pixel_spacing_mm=(0.5, 0.6),
        slice_thickness_mm=3.0,
        z_positions_mm=list(z),
        file_name="x{instance}.dcm",
        instance_numbers=[int(n) for n in names],
    )
    import pydicom

    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    return uid, hu_written[::-1].copy(), labels_written[::-1].copy()


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, list[tuple[str, np.ndarray, np.ndarray]]]:
    root = tmp_path / "site"
    (root / "masks").mkdir(parents=True)
    series = [make_series(root / "series" / f"study{i}" / "ct", seed=i) for i in range(3)]
    return root, series


def test_npy_and_npz_labels_load_in_geometric_order(site) -> None:
    root, series = site
    (uid0, hu0, lab0), (uid1, hu1, lab1), (uid2, _, _) = series
    np.save(root / "masks" / f"{uid0}.npy", lab0)
    np.savez_compressed(root / "masks" / f"{uid1}.npz", labels=lab1.astype(np.int64), other=np.zeros(3))
    index = index_mask_folder(root)
    assert sorted(i.series.uid for i in index.labelled) == sorted([uid0, uid1])
    assert [s.uid for s in index.unlabelled] == [uid2]
    assert index.rejected == [] and index.skipped == []
    by_uid = {i.series.uid: i for i in index.labelled}
    for uid, hu, lab in ((uid0, hu0, lab0), (uid1, hu1, lab1)):
        case = load_case(by_uid[uid])
        assert case.labels.dtype == np.uint8
        assert np.array_equal(case.labels, lab)
        assert np.array_equal(case.volume.hu, hu)  # pixels and labels line up slice by slice
        assert np.all(np.diff(case.volume.geometry.z_mm) > 0)
    assert [c.series_uid for c in iter_cases(root)] == sorted([uid0, uid1])


def test_npz_with_a_single_unnamed_array(site) -> None:
    root, series = site
    uid, _, lab = series[0]
    np.savez(root / "masks" / f"{uid}.npz", lab)
    (item,) = index_mask_folder(root).labelled
    assert np.array_equal(read_labels(item), lab)


def test_npz_without_labels_key_is_an_error(site) -> None:
    root, series = site
    uid, _, lab = series[0]
    np.savez(root / "masks" / f"{uid}.npz", a=lab, b=lab)
    (item,) = index_mask_folder(root).labelled
    with pytest.raises(MaskFolderError, match=r"\.npz holds arrays \['a', 'b'\]; name the label volume 'labels'"):
        read_labels(item)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda lab: lab[:-1], r"label shape \(8, 20, 28\) does not match series .* = \(9, 20, 28\)"),
        (lambda lab: lab.transpose(0, 2, 1), r"label shape \(9, 28, 20\) does not match"),
        (lambda lab: np.where(lab == 4, 7, lab), r"label values \[7\] outside 0\.\.4"),
        (lambda lab: lab.astype(np.int16) - 1, r"label values \[-1\] outside 0\.\.4"),
        (lambda lab: lab.astype(np.float32), r"labels have dtype float32"),
    ],
)
def test_bad_label_volumes_name_the_file_and_reason(site, bad, message: str) -> None:
    root, series = site
    uid, _, lab = series[0]
    path = root / "masks" / f"{uid}.npy"
    np.save(path, bad(lab))
    (item,) = index_mask_folder(root).labelled
    with pytest.raises(MaskFolderError, match=message) as err:
        load_case(item)
    assert str(path) in str(err.value)


def test_mask_for_a_missing_series_is_an_error(site) -> None:
    root, series = site
    path = root / "masks" / "1.2.3.4.5.npy"
    np.save(path, series[0][2])
    with pytest.raises(MaskFolderError, match=r"1\.2\.3\.4\.5\.npy: mask for series 1\.2\.3\.4\.5, but no series"):
        index_mask_folder(root)


def test_two_masks_for_one_series_is_an_error(site) -> None:
    root, series = site
    uid, _, lab = series[0]
    np.save(root / "masks" / f"{uid}.npy", lab)
    np.savez(root / "masks" / f"{uid}.npz", labels=lab)
    with pytest.raises(MaskFolderError, match="already has a mask"):
        index_mask_folder(root)


def test_other_files_are_listed_not_dropped(site) -> None:
    root, series = site
    (root / "masks" / "README.txt").write_text("annotator notes")
    index = index_mask_folder(root)
    assert [(s.path.name, s.reason) for s in index.skipped] == [("README.txt", "not_a_mask")]


def test_missing_layout_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "series").mkdir()
    with pytest.raises(MaskFolderError, match=r"expected a masks/ folder"):
        index_mask_folder(tmp_path)


def write_seg(series_dir: Path, labels_geometric: np.ndarray, out: Path, seg_labels: dict[int, str]) -> None:
    """A DICOM SEG (highdicom) with one binary segment per artery label, over the series' files."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    datasets = [pydicom.dcmread(p) for p in sorted(series_dir.glob("*.dcm"))]
    normal = np.cross(np.asarray(datasets[0].ImageOrientationPatient[:3], float), np.asarray(datasets[0].ImageOrientationPatient[3:], float))
    datasets.sort(key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)))
    numbers = sorted(seg_labels)
    pixel_array = np.stack([labels_geometric == value for value in numbers], axis=-1).astype(bool)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=seg_labels[value],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.CalcifiedAtheromatousPlaque,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for i, value in enumerate(numbers)
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="cacstream-tests",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(out)


def test_dicom_seg_masks(site) -> None:
    root, series = site
    uid, _, lab = series[0]
    lab = lab.copy()
    lab[0] = 0  # an empty slice: SEG omits its frames, the reader must fill zeros
    write_seg(root / "series" / "study0" / "ct", lab, root / "masks" / "annotation.dcm",
              {1: "LM", 2: "Left Anterior Descending Artery", 3: "lcx", 4: "RCA"})
    (item,) = index_mask_folder(root).labelled
    assert item.mask.kind == "seg" and item.series.uid == uid
    assert np.array_equal(load_case(item).labels, lab)


def test_dicom_seg_with_unknown_segment_label(site) -> None:
    root, series = site
    uid, _, lab = series[0]
    path = root / "masks" / "annotation.dcm"
    write_seg(root / "series" / "study0" / "ct", lab, path, {1: "LM", 2: "LAD", 3: "LCX", 4: "Aorta"})
    (item,) = index_mask_folder(root).labelled
    with pytest.raises(MaskFolderError, match=r"annotation\.dcm: segment 4 is labelled 'Aorta'"):
        read_labels(item)
