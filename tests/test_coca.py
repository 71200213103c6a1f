"""COCA reader: every ROI of the three gated samples against its own Area/Max/Min/Mean fields,
per-artery Agatston from the ROI labels, the non-gated scores sheet, and the three mistakes public
COCA readers make (each has a check here that the mistake would fail).

Independent expectations: the ROIs' own OsiriX statistics, the issue's reference totals, a
matplotlib point-in-polygon, a scipy.ndimage Agatston written here, pydicom headers read here,
and the spreadsheet read cell by cell with openpyxl.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as MplPath
from scipy import ndimage

from cacstream.engine.domain import ARTERIES, ARTERY_LABEL
from cacstream.training.data.coca_rois import (
    ROI_NAME_TO_ARTERY,
    CocaFormatError,
    UnknownRoiNameError,
    parse_roi_plist,
    polygon_mask,
    polygon_pixels,
)

GATED = ("0", "1", "2")
#: Issue 2 acceptance: total Agatston from the ROIs, ±0.5.
REFERENCE_TOTAL = {"0": 5.86, "1": 367.4, "2": 111.6}
#: Lower HU bounds of Agatston density weights 1..4.
WEIGHTS_HU = (130.0, 200.0, 300.0, 400.0)


def xml_path(coca_root: Path, pid: str) -> Path:
    return coca_root / "Gated_release_final" / "calcium_xml" / f"{pid}.xml"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def gated_cases(coca_root: Path) -> dict:
    from cacstream.training.data.coca import load_gated_patient

    return {pid: load_gated_patient(coca_root, pid) for pid in GATED}


@pytest.fixture(scope="module")
def all_rois(gated_cases: dict) -> list:
    return [roi for pid in GATED for roi in gated_cases[pid].rois]


# ------------------------------------------------------------------------------ parsing (no DICOM)


def test_roi_names_keep_lcx_apart_from_the_left_main() -> None:
    assert ROI_NAME_TO_ARTERY == {
        "Left Coronary Artery": "LM",
        "Left Anterior Descending Artery": "LAD",
        "Left Circumflex Artery": "LCX",
        "Right Coronary Artery": "RCA",
    }


@pytest.mark.parametrize("pid", GATED)
def test_parser_keeps_every_roi_of_every_image(coca_root: Path, pid: str) -> None:
    text = xml_path(coca_root, pid).read_text()
    n_raw = text.count("<key>IndexInImage</key>")  # one per ROI dict, counted without plistlib
    names_raw = re.findall(r"<key>Name</key>\s*<string>([^<]*)</string>", text)
    records, skipped = parse_roi_plist(xml_path(coca_root, pid))
    assert skipped == []
    assert len(records) == n_raw == len(names_raw)
    assert [r.name for r in records] == names_raw
    per_image: dict[int, list[str]] = {}
    for r in records:
        per_image.setdefault(r.image_index, []).append(r.artery)
    if pid == "1":
        # ImageIndex 40 holds four LAD ROIs and one LCX: a one-ROI-per-slice reader loses four of them.
        assert sorted(per_image[40]) == ["LAD", "LAD", "LAD", "LAD", "LCX"]
        assert sorted(per_image[41]) == ["LAD", "LAD", "LM"]


def test_unknown_roi_name_raises_naming_file_index_and_name(coca_root: Path, tmp_path: Path) -> None:
    text = xml_path(coca_root, "0").read_text()
    bad = tmp_path / "0.xml"
    bad.write_text(text.replace("<string>Right Coronary Artery</string>", "<string>Aortic Valve</string>", 1))
    with pytest.raises(UnknownRoiNameError) as err:
        parse_roi_plist(bad)
    message = str(err.value)
    assert str(bad) in message and "ImageIndex 34" in message and "'Aortic Valve'" in message
    records, skipped = parse_roi_plist(bad, unknown_names="skip")
    assert [(s.image_index, s.name) for s in skipped] == [(34, "Aortic Valve")]
    assert [r.image_index for r in records] == [35]


def test_malformed_point_names_the_file(coca_root: Path, tmp_path: Path) -> None:
    text = xml_path(coca_root, "0").read_text()
    bad = tmp_path / "0.xml"
    bad.write_text(text.replace("<string>(126.003922, 144.000000)</string>", "<string>126.0; 144.0</string>", 1))
    with pytest.raises(CocaFormatError, match=re.escape(str(bad)) + r".*ImageIndex 34.*Point_px"):
        parse_roi_plist(bad)
    (tmp_path / "junk.xml").write_text("not a plist")
    with pytest.raises(CocaFormatError, match="junk.xml"):
        parse_roi_plist(tmp_path / "junk.xml")


def test_rasterisation_hand_cases(coca_root: Path) -> None:
    # Square with corners between pixel centres: centres (1..3, 1..2) inside.
    square = np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 2.5], [0.5, 2.5]])
    rr, cc = polygon_pixels(square, (5, 6))
    assert sorted(zip(rr.tolist(), cc.tolist())) == [(r, c) for r in (1, 2) for c in (1, 2, 3)]
    # Orientation does not matter; (x, y) is (column, row): a tall thin box is not transposed.
    assert (polygon_mask(square[::-1], (5, 6)) == polygon_mask(square, (5, 6))).all()
    tall = np.array([[1.5, 0.5], [2.5, 0.5], [2.5, 3.5], [1.5, 3.5]])
    assert sorted(zip(*map(np.ndarray.tolist, polygon_pixels(tall, (5, 6))))) == [(1, 2), (2, 2), (3, 2)]
    # First ROI of patient 0 worked out by hand from its 20 Point_px vertices: 13 pixels.
    first = parse_roi_plist(xml_path(coca_root, "0"))[0][0]
    rr, cc = polygon_pixels(first.points_px, (512, 512))
    by_hand = [(144, c) for c in (127, 128, 129)] + [(145, c) for c in range(123, 130)] + [(146, c) for c in (127, 128, 129)]
    assert sorted(zip(rr.tolist(), cc.tolist())) == sorted(by_hand)
    # Clipped at the image border, and degenerate polygons enclose nothing.
    assert polygon_mask(square + [-2.0, 0.0], (5, 6)).sum() == 2 * 2
    assert polygon_pixels(np.zeros((0, 2)), (5, 6))[0].size == 0
    assert polygon_pixels(square[:2], (5, 6))[0].size == 0


@pytest.mark.parametrize("pid", GATED)
def test_rasterisation_equals_matplotlib_point_in_polygon(coca_root: Path, pid: str) -> None:
    yy, xx = np.mgrid[0:512, 0:512]
    centres = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    for r in parse_roi_plist(xml_path(coca_root, pid))[0]:
        mine = polygon_mask(r.points_px, (512, 512))
        if r.is_empty:
            assert not mine.any()
            continue
        ref = MplPath(r.points_px).contains_points(centres).reshape(512, 512)
        assert (mine == ref).all(), r.where()


# ------------------------------------------------------------------------------ acceptance on the volumes


def centre_to_contour_distance(points: np.ndarray) -> float:
    """Smallest distance from any integer pixel centre near the polygon to one of its edges."""
    p, q = points, np.roll(points, -1, axis=0)
    yy, xx = np.mgrid[int(p[:, 1].min()) - 1 : int(p[:, 1].max()) + 2, int(p[:, 0].min()) - 1 : int(p[:, 0].max()) + 2]
    c = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    d = q - p
    t = np.clip(((c[:, None, :] - p[None]) * d[None]).sum(2) / np.maximum((d**2).sum(1), 1e-12), 0.0, 1.0)
    return float(np.sqrt(((p[None] + t[..., None] * d[None] - c[:, None, :]) ** 2).sum(2)).min())


def test_every_roi_reproduces_its_own_area_max_min_mean(gated_cases: dict, all_rois: list) -> None:
    assert len(all_rois) == 40
    assert sum(r.record.is_empty for r in all_rois) == 10
    for pid in GATED:
        case = gated_cases[pid]
        assert case.problems == [] and case.skipped_rois == []
        pixel_area = case.volume.geometry.pixel_area_mm2
        for roi in case.rois:
            implied = roi.area_cm2 * 100.0 / pixel_area  # Area is in cm²
            assert abs(implied - round(implied)) < 1e-3, roi.record.where()
            assert roi.n_pixels == round(implied), roi.record.where()
            values = case.volume.hu[roi.slice_index][roi.pixel_rows, roi.pixel_cols]
            if roi.n_pixels:
                assert values.max() == roi.max_hu and values.min() == roi.min_hu, roi.record.where()
                assert abs(values.mean(dtype=np.float64) - roi.mean_hu) < 1e-3, roi.record.where()
            else:
                assert roi.area_cm2 == 0.0 and roi.max_hu == 0.0


def test_the_data_decides_the_convention(gated_cases: dict, all_rois: list) -> None:
    """Integer pixel centres strictly inside: no centre is near a contour (the boundary rule never
    decides), and the half-pixel-shifted convention fails every non-empty ROI."""
    non_empty = [r for r in all_rois if r.n_pixels]
    assert min(centre_to_contour_distance(r.points_px) for r in non_empty) > 0.002
    for pid in GATED:
        case = gated_cases[pid]
        for roi in case.rois:
            if not roi.n_pixels:
                continue
            shifted = polygon_pixels(roi.points_px - 0.5, case.labels.shape[1:])  # centres at (i + 0.5, j + 0.5)
            hu2d = case.volume.hu[roi.slice_index]
            assert not roi_fields_agree(hu2d, *shifted, roi), roi.record.where()


def test_image_index_picks_the_file_and_geometry_picks_the_slice(coca_root: Path, gated_cases: dict) -> None:
    for pid in GATED:
        case = gated_cases[pid]
        folder = next((coca_root / "Gated_release_final" / "patient" / pid).iterdir())
        names = sorted(p.name for p in folder.glob("*.dcm"))
        geom = case.volume.geometry
        assert np.all(np.diff(geom.z_mm) > 0)
        for roi in case.rois:
            assert roi.file.name == names[len(names) - 1 - roi.image_index]
            ds = pydicom.dcmread(roi.file, stop_before_pixels=True)
            z_file = float(np.dot([float(v) for v in ds.ImagePositionPatient], geom.normal))
            assert geom.z_mm[roi.slice_index] == pytest.approx(z_file, abs=1e-4)
            assert roi.record.center_mm is not None
            assert float(np.dot(roi.record.center_mm, geom.normal)) == pytest.approx(z_file, abs=1e-3)
            raw = pydicom.dcmread(roi.file).pixel_array
            hu = raw.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            assert np.array_equal(hu, case.volume.hu[roi.slice_index])


def test_renamed_files_break_the_mapping_loudly(coca_root: Path, tmp_path: Path) -> None:
    """File names reversed against z: ImageIndex now names other files, and the Center check says so."""
    from cacstream.training.data.coca import load_gated_patient

    src = next((coca_root / "Gated_release_final" / "patient" / "0").iterdir())
    dst = tmp_path / "Gated_release_final" / "patient" / "0" / "series"
    dst.mkdir(parents=True)
    files = sorted(src.glob("*.dcm"))
    for i, f in enumerate(files):
        (dst / f"IM-{len(files) - i:04d}.dcm").symlink_to(f)
    (tmp_path / "Gated_release_final" / "calcium_xml").mkdir()
    (tmp_path / "Gated_release_final" / "calcium_xml" / "0.xml").symlink_to(xml_path(coca_root, "0"))
    with pytest.raises(CocaFormatError, match=r"ImageIndex 34.*Center lies at -183\.25"):
        load_gated_patient(tmp_path, "0")


def link_patient(coca_root: Path, dst_root: Path, pid: str, with_xml: bool) -> None:
    """A COCA layout under ``dst_root`` whose files are symlinks to the samples (nothing copied)."""
    src = next((coca_root / "Gated_release_final" / "patient" / pid).iterdir())
    dst = dst_root / "Gated_release_final" / "patient" / pid / src.name
    dst.mkdir(parents=True)
    for f in src.glob("*.dcm"):
        (dst / f.name).symlink_to(f)
    (dst_root / "Gated_release_final" / "calcium_xml").mkdir(exist_ok=True)
    if with_xml:
        (dst_root / "Gated_release_final" / "calcium_xml" / f"{pid}.xml").symlink_to(xml_path(coca_root, pid))


def test_patient_without_roi_file_has_no_calcium_unless_required(coca_root: Path, tmp_path: Path) -> None:
    from cacstream.training.data.coca import load_gated_patient

    link_patient(coca_root, tmp_path, "0", with_xml=False)
    case = load_gated_patient(tmp_path, "0")
    assert case.roi_file is None and case.rois == [] and not case.labels.any()
    assert case.labels.shape == (57, 512, 512)
    with pytest.raises(FileNotFoundError, match=r"0\.xml: no ROI file"):
        load_gated_patient(tmp_path, "0", require_xml=True)


def test_folder_without_a_series_is_explained(tmp_path: Path) -> None:
    from cacstream.training.data.coca import load_gated_patient

    folder = tmp_path / "Gated_release_final" / "patient" / "7" / "series"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(CocaFormatError, match=r"patient/7: no eligible CT series \(1 file\(s\) skipped \(not_dicom"):
        load_gated_patient(tmp_path, "7")
    with pytest.raises(FileNotFoundError, match="gated patient '8' not found"):
        load_gated_patient(tmp_path, "8")


def test_two_arteries_claiming_one_pixel_is_an_error(gated_cases: dict) -> None:
    import dataclasses

    from cacstream.training.data.coca import rois_to_labels

    case = gated_cases["1"]
    lad = next(r for r in case.rois if r.artery == "LAD" and r.n_pixels)
    fake_rca = dataclasses.replace(lad, record=dataclasses.replace(lad.record, name="Right Coronary Artery", artery="RCA"))
    with pytest.raises(CocaFormatError, match=r"ImageIndex 39 ROI 0 \('Right Coronary Artery'\) overlaps .*ImageIndex 39 ROI 0 \('Left Anterior"):
        rois_to_labels([lad, fake_rca], case.labels.shape)
    same_artery = rois_to_labels([lad, lad], case.labels.shape)  # same artery twice: a union, no error
    assert int((same_artery > 0).sum()) == lad.n_pixels


def test_labels_paint_every_roi_with_its_artery(gated_cases: dict) -> None:
    for pid in GATED:
        case = gated_cases[pid]
        assert case.labels.dtype == np.uint8 and case.labels.shape == case.volume.hu.shape
        painted = np.zeros(case.labels.shape, bool)
        for roi in case.rois:
            assert ARTERY_LABEL[ROI_NAME_TO_ARTERY[roi.name]] == roi.label
            assert (case.labels[roi.slice_index, roi.pixel_rows, roi.pixel_cols] == roi.label).all()
            painted[roi.slice_index, roi.pixel_rows, roi.pixel_cols] = True
        assert ((case.labels > 0) == painted).all()
        assert int(painted.sum()) == sum(r.n_pixels for r in case.rois)  # no overlaps in the samples


# ------------------------------------------------------------------------------ Agatston from the ROIs


def reference_agatston(hu: np.ndarray, labels: np.ndarray, pixel_area: float, thickness_factor: float) -> dict:
    """Per-artery Agatston with scipy.ndimage: per slice, label ∩ HU ≥ 130, 8-connected, ≥ 1 mm²."""
    out = {a: 0.0 for a in ARTERIES}
    for z in range(hu.shape[0]):
        for artery in ARTERIES:
            comp, n = ndimage.label((labels[z] == ARTERY_LABEL[artery]) & (hu[z] >= 130), np.ones((3, 3)))
            for k in range(1, n + 1):
                pix = comp == k
                area = pix.sum() * pixel_area
                if area >= 1.0:
                    out[artery] += area * int(np.searchsorted(WEIGHTS_HU, hu[z][pix].max(), side="right"))
    return {a: v * thickness_factor for a, v in out.items()}


def engine_agatston(case, labels: np.ndarray | None = None):
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.agatston import score_volume

    return score_volume(case.volume.hu, case.volume.geometry, case.labels if labels is None else labels,
                        AgatstonConfig().for_reference_labels())


def thickness_factor(case) -> float:
    return case.volume.geometry.effective_thickness_mm / 3.0


@pytest.mark.parametrize("pid", GATED)
def test_per_artery_agatston_from_rois(gated_cases: dict, pid: str) -> None:
    case = gated_cases[pid]
    geom = case.volume.geometry
    ref = reference_agatston(case.volume.hu, case.labels, geom.pixel_area_mm2, thickness_factor(case))
    assert sum(ref.values()) == pytest.approx(REFERENCE_TOTAL[pid], abs=0.5)
    result = engine_agatston(case)
    assert result.agatston_total == pytest.approx(REFERENCE_TOTAL[pid], abs=0.5)
    for artery in ARTERIES:
        assert result.agatston_per_artery[artery] == pytest.approx(ref[artery], abs=1e-6), artery
    if pid == "0":
        assert set(a for a, v in result.agatston_per_artery.items() if v > 0) == {"RCA"}


# ------------------------------------------------------------------------------ the public readers' mistakes


def roi_fields_agree(hu2d: np.ndarray, rows: np.ndarray, cols: np.ndarray, roi, fields: str = "count max min mean") -> bool:
    """The check a correct rasterisation passes: its pixels reproduce the ROI's own statistics."""
    values = hu2d[rows, cols].astype(np.float64)
    if values.size != roi.n_pixels or values.size == 0:
        return False
    checks = {
        "count": True,
        "max": values.max() == roi.max_hu,
        "min": values.min() == roi.min_hu,
        "mean": abs(values.mean() - roi.mean_hu) < 1e-3,
    }
    return all(checks[f] for f in fields.split())


def test_mistake_transposed_mask_fails_the_max_check(gated_cases: dict) -> None:
    correct = transposed = transposed_max_only = n = 0
    for pid in GATED:
        case = gated_cases[pid]
        for roi in case.rois:
            if not roi.n_pixels:
                continue
            n += 1
            hu2d = case.volume.hu[roi.slice_index]
            correct += roi_fields_agree(hu2d, roi.pixel_rows, roi.pixel_cols, roi)
            # The mistake: Point_px (x, y) taken as (row, column).
            transposed += roi_fields_agree(hu2d, roi.pixel_cols, roi.pixel_rows, roi)
            transposed_max_only += roi_fields_agree(hu2d, roi.pixel_cols, roi.pixel_rows, roi, "count max")
    assert n == 30 and correct == 30
    assert transposed == 0
    # Max alone exposes 29 of 30: patient 1 ImageIndex 41 ROI 1 straddles the image diagonal, so its
    # transpose still covers the plaque's peak (475 HU); its Min/Mean (85 / 224 HU) give it away.
    assert transposed_max_only <= 1


def per_artery_matches_rois(case, labels: np.ndarray) -> bool:
    """Each artery's labelled pixels are exactly the pixels of that artery's ROIs."""
    for artery in ARTERIES:
        want = np.zeros(labels.shape, bool)
        for roi in case.rois:
            if roi.artery == artery:
                want[roi.slice_index, roi.pixel_rows, roi.pixel_cols] = True
        if not np.array_equal(labels == ARTERY_LABEL[artery], want):
            return False
    return True


def test_mistake_lcx_merged_into_left_main_fails_per_artery(gated_cases: dict) -> None:
    for pid in ("1", "2"):  # the samples with circumflex ROIs
        case = gated_cases[pid]
        assert any(r.artery == "LCX" for r in case.rois)
        merged = np.where(case.labels == ARTERY_LABEL["LCX"], ARTERY_LABEL["LM"], case.labels).astype(np.uint8)
        assert per_artery_matches_rois(case, case.labels)
        assert not per_artery_matches_rois(case, merged)
        geom = case.volume.geometry
        good = reference_agatston(case.volume.hu, case.labels, geom.pixel_area_mm2, thickness_factor(case))
        bad = reference_agatston(case.volume.hu, merged, geom.pixel_area_mm2, thickness_factor(case))
        assert good["LCX"] > 1.0 and bad["LCX"] == 0.0 and bad["LM"] > good["LM"]


def area_per_slice_matches(case, labels: np.ndarray) -> bool:
    """Labelled pixels per slice equal the sum of the slice's ROI Areas (no overlaps in the samples)."""
    pixel_area = case.volume.geometry.pixel_area_mm2
    want = np.zeros(labels.shape[0], np.int64)
    for roi in case.rois:
        want[roi.slice_index] += round(roi.area_cm2 * 100.0 / pixel_area)
    return np.array_equal((labels > 0).sum(axis=(1, 2)), want)


def test_mistake_one_roi_per_slice_fails_the_area_check(gated_cases: dict) -> None:
    for pid in ("1", "2"):
        case = gated_cases[pid]
        first_only = np.zeros_like(case.labels)
        taken: set[int] = set()
        for roi in case.rois:
            if roi.n_pixels and roi.slice_index not in taken:
                taken.add(roi.slice_index)
                first_only[roi.slice_index, roi.pixel_rows, roi.pixel_cols] = roi.label
        assert area_per_slice_matches(case, case.labels)
        assert not area_per_slice_matches(case, first_only)
        geom = case.volume.geometry
        full = sum(reference_agatston(case.volume.hu, case.labels, geom.pixel_area_mm2, 1.0).values())
        lossy = sum(reference_agatston(case.volume.hu, first_only, geom.pixel_area_mm2, 1.0).values())
        assert lossy < full - 0.5


# ------------------------------------------------------------------------------ listing and non-gated


def test_list_patients(coca_root: Path) -> None:
    from cacstream.training.data.coca import list_gated_patients, list_nongated_patients

    assert list_gated_patients(coca_root) == ["0", "1", "2"]
    assert list_gated_patients(coca_root / "Gated_release_final") == ["0", "1", "2"]
    assert list_nongated_patients(coca_root) == ["1", "2"]


def sheet_by_cells(coca_root: Path) -> dict[str, dict[str, float]]:
    """scores.xlsx read by fixed cell coordinates (A id, B LCA = LM, C LAD, D LCX, E RCA, F total)."""
    import openpyxl

    ws = openpyxl.load_workbook(coca_root / "deidentified_nongated" / "scores.xlsx").worksheets[0]
    assert [str(ws[f"{c}1"].value).strip() for c in "ABCDEF"] == ["filename", "LCA", "LAD", "LCX", "RCA", "total"]
    out = {}
    for row in (2, 3):
        pid = str(ws[f"A{row}"].value).strip().rstrip("A")
        out[pid] = {k: float(ws[f"{c}{row}"].value) for k, c in zip(("LM", "LAD", "LCX", "RCA", "total"), "BCDEF")}
    return out


def test_nongated_scores_match_the_sheet(coca_root: Path) -> None:
    from cacstream.training.data.coca import load_nongated_scores

    expected = sheet_by_cells(coca_root)
    assert load_nongated_scores(coca_root) == expected
    assert expected["2"] == {"LM": 132.0, "LAD": 1.91, "LCX": 128.0, "RCA": 37.5, "total": 300.0}


@pytest.mark.parametrize("pid", ["1", "2"])
def test_nongated_patient_loads_with_its_scores(coca_root: Path, pid: str) -> None:
    from cacstream.training.data.coca import load_nongated_patient

    case = load_nongated_patient(coca_root, pid)
    assert case.expected_scores == sheet_by_cells(coca_root)[pid]
    assert case.sheet_id == f"{pid}A"
    files = sorted((coca_root / "deidentified_nongated" / pid).rglob("*.dcm"))
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert case.volume.hu.shape == (len(files), ds.Rows, ds.Columns)
    assert case.volume.hu.dtype == np.float32
    assert case.volume.geometry.slice_thickness_mm == pytest.approx(float(ds.SliceThickness))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert case.volume.geometry.z_mm == pytest.approx(sorted(z), abs=1e-4)


def test_scores_sheet_errors_name_file_and_cell(tmp_path: Path) -> None:
    import openpyxl

    from cacstream.training.data.nongated_scores import ScoresSheetError, read_scores_sheet

    def write(rows: list[list], name: str) -> Path:
        wb = openpyxl.Workbook()
        for r in rows:
            wb.active.append(r)
        path = tmp_path / name
        wb.save(path)
        return path

    header = ["filename ", "LCA", "LAD", "LCX", "RCA", "total"]
    ok = write([header, ["3B", 1, 2, 3, 4, 10], [], ["4", 0, 0, 0, 0, 0]], "ok.xlsx")
    rows = read_scores_sheet(ok)
    assert [(r.sheet_id, r.patient_id, r.row) for r in rows] == [("3B", "3", 2), ("4", "4", 4)]
    assert rows[0].scores == {"LM": 1.0, "LAD": 2.0, "LCX": 3.0, "RCA": 4.0, "total": 10.0}
    missing = write([["filename", "LCA", "LAD", "RCA", "total"], ["1A", 0, 0, 0, 0]], "missing.xlsx")
    with pytest.raises(ScoresSheetError, match=r"missing\.xlsx.*LCX"):
        read_scores_sheet(missing)
    text = write([header, ["1A", 0, "n/a", 0, 0, 0]], "text.xlsx")
    with pytest.raises(ScoresSheetError, match=r"text\.xlsx cell C2: 'n/a' is not a number"):
        read_scores_sheet(text)
    dup = write([header, ["1A", 0, 0, 0, 0, 0], ["1B", 0, 0, 0, 0, 0]], "dup.xlsx")
    with pytest.raises(ScoresSheetError, match=r"rows 2 and 3 both name patient folder '1'"):
        read_scores_sheet(dup)
