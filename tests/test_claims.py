"""The claim rule (engine/scoring/claims.py): hand-drawn slices with known components and shares."""

from __future__ import annotations

import numpy as np
import pytest

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.scoring.agatston import score_volume, scored_labels
from cacstream.engine.scoring.claims import CLAIM_REASON, split_partial_claims, split_partial_claims_volume
from cacstream.engine.series.types import Geometry


def _slice() -> tuple[np.ndarray, np.ndarray]:
    """Three calcium components on a 12×12 slice (300 HU, background 40 HU):
    A: rows 1-2, cols 1-5 (10 px), all labelled LAD (share 1.0);
    B: rows 5-6, cols 1-5 (10 px), 5 labelled LM (share 0.5);
    C: rows 9-10, cols 1-4 (8 px), 6 labelled RCA (share 0.75, exactly the default)."""
    hu = np.full((12, 12), 40.0, np.float32)
    lab = np.zeros((12, 12), np.uint8)
    hu[1:3, 1:6] = 300
    lab[1:3, 1:6] = 2
    hu[5:7, 1:6] = 300
    lab[5, 1:6] = 1
    hu[9:11, 1:5] = 300
    lab[9, 1:5] = 4
    lab[10, 1:3] = 4
    return hu, lab


def test_partly_claimed_component_moves_to_the_dropped_map() -> None:
    hu, lab = _slice()
    kept, dropped = split_partial_claims(hu, lab, 130.0, 8, 0.75)
    assert dropped is not None
    expect_kept = lab.copy()
    expect_kept[5, 1:6] = 0  # B (0.5 < 0.75) leaves; A (1.0) and C (0.75, not below) stay
    np.testing.assert_array_equal(kept, expect_kept)
    expect_dropped = np.zeros_like(lab)
    expect_dropped[5, 1:6] = 1
    np.testing.assert_array_equal(dropped, expect_dropped)
    # a share of 1.0 wants all of it: C goes too; 0.5 keeps B (not below)
    kept1, _ = split_partial_claims(hu, lab, 130.0, 8, 1.0)
    assert kept1[9:11].sum() == 0 and kept1[5].sum() == 0 and kept1[1:3].sum() == 2 * 10
    _, none = split_partial_claims(hu, lab, 130.0, 8, 0.5)
    assert none is None


def test_labels_below_the_threshold_and_unlabelled_components_are_left_alone() -> None:
    hu, lab = _slice()
    lab[0, 8] = 3  # labelled soft tissue: below 130 HU, never scores, not part of any component
    hu[5:7, 8:11] = 500  # a component nobody claimed
    kept, dropped = split_partial_claims(hu, lab, 130.0, 8, 0.75)
    assert kept[0, 8] == 3 and dropped is not None and dropped[0, 8] == 0
    assert kept[5:7, 8:11].sum() == 0 and dropped[5:7, 8:11].sum() == 0


def test_connectivity_decides_what_one_component_is() -> None:
    """Two 2×2 blocks touching at a corner: one component with 8-connectivity (half claimed: dropped),
    two with 4-connectivity (the claimed one whole: kept)."""
    hu = np.zeros((6, 6), np.float32)
    hu[0:2, 0:2] = 250
    hu[2:4, 2:4] = 250
    lab = np.zeros((6, 6), np.uint8)
    lab[0:2, 0:2] = 2
    k8, d8 = split_partial_claims(hu, lab, 130.0, 8, 0.75)
    k4, d4 = split_partial_claims(hu, lab, 130.0, 4, 0.75)
    assert k8.sum() == 0 and d8 is not None and d8.sum() == 4 * 2
    assert d4 is None and (k4 == lab).all()


def test_no_labels_and_bad_share() -> None:
    hu, lab = _slice()
    kept, dropped = split_partial_claims(hu, np.zeros_like(lab), 130.0, 8, 0.75)
    assert dropped is None and kept.sum() == 0
    with pytest.raises(ValueError, match="min_share"):
        split_partial_claims(hu, lab, 130.0, 8, 0.0)
    with pytest.raises(ValueError, match="shape"):
        split_partial_claims(hu, lab[:5], 130.0, 8, 0.75)
    with pytest.raises(ValueError, match="min_claimed_share"):
        AgatstonConfig(min_claimed_share=1.5)


def _geometry(n: int, side: int, spacing: float = 0.5, thickness: float = 3.0) -> Geometry:
    return Geometry(rows=side, columns=side, pixel_spacing_mm=(spacing, spacing),
                    slice_thickness_mm=thickness, slice_increment_mm=thickness, normal=(0.0, 0.0, 1.0),
                    z_mm=tuple(float(i) * thickness for i in range(n)))


def test_score_volume_excludes_and_lists_partly_claimed_lesions() -> None:
    """Hand computed: pixel area 0.25 mm², 3 mm slices (factor 1), all 300 HU (weight 3).
    A: 10 px → 2.5 mm² → 7.5; C: 8 px, 6 claimed → 1.5 mm² → 4.5 (kept: the rule never adds
    unclaimed pixels); B's claimed 5 px → 1.25 mm² → 3.75 is excluded with the reason."""
    hu, lab = _slice()
    vol_hu, vol_lab = np.stack([hu, hu]), np.stack([lab, np.zeros_like(lab)])
    g = _geometry(2, 12)
    res = score_volume(vol_hu, g, vol_lab, AgatstonConfig())
    assert res.agatston_total == pytest.approx(7.5 + 4.5)
    assert res.agatston_per_artery["LAD"] == pytest.approx(7.5) and res.agatston_per_artery["RCA"] == pytest.approx(4.5)
    assert res.agatston_per_artery["LM"] == 0.0
    (les, why), = res.excluded_lesions
    assert why == CLAIM_REASON and les.artery == "LM" and les.n_pixels == 5 and les.score == pytest.approx(3.75)
    off = score_volume(vol_hu, g, vol_lab, AgatstonConfig(min_claimed_share=None))
    assert off.agatston_total == pytest.approx(7.5 + 4.5 + 3.75) and not off.excluded_lesions
    assert AgatstonConfig().for_reference_labels().min_claimed_share is None
    counted = scored_labels(vol_hu, g, vol_lab, AgatstonConfig())
    assert counted[0, 5].sum() == 0 and counted[0, 1:3].sum() == 20


def test_volume_split_leaves_its_input_alone_and_only_touches_labelled_slices() -> None:
    hu, lab = _slice()
    vol_hu = np.stack([hu, hu, hu])
    vol_lab = np.stack([np.zeros_like(lab), lab, lab])
    before = vol_lab.copy()
    kept, dropped = split_partial_claims_volume(vol_hu, vol_lab, 130.0, 8, 0.75)
    np.testing.assert_array_equal(vol_lab, before)
    assert dropped is not None and dropped[0].sum() == 0 and dropped[1, 5].sum() == 5 and dropped[2, 5].sum() == 5
    full = np.stack([np.zeros_like(lab), np.where(lab == 2, 2, 0).astype(np.uint8)])
    same, none = split_partial_claims_volume(vol_hu[:2], full, 130.0, 8, 0.75)
    assert none is None and same is full


def test_every_coca_roi_claims_its_whole_calcium_component(coca_root) -> None:
    """The rule's premise on real scans: the experts' coronary ROIs of the COCA gated samples each cover
    whole 2D calcium components (30 of 30 at 130 HU), so a segmenter that drew them would lose nothing
    to the claim rule, even at a share of 1.0."""
    from cacstream.training.data.coca import list_gated_patients, load_gated_patient

    seen = 0
    for pid in list_gated_patients(coca_root):
        case = load_gated_patient(coca_root, pid)
        hu, labels = case.volume.hu, case.labels
        kept, dropped = split_partial_claims_volume(hu, labels, 130.0, 8, 1.0)
        assert dropped is None, f"gated patient {pid}: an ROI covers part of a calcium component"
        res = score_volume(hu, case.volume.geometry, labels, AgatstonConfig(min_claimed_share=1.0))
        ref = score_volume(hu, case.volume.geometry, labels, AgatstonConfig().for_reference_labels())
        assert res.agatston_total == ref.agatston_total and not [w for _, w in res.excluded_lesions if w == CLAIM_REASON]
        seen += len(ref.lesions)
    assert seen >= 20
