"""The skeletal gate (engine/pipeline/skeletal_gate.py, ``CalciumModels.skeletal_exclusion``) against
independent statements of its rule: scipy's 26-connected labelling for the bone-sized calcium, hand-made
slices for the withdrawn candidates, and, with the shipped weights on a phantom, the filter's own patch
probabilities for which slices stay flagged. Then the stream: slice-by-slice scoring with the decision
taken again at completion equals the whole-series path, slice for slice."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from cacstream.engine.inference.candidates import (
    CandidateRule,
    candidate_patches,
    candidate_pixels,
    candidate_reach,
    reach_diagonal,
    skeletal_calcium,
    sparse_candidate_patches,
)


def reference_skeletal(hu: np.ndarray, voxel_mm3: float, limit_mm3: float) -> np.ndarray:
    lab, _ = ndi.label(hu >= 130.0, structure=np.ones((3, 3, 3)))
    size = np.bincount(lab.ravel()) * voxel_mm3
    size[0] = 0.0
    return size[lab] > limit_mm3


@pytest.mark.parametrize("seed", range(3))
def test_skeletal_calcium_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hu = np.where(rng.random((9, 40, 40)) < 0.3, 400.0, 0.0).astype(np.float32)
    hu = ndi.uniform_filter(hu, 3)  # blobs of every size, joined across slices
    for limit in (5.0, 40.0, 400.0):
        got = skeletal_calcium(hu, 0.5, limit)
        want = reference_skeletal(hu, 0.5, limit)
        np.testing.assert_array_equal(got, want)
    assert reference_skeletal(hu, 0.5, 40.0).any() and not reference_skeletal(hu, 0.5, 40.0).all()


def test_an_excluded_component_is_no_candidate_anywhere() -> None:
    """One pixel of a component in ``exclude`` withdraws the whole component (a 2D component lies in one
    3D component, so a skeletal mask covers all of it or none); the other components are untouched."""
    hu = np.zeros((2, 16, 16), np.float32)
    hu[:, 1:4, 1:4] = 500.0      # top-left: "bone"
    hu[:, 10:13, 10:13] = 300.0  # bottom-right: a plaque
    exclude = np.zeros(hu.shape, bool)
    exclude[0, 2, 2] = True
    rule = CandidateRule()
    px = candidate_pixels(hu[0], 1.0, rule, exclude[0])
    assert not px[1:4, 1:4].any() and px[10:13, 10:13].all()
    assert candidate_pixels(hu[1], 1.0, rule, exclude[1])[1:4, 1:4].all()
    patches = candidate_patches(hu, (1.0, 1.0), 16, 2, rule, exclude)
    np.testing.assert_array_equal(patches[0], [[False, False], [False, True]])
    np.testing.assert_array_equal(patches[1], [[True, False], [False, True]])
    np.testing.assert_array_equal(reach_diagonal(candidate_reach(hu, (1.0, 1.0), 16, 2, rule, exclude)), patches)
    with pytest.raises(ValueError, match="exclusion masks of shape"):
        candidate_patches(hu, (1.0, 1.0), 16, 2, rule, exclude[:1, :8])


@pytest.mark.parametrize("seed", range(6))
def test_candidates_from_the_kept_components_equal_the_labelled_ones(seed: int) -> None:
    """Completion decides from each slice's kept sparse components instead of labelling it again: the
    same candidate patches as :func:`candidate_patches` on the slice, with and without an exclusion."""
    from cacstream.engine.scoring.skeleton import slice_components

    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(20, 70)), int(rng.integers(20, 70))
    hu = np.where(ndi.uniform_filter(rng.random((rows, cols)), 3) > 0.6, 400.0, 0.0).astype(np.float32)
    exclude = ndi.binary_dilation(rng.random((rows, cols)) < 0.01, iterations=3) & (hu >= 130)
    area = float(rng.uniform(0.1, 0.8))
    rule = CandidateRule(min_area_mm2=float(rng.choice([0.0, 1.0, 3.0])))
    idx, lab, n = slice_components(hu >= 130)
    for ex in (None, exclude):
        want = candidate_patches(hu, (area, 1.0), 64, 4, rule, ex)[0]
        got = sparse_candidate_patches(idx, lab, n, (rows, cols), area, rule, 64, 4, ex)
        np.testing.assert_array_equal(got, want)
    assert not sparse_candidate_patches(idx[:0], lab[:0], 0, (rows, cols), area, rule, 64, 4).any()


# ------------------------------------------------------------------ the shipped weights on a phantom

LIMIT = 2000.0


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory):
    """A chest phantom written as DICOM and read back (what the pipeline reads), 10 slices of 3 mm."""
    from cacstream.engine.series import read_volume, scan_path
    from cacstream.training.phantom import PhantomConfig, make_phantom, write_series

    case = make_phantom(9720, PhantomConfig(kind="chest", calcium_category="11-100", z_coverage_mm=30.0,
                                            thickness_mm=3.0))
    root = tmp_path_factory.mktemp("chest")
    write_series(case, root / "s", folder="chest")
    (series,) = scan_path(root / "s").series
    return series, read_volume(series).hu


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module):
    from cacstream.engine.inference.runtime import CalciumModels
    from cacstream.engine.weights_location import packaged_weights_dir

    monkeypatch_module.setenv("CACSTREAM_ENGINES", str(tmp_path_factory.mktemp("engines")))
    from cacstream.engine.inference.regions import RegionConfig

    w = packaged_weights_dir()
    load = dict(backend="onnxruntime", threads=1, batch_size=8)
    # the third: regions grown to whole components, which completion decides with the dense path
    return (CalciumModels.load(w, skeletal_gate_mm3=LIMIT, **load), CalciumModels.load(w, **load),
            CalciumModels.load(w, skeletal_gate_mm3=LIMIT, regions=RegionConfig(mode="components"), **load))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_a_limit_that_is_not_positive_is_refused_before_loading() -> None:
    from cacstream.engine.inference.runtime import CalciumModels

    for bad in (0.0, -5.0):
        with pytest.raises(ValueError, match="skeletal_gate_mm3 must be > 0"):
            CalciumModels.load("/nonexistent-weights", skeletal_gate_mm3=bad)


def test_slices_flagged_only_by_bone_are_not_flagged(chest, models) -> None:
    """Independent of the engine: scipy's 2D candidates minus scipy's bone-sized 3D components, and the
    filter's patch probabilities over each candidate's patches. A slice stays flagged exactly when a
    candidate outside the bone reaches the threshold."""
    from cacstream.engine.inference.runtime import sigmoid

    series, hu = chest
    gated, plain, _ = models
    g = series.geometry
    assert gated.skeletal_gate and not plain.skeletal_gate
    exclude = gated.skeletal_exclusion(hu, g)
    bone = reference_skeletal(hu, g.voxel_volume_mm3, LIMIT)
    np.testing.assert_array_equal(exclude, bone)
    p_gate, regions = gated.filter_decisions(hu, g.pixel_spacing_mm, exclude)
    p_plain, _ = plain.filter_decisions(hu, g.pixel_spacing_mm)
    thr = gated.filter_threshold
    raw = gated.filter_output(hu)
    grid = gated.patch_grid
    patch_p = sigmoid(raw[:, 1:]).reshape(-1, grid, grid)
    side = hu.shape[1] // grid
    want = np.zeros(len(hu), bool)
    for z in range(len(hu)):
        lab, n = ndi.label(hu[z] >= 130.0, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            comp = lab == k
            if comp.sum() * g.pixel_area_mm2 < 1.0 or (comp & bone[z]).any():
                continue
            ys, xs = np.nonzero(comp)
            if patch_p[z][ys // side, xs // side].max() >= thr:
                want[z] = True
    np.testing.assert_array_equal(p_gate >= thr, want)
    unflagged = (p_plain >= thr) & ~want
    assert unflagged.sum() >= 2, "the phantom should hold slices flagged only by bone"
    assert not np.any((p_gate >= thr) & (p_plain < thr))  # the gate only ever withdraws
    for z in np.nonzero(p_gate >= thr)[0]:
        assert regions[z].any()
    # completion's shortcut (the kept sparse components instead of labelling again) decides the same
    from cacstream.engine.scoring.skeleton import slice_components

    for z in range(len(hu)):
        quick = gated.decide_from_components(raw[z:z + 1], slice_components(hu[z] >= 130.0), hu.shape[1:],
                                             g.pixel_spacing_mm, exclude[z], 130.0)
        assert quick is not None
        assert quick[0][0] == pytest.approx(p_gate[z], abs=1e-12) and np.array_equal(quick[1][0], regions[z])
    assert gated.decide_from_components(raw[:1], slice_components(hu[0] >= 130.0), hu.shape[1:],
                                        g.pixel_spacing_mm, exclude[0], 120.0) is None  # another rule: decide()


def test_stream_decides_again_at_completion_as_the_whole_series_path(chest, models) -> None:
    """`score` / `watch` score slices as they land (the per-slice gate), then completion applies the
    skeletal gate: flags, lesions and scores equal the whole-series path's; without the gate they
    equal the whole-series path without it; and so with regions grown to whole components."""
    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.pipeline.models import ModelStages
    from cacstream.engine.pipeline.runner import PipelineConfig
    from cacstream.engine.pipeline.scorer import score_series
    from cacstream.engine.scoring.cardiac_window import cardiac_levels_of_volume

    series, hu = chest
    cfg = AgatstonConfig()
    flagged = {}
    for name, m in zip(("gated", "plain", "gated, components"), models):
        ref = run_engine_path(m, hu, series.geometry, cfg)
        got = score_series(series, cfg, models=ModelStages(m), config=PipelineConfig(batch_size=4))
        res = got.scored.result
        assert got.scored.slices_flagged == int(ref.flags.sum())
        assert res.agatston_total == pytest.approx(ref.agatston_total, abs=1e-9)
        assert res.agatston_per_artery == pytest.approx(ref.agatston_per_artery, abs=1e-9)
        reasons: dict[str, int] = {}
        for _, why in res.excluded_lesions:
            reasons[why] = reasons.get(why, 0) + 1
        assert reasons == ref.excluded_by_reason  # what the U-Net labelled in withdrawn cores is gone too
        scored = np.zeros(hu.shape, np.uint8)
        for z, lm in got.label_maps.items():
            scored[z] = lm
        want = np.where(hu >= cfg.threshold_hu, ref.labels, 0)
        np.testing.assert_array_equal(scored, want)
        # slices scored again at completion keep the lungs they showed as they landed (cardiac levels)
        assert res.config["cardiac_levels_found"] == cardiac_levels_of_volume(hu, series.geometry).to_dict()
        assert res.config["cardiac_levels_found"]["lung_cm3"] > 100
        flagged[name] = got.scored.slices_flagged
    assert flagged["gated"] < flagged["plain"] and flagged["gated, components"] == flagged["gated"]
    assert models[2].completes_components and models[2].decide_from_components(
        np.zeros((1, 65), np.float32), (np.zeros(0, np.int32), np.zeros(0, np.int32), 0), hu.shape[1:],
        series.geometry.pixel_spacing_mm, None, 130.0) is None  # the dense path decides it
