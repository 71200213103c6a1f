"""The candidate gate (engine/inference/candidates.py) against independent statements of its rule:
scipy's labeller for the components, a brute-force pixel→patch map, and hand-made slices whose
answer is known. Then the runtime: gated probabilities and flags equal the rule applied to the
served logits, and the gate never changes a score."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from cacstream.engine.inference.candidates import (
    CandidateRule,
    candidate_patches,
    candidate_pixels,
    candidate_reach,
    complete_components,
    gated_slice_logits,
    pool_to_patches,
    reach_diagonal,
)

RULE = CandidateRule()


def reference_pixels(hu: np.ndarray, pixel_area: float, rule: CandidateRule) -> np.ndarray:
    structure = np.ones((3, 3)) if rule.connectivity == 8 else None
    lab, n = ndi.label(hu >= rule.threshold_hu, structure=structure)
    out = np.zeros(hu.shape, bool)
    for k in range(1, n + 1):
        comp = lab == k
        if comp.sum() * pixel_area >= rule.min_area_mm2:
            out |= comp
    return out


def reference_patches(mask: np.ndarray, served: int, grid: int) -> np.ndarray:
    """Pixel by pixel: native pixel centre → served pixel (nearest) → patch of side served / grid."""
    h, w = mask.shape
    out = np.zeros((grid, grid), bool)
    for r, c in zip(*np.nonzero(mask)):
        sr = min(int((r + 0.5) * served / h), served - 1)
        sc = min(int((c + 0.5) * served / w), served - 1)
        out[sr // (served // grid), sc // (served // grid)] = True
    return out


@pytest.mark.parametrize("connectivity", [8, 4])
@pytest.mark.parametrize("seed", range(4))
def test_candidate_pixels_match_scipy(seed: int, connectivity: int) -> None:
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 60, (96, 80)).astype(np.float32)  # noise with many small clusters above 130
    hu[10:14, 20:23] = 400  # one 12-pixel lesion
    rule = CandidateRule(connectivity=connectivity)
    for area in (0.13, 0.5, 1.0):  # 8, 2 and 1 pixels make a candidate
        got = candidate_pixels(hu, area, rule)
        np.testing.assert_array_equal(got, reference_pixels(hu, area, rule))


def test_area_rule_is_the_scorers_at_the_boundary() -> None:
    hu = np.zeros((32, 32), np.int16)
    hu[5, 5:9] = 200  # 4 pixels
    assert candidate_pixels(hu, 0.25, RULE).sum() == 4  # 4 × 0.25 mm² = 1 mm²: counts
    assert candidate_pixels(hu, 0.2499, RULE).sum() == 0  # just below
    hu[5, 5:9] = 129  # below the threshold
    assert candidate_pixels(hu, 1.0, RULE).sum() == 0
    hu[5, 5] = 130  # exactly at it (HU >= 130 is calcium)
    assert candidate_pixels(hu, 1.0, RULE).sum() == 1


@pytest.mark.parametrize("native", [512, 384, 640, 333])
def test_patch_map_follows_the_regions_paste_back(native: int) -> None:
    rng = np.random.default_rng(native)
    mask = rng.random((native, native)) < 0.0005
    np.testing.assert_array_equal(pool_to_patches(mask, 512, 8), reference_patches(mask, 512, 8))


def test_lesion_across_a_patch_border_marks_both_patches() -> None:
    hu = np.full((512, 512), 30.0, np.float32)
    hu[100:104, 62:66] = 300  # 16 px across the border between patch columns 0 and 1 (64 px patches)
    cand = candidate_patches(hu, (0.4, 0.4), 512, 8, RULE)[0]
    assert cand.sum() == 2 and cand[1, 0] and cand[1, 1]
    # the same 16 pixels at 0.05 mm spacing cover 0.04 mm²: not a candidate
    assert not candidate_patches(hu, (0.05, 0.05), 512, 8, RULE).any()


def test_spacing_per_slice_and_errors() -> None:
    hu = np.full((2, 64, 64), 0.0, np.float32)
    hu[:, 10:12, 10:12] = 500  # 4 px
    got = candidate_patches(hu, [(0.5, 0.5), (0.4, 0.4)], 64, 4, RULE)  # 1.0 mm² vs 0.64 mm²
    assert got[0].sum() == 1 and got[1].sum() == 0
    with pytest.raises(ValueError, match="pixel spacing"):
        candidate_patches(hu, [(0.5, 0.5)], 64, 4, RULE)
    with pytest.raises(ValueError, match="pixel spacing"):
        candidate_patches(hu, (0.0, 0.5), 64, 4, RULE)
    with pytest.raises(ValueError, match="connectivity"):
        CandidateRule(connectivity=6)


def reference_reach(hu: np.ndarray, pixel_area: float, served: int, grid: int, rule: CandidateRule) -> np.ndarray:
    """(G², G²) from scipy's components and the pixel-by-pixel patch map."""
    structure = np.ones((3, 3)) if rule.connectivity == 8 else None
    lab, n = ndi.label(hu >= rule.threshold_hu, structure=structure)
    out = np.zeros((grid * grid, grid * grid), bool)
    for k in range(1, n + 1):
        comp = lab == k
        if comp.sum() * pixel_area >= rule.min_area_mm2:
            spans = reference_patches(comp, served, grid).ravel()
            out |= np.outer(spans, spans)
    return out


def test_reach_of_hand_drawn_components() -> None:
    """64² slice, 4×4 patches of 16 px: one lesion across the border of patches 0 and 1, one inside
    patch 10, a 2-pixel speck across the border of patches 5 and 6 (below 1 mm² at 0.25 mm²)."""
    hu = np.zeros((64, 64), np.float32)
    hu[4:8, 12:20] = 300  # patches (0, 0) and (0, 1)
    hu[40:44, 36:40] = 300  # patch (2, 2) = 10
    hu[20, 31:33] = 300  # 2 px = 0.5 mm²: not a candidate
    reach = candidate_reach(hu, (0.5, 0.5), 64, 4, RULE)[0]
    want = np.zeros((16, 16), bool)
    want[np.ix_([0, 1], [0, 1])] = True
    want[10, 10] = True
    np.testing.assert_array_equal(reach, want)
    np.testing.assert_array_equal(reach_diagonal(reach[None])[0], candidate_patches(hu, (0.5, 0.5), 64, 4, RULE)[0])


@pytest.mark.parametrize("seed", range(3))
def test_reach_matches_scipy_on_noise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 70, (2, 96, 80)).astype(np.float32)
    hu[0, 30:34, 10:70] = 500  # a long plaque through five patch columns
    got = candidate_reach(hu, (0.6, 0.5), 64, 4, RULE)
    for i in range(2):
        np.testing.assert_array_equal(got[i], reference_reach(hu[i], 0.3, 64, 4, RULE))
    np.testing.assert_array_equal(reach_diagonal(got), candidate_patches(hu, (0.6, 0.5), 64, 4, RULE))


def test_complete_components_grows_one_step() -> None:
    """Component A spans patches 0, 1; component B spans 1, 2; C lies in 3. Flagging 0 adds 1 (A) but
    not 2: B only touches a patch that was added, and no flagged patch holds any of it."""
    reach = np.zeros((1, 4, 4), bool)
    for spans in ([0, 1], [1, 2], [3]):
        reach[0][np.ix_(spans, spans)] = True
    flags = np.array([[[True, False], [False, False]]])
    np.testing.assert_array_equal(complete_components(flags, reach), [[[True, True], [False, False]]])
    flags = np.array([[[False, True], [False, False]]])  # patch 1 holds pieces of A and B
    np.testing.assert_array_equal(complete_components(flags, reach), [[[True, True], [True, False]]])
    none = np.zeros((1, 2, 2), bool)
    assert not complete_components(none, reach).any()


def test_gated_slice_logits() -> None:
    patches = np.array([[[3.0, -1.0], [0.5, 2.0]], [[1.0, 1.0], [1.0, 1.0]]])
    cand = np.array([[[False, True], [True, False]], [[False, False], [False, False]]])
    got = gated_slice_logits(patches, cand)
    assert got[0] == 0.5 and got[1] == -np.inf  # the best candidate patch; none: never flagged


def test_rule_from_agatston_config_and_round_trip() -> None:
    from cacstream.engine.config import AgatstonConfig

    rule = CandidateRule.from_agatston(AgatstonConfig(threshold_hu=120.0, min_area_mm2=0.5, connectivity=4))
    assert rule == CandidateRule(120.0, 0.5, 4) == CandidateRule.from_dict(rule.to_dict())


# ------------------------------------------------------------------------------------ the runtime


@pytest.fixture(scope="module")
def gated_and_plain(tmp_path_factory: pytest.TempPathFactory):
    from _tiny_weights import tiny_weights_dir
    from cacstream.engine.inference.regions import RegionConfig
    from cacstream.engine.inference.runtime import CalciumModels

    weights = tiny_weights_dir(tmp_path_factory)
    regions = RegionConfig(mode="patches", core_patches=1, halo_px=8)
    load = dict(backend="onnxruntime", batch_size=4, threads=1, regions=regions)
    return (CalciumModels.load(weights, candidate_gate=True, **load), CalciumModels.load(weights, **load), weights)


@pytest.fixture(scope="module")
def gated_completing(gated_and_plain):
    """The gated models with region mode ``components`` (regions grow to whole components)."""
    from cacstream.engine.inference.regions import RegionConfig
    from cacstream.engine.inference.runtime import CalciumModels

    weights = gated_and_plain[2]
    return CalciumModels.load(weights, backend="onnxruntime", batch_size=4, threads=1, candidate_gate=True,
                              regions=RegionConfig(mode="components", core_patches=1, halo_px=8))


@pytest.fixture(scope="module")
def calcified_hu() -> tuple[np.ndarray, tuple[float, float]]:
    from _tiny_weights import MATRIX
    from cacstream.training.phantom import PhantomConfig, make_phantom

    case = make_phantom(9402, PhantomConfig(matrix=MATRIX, z_coverage_mm=24.0, calcium_category=">400"))
    return case.hu, case.geometry.pixel_spacing_mm


def test_gated_decisions_are_the_rule_applied_to_the_served_logits(gated_and_plain, calcified_hu) -> None:
    from cacstream.engine.inference.runtime import sigmoid

    gated, plain, _ = gated_and_plain
    hu, spacing = calcified_hu
    assert plain.candidate_rule is None and gated.candidate_rule == RULE  # tiny weights record no gate
    with pytest.raises(ValueError, match="pixel spacing"):
        gated.filter_decisions(hu)
    raw = gated._filter_result(hu)[0]
    g = gated.patch_grid
    assert g == 2
    cand = np.stack([reference_patches(reference_pixels(h, spacing[0] * spacing[1], RULE), hu.shape[1], g)
                     for h in hu])
    assert cand.any() and not cand.all()  # the case exercises both sides of the gate
    patches = raw[:, 1:].reshape(-1, g, g)
    want_logit = np.array([patches[i][cand[i]].max() if cand[i].any() else -np.inf for i in range(len(hu))])
    p, flags = gated.filter_decisions(hu, spacing)
    np.testing.assert_allclose(p, sigmoid(want_logit), atol=1e-12)
    want = (sigmoid(patches) >= gated.filter_threshold) & cand
    flagged = p >= gated.filter_threshold
    for i in np.nonzero(flagged & ~want.any(axis=(1, 2)))[0]:  # rounding guard: top candidate patch
        want[i].flat[int(np.argmax(np.where(cand[i], patches[i], -np.inf)))] = True
    assert flags is not None and np.array_equal(flags, want)
    # the ungated decision is the plain maximum; the gate only ever removes
    p0, flags0 = plain.filter_decisions(hu)
    assert np.all(p <= p0 + 1e-12) and not np.any(flags & ~flags0)
    assert "gated by calcium candidates (>= 130 HU, >= 1 mm²" in gated.info.segment_regions


def test_regions_grow_to_the_whole_components_of_flagged_patches(gated_and_plain, gated_completing,
                                                                 calcified_hu) -> None:
    """Mode ``components``: the decisions are mode ``patches``' and the regions are those flags plus every
    patch of a (scipy-labelled) candidate component with a pixel in a flagged patch. The filter's
    logits are drawn at random (the tiny filter flags all or nothing), so flags fall on both sides."""
    cores, _, _ = gated_and_plain
    hu, spacing = calcified_hu
    hu = hu.copy()
    half = hu.shape[2] // 2
    hu[::2, 6:9, half - 8:half + 8] = 450.0  # plaques across the patch border in every other slice
    g = gated_completing.patch_grid
    raw = np.random.default_rng(3).normal(-2.5, 2.0, (len(hu), 1 + g * g)).astype(np.float32)
    p0, flags0 = cores.decide(raw, hu, spacing)
    p, regions = gated_completing.decide(raw, hu, spacing)
    assert gated_completing.completes_components and not cores.completes_components
    np.testing.assert_array_equal(p, p0)
    grew = 0
    for i in range(len(hu)):
        want = flags0[i].copy()
        lab, n = ndi.label(hu[i] >= 130.0, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            comp = lab == k
            if comp.sum() * spacing[0] * spacing[1] >= 1.0:
                spans = reference_patches(comp, hu.shape[1], g)
                if (spans & flags0[i]).any():
                    want |= spans
        np.testing.assert_array_equal(regions[i], want)
        grew += int((want & ~flags0[i]).sum())
    assert grew > 0 and flags0.any() and not flags0.all()


def test_a_plaque_across_a_core_border_is_segmented_whole(gated_and_plain, gated_completing) -> None:
    """A plaque from patch (0, 0) into (0, 1), the filter flagging (0, 0) only: mode ``patches`` segments
    the first core alone, mode ``components`` both; a calcium speck alone in (1, 1) is left out by both."""
    from _tiny_weights import MATRIX

    cores, _, _ = gated_and_plain
    hu = np.full((1, MATRIX, MATRIX), 40.0, np.float32)
    half = MATRIX // 2
    hu[0, 10:14, half - 6:half + 6] = 400.0
    hu[0, half + 10:half + 14, half + 10:half + 14] = 400.0
    raw = np.full((1, 5), -8.0, np.float32)
    raw[0, 1] = 8.0  # patch (0, 0)
    spacing = (0.7, 0.7)
    _, flags = cores.decide(raw, hu, spacing)
    _, regions = gated_completing.decide(raw, hu, spacing)
    np.testing.assert_array_equal(flags[0], [[True, False], [False, False]])
    np.testing.assert_array_equal(regions[0], [[True, True], [False, False]])
    labels = gated_completing.segment(hu, regions)
    assert not labels[0, half:, :].any()  # nothing below the segmented cores


def test_pipeline_stages_pass_each_slices_spacing(gated_and_plain, calcified_hu) -> None:
    from cacstream.engine.pipeline.models import ModelStages

    gated, _, _ = gated_and_plain
    hu, spacing = calcified_hu
    slices = list(hu[:6])
    coarse = (spacing[0] * 3, spacing[1] * 3)  # 9x the pixel area: more components reach 1 mm²
    spacings = [spacing, coarse] * 3
    probs, regions = ModelStages(gated).filter(slices, spacings)
    for i in range(6):
        p, f = gated.filter_decisions(hu[i:i + 1], spacings[i])
        assert probs[i] == pytest.approx(float(p[0]), abs=1e-12) and np.array_equal(regions[i], f[0])


def test_gate_recorded_in_config_is_on_by_default_and_can_be_turned_off(gated_and_plain, tmp_path) -> None:
    import json
    import shutil

    from cacstream.engine.inference.runtime import CalciumModels

    _, _, weights = gated_and_plain
    copy = tmp_path / "gated-weights"
    shutil.copytree(weights, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["slice_filter"]["candidate_gate"] = {"threshold_hu": 130.0, "min_area_mm2": 0.5, "connectivity": 4}
    (copy / "config.json").write_text(json.dumps(cfg))
    m = CalciumModels.load(copy, backend="onnxruntime", batch_size=4, threads=1)
    assert m.candidate_rule == CandidateRule(130.0, 0.5, 4)
    scoring = CandidateRule(120.0, 1.0, 8)  # the scoring config's rule replaces the recorded one
    assert CalciumModels.load(copy, backend="onnxruntime", threads=1, candidate_rule=scoring).candidate_rule == scoring
    assert CalciumModels.load(copy, backend="onnxruntime", threads=1, candidate_gate=False).candidate_rule is None


def test_mixed_sizes_in_one_call(gated_and_plain, calcified_hu) -> None:
    """A list of slices of different sizes, each with its own spacing, as filter_probabilities takes."""
    gated, _, _ = gated_and_plain
    hu, spacing = calcified_hu
    small = np.ascontiguousarray(hu[3][::2, ::2])  # 32² at twice the spacing
    coarse = (spacing[0] * 2, spacing[1] * 2)
    p = gated.filter_probabilities([hu[0], small, hu[1]], [spacing, coarse, spacing])
    assert p[0] == gated.filter_probabilities(hu[0:1], spacing)[0]
    assert p[1] == gated.filter_probabilities(small[None], coarse)[0]
    with pytest.raises(ValueError, match="2 pixel spacings for 3 slices"):
        gated.filter_probabilities([hu[0], small, hu[1]], [spacing, coarse])
