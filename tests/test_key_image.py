"""Key image: the highest-scoring slices first, lesion pixels painted in their artery's colour, scores and legend."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cacstream.engine.domain import ARTERY_LABEL
from cacstream.engine.pipeline.stages import UNASSIGNED_LABEL
from cacstream.engine.report.dicom_seg import ARTERY_RGB
from cacstream.engine.report.key_image import PANEL_PX, panel_rgb, render_key_image, top_slices


def _report(mode: str = "model") -> dict:
    lesions = [
        {"slice_index": 2, "z_mm": 6.0, "score": 10.0, "n_pixels": 4},
        {"slice_index": 5, "z_mm": 15.0, "score": 3.0, "n_pixels": 4},
        {"slice_index": 5, "z_mm": 15.0, "score": 9.0, "n_pixels": 4},  # slice 5 sums to 12 > 10
        {"slice_index": 7, "z_mm": 21.0, "score": 10.0, "n_pixels": 4},  # ties slice 2: lower index first
        {"slice_index": 8, "z_mm": 24.0, "score": 1.0, "n_pixels": 4},
    ]
    return {"series_instance_uid": "1.2.3.4", "status": "scored", "mode": mode, "report_version": 1,
            "agatston_total": 42.0, "risk_category": "11-100", "volume_mm3_total": 33.0,
            "agatston_per_artery": {"LM": 0.0, "LAD": 30.0, "LCX": 0.0, "RCA": 12.0},
            "agatston_config": {"thickness_factor": 1.0}, "geometry": {"n_slices": 10}, "lesions": lesions}


def test_top_slices_rank_by_summed_score_with_ties_to_the_lower_index() -> None:
    assert top_slices(_report(), 3) == [5, 2, 7]
    assert top_slices(_report(), 1) == [5]
    assert top_slices({"lesions": []}) == []


def test_panel_paints_lesion_pixels_in_artery_colours_and_windows_the_rest() -> None:
    hu = np.full((16, 16), -1000.0, np.float32)
    hu[0, 0] = 900.0  # top of the window: white
    hu[0, 1] = -300.0  # bottom: black
    lm = np.zeros((16, 16), np.uint8)
    lm[4:6, 4:6] = ARTERY_LABEL["LAD"]
    lm[10, 10] = ARTERY_LABEL["RCA"]
    lm[12, 3] = UNASSIGNED_LABEL
    rgb = panel_rgb(hu, lm)
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[0, 1]) == (0, 0, 0)
    assert tuple(rgb[4, 5]) == ARTERY_RGB["LAD"] and tuple(rgb[10, 10]) == ARTERY_RGB["RCA"]
    assert tuple(rgb[12, 3]) == ARTERY_RGB["calcium"]
    assert tuple(rgb[8, 8]) == (0, 0, 0)


def test_rendered_png_shows_the_chosen_slices_with_their_lesions() -> None:
    rep = _report()
    slices = top_slices(rep, 3)
    hu = {i: np.zeros((64, 64), np.float32) for i in slices}
    maps = {}
    for i in slices:
        m = np.zeros((64, 64), np.uint8)
        m[20:30, 20:30] = ARTERY_LABEL["LAD"] if i != 5 else ARTERY_LABEL["RCA"]
        maps[i] = m
    png = render_key_image(rep, hu, maps, slices)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert img.shape[1] >= 3 * PANEL_PX  # three panels side by side
    colours = {tuple(c) for c in img.reshape(-1, 3)[::7]}
    assert ARTERY_RGB["LAD"] in colours and ARTERY_RGB["RCA"] in colours
    # the first panel is the best slice (5): its lesion is RCA-coloured, none LAD-coloured
    first = img[104: 104 + PANEL_PX, : PANEL_PX + 12]  # below the header, above the legend
    flat = {tuple(c) for c in first.reshape(-1, 3)}
    assert ARTERY_RGB["RCA"] in flat and ARTERY_RGB["LAD"] not in flat


def test_a_series_without_lesions_still_gets_an_image() -> None:
    rep = _report()
    rep["lesions"] = []
    png = render_key_image(rep, {}, {}, [])
    assert Image.open(io.BytesIO(png)).size[0] > 100


def test_header_names_every_exclusion_reason_with_its_count_and_score() -> None:
    from cacstream.engine.report.key_image import exclusion_note

    report = {"agatston_config": {"thickness_factor": 2.0}, "excluded_lesions": [
        {"score": 1.5, "reason": "partial_claim"}, {"score": 10.0, "reason": "skeletal"},
        {"score": 2.0, "reason": "partial_claim"}]}
    assert exclusion_note(report) == ("    excluded, not counted: split calcium (claim rule): 2 lesions, Agatston 7.0; "
                                      "bone (skeletal check): 1 lesions, Agatston 20.0")
    assert exclusion_note({"excluded_lesions": []}) == ""
    assert "novel: 1 lesions" in exclusion_note({"excluded_lesions": [{"score": 1.0, "reason": "novel"}]})


def test_a_long_exclusion_note_wraps_instead_of_running_off_the_image() -> None:
    """Three reasons no longer fit one line of a one-panel image: the note wraps at its "; " and spaces,
    every line fits the width, nothing is dropped, and the header grows by the extra lines."""
    from PIL import ImageFont

    from cacstream.engine.report.key_image import _wrap, exclusion_note

    excluded = [{"score": 329.1, "reason": "partial_claim"}, {"score": 2.5, "reason": "skeletal"},
                {"score": 1.6, "reason": "juxta_skeletal"}]
    note = exclusion_note({"agatston_config": {"thickness_factor": 1.0}, "excluded_lesions": excluded}).strip()
    assert "beside bone (bone-distance rule): 1 lesions, Agatston 1.6" in note
    font = ImageFont.load_default(size=13)
    lines = _wrap(note, font, 400)
    assert len(lines) > 1 and all(font.getlength(line) <= 400 for line in lines)
    assert " ".join(lines).split() == note.split()
    assert _wrap("", font, 400) == []
    rep = _report()
    plain = Image.open(io.BytesIO(render_key_image(rep, {}, {}, [])))
    rep["excluded_lesions"] = [dict(x, slice_index=0) for x in excluded]
    noted = Image.open(io.BytesIO(render_key_image(rep, {}, {}, [])))
    assert noted.size[1] >= plain.size[1] + 17 * len(_wrap(note, font, noted.size[0] - 24))
