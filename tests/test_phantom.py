"""Tests of the phantom generator (cacstream.training.phantom): truth, geometry, DICOM, QA mode.

Small matrices (with a wider spacing range so the anatomy still fits) and short scan ranges keep
the whole file well under a minute; the expectations are computed independently in the tests
(scipy.ndimage Agatston reference, lattice-point bounds of a disc, plaque geometry).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from cacstream.engine.domain import ARTERIES
from cacstream.training.phantom import PhantomConfig, make_phantom, write_series
from cacstream.training.phantom.generate import plan_phantom, render_plan
from cacstream.training.phantom.plaques import CATEGORY_PROBS, draw_category

#: Small but anatomically complete: 96 px over the usual field of view, 36 mm around the plaques.
FAST = dict(matrix=96, pixel_spacing_range_mm=(0.3, 2.6), z_coverage_mm=36.0)


def small(**kw) -> PhantomConfig:
    return PhantomConfig(**{**FAST, **kw})


# ----------------------------------------------------------------------------------------------
# independent Agatston reference (scipy.ndimage), DESIGN.md convention
def reference_agatston(hu: np.ndarray, labels: np.ndarray, ps: tuple[float, float], thickness: float, increment: float):
    """Per-artery Agatston: 2D 8-connected lesions of (HU >= 130 and label > 0), area >= 1 mm²,
    weight from the peak (130/200/300/400), artery = majority label (ties: lowest), total × eff/3."""
    area_px = ps[0] * ps[1]
    factor = min(thickness, increment) / 3.0
    per = {a: 0.0 for a in ARTERIES}
    n_lesions = 0
    for k in range(hu.shape[0]):
        mask = (hu[k] >= 130) & (labels[k] > 0)
        lab, n = ndi.label(mask, structure=np.ones((3, 3)))
        for i in range(1, n + 1):
            comp = lab == i
            area = comp.sum() * area_px
            if area < 1.0:
                continue
            peak = hu[k][comp].max()
            w = 1 + (peak >= 200) + (peak >= 300) + (peak >= 400)
            counts = np.bincount(labels[k][comp], minlength=5)[1:]
            artery = ARTERIES[int(np.argmax(counts))]
            per[artery] += area * w * factor
            n_lesions += 1
    return per, n_lesions


@pytest.fixture(scope="module")
def burdened():
    """Three gated phantoms with heavy coronary calcium plus aortic and valve calcium forced on."""
    cfg = small(kind="cardiac_gated", calcium_category=">400", aortic_calcium_probability=1.0,
                valve_calcium_probability=1.0, z_coverage_mm=60.0)
    return [make_phantom(s, cfg) for s in (3, 11, 29)]


def test_deterministic_per_seed():
    cfg = small(kind="mixed", calcium_category="101-400")
    a, b = make_phantom(7, cfg), make_phantom(7, cfg)
    assert np.array_equal(a.hu, b.hu)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.other_calcium, b.other_calcium)
    assert json.dumps(a.truth, sort_keys=True) == json.dumps(b.truth, sort_keys=True)
    c = make_phantom(8, cfg)
    assert c.hu.shape != a.hu.shape or not np.array_equal(c.hu, a.hu)


def test_volume_types_and_quantisation(burdened):
    case = burdened[0]
    assert case.hu.dtype == np.float32 and case.labels.dtype == np.uint8 and case.other_calcium.dtype == bool
    assert case.hu.shape == case.labels.shape == case.other_calcium.shape
    assert case.hu.shape == (case.geometry.n_slices, case.geometry.rows, case.geometry.columns)
    assert np.array_equal(case.hu, np.rint(case.hu))
    assert case.hu.min() >= -1024 and case.hu.max() <= 3071
    assert set(np.unique(case.labels)) <= {0, 1, 2, 3, 4}


def _voxel_xyz(case, idx: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    x0, y0 = case.origin_xy_mm
    ps = case.geometry.pixel_spacing_mm[0]
    z = np.asarray(case.geometry.z_mm)[idx[0]]
    return np.stack([x0 + idx[2] * ps, y0 + idx[1] * ps, z], axis=1)


def _reach(case, plaque: dict) -> float:
    """How far from a plaque's centre its blurred footprint can extend (mm), derived from the
    plaque size, the PSF (3.5 σ), half the slice thickness and a pixel diagonal."""
    p = case.truth["protocol"]
    sigma = p["psf_fwhm_mm"] / 2.355
    return max(plaque["semi_axes_mm"]) + 3.5 * sigma + p["thickness_mm"] / 2 + math.sqrt(2) * p["pixel_spacing_mm"] + 0.5


def test_labels_only_on_coronary_calcium(burdened):
    for case in burdened:
        labelled = np.nonzero(case.labels)
        assert len(labelled[0]) > 0, "a >400 phantom must have labelled calcium"
        # (1) labels are calcium and never overlap the non-coronary mask
        assert (case.hu[labelled] >= 130).all()
        assert not (case.labels.astype(bool) & case.other_calcium).any()
        plaques = case.truth["plaques"]
        coronary = [p for p in plaques if p["kind"] == "coronary"]
        others = [p for p in plaques if p["kind"] != "coronary"]
        xyz = _voxel_xyz(case, labelled)
        lab = case.labels[labelled]
        # (2) every labelled voxel lies within the footprint of a plaque of the same artery
        near_own = np.zeros(len(lab), dtype=bool)
        for p in coronary:
            d = np.linalg.norm(xyz - np.array(p["center_mm"]), axis=1)
            near_own |= (d <= _reach(case, p)) & (lab == ARTERIES.index(p["artery"]) + 1)
        assert near_own.all()
        # (3) calcium around aortic / valve plaques, far from any coronary plaque, is 'other', never a label
        calc = np.nonzero(case.hu >= 130)
        cxyz = _voxel_xyz(case, calc)
        far_from_coronary = np.ones(len(cxyz), dtype=bool)
        for p in coronary:
            far_from_coronary &= np.linalg.norm(cxyz - np.array(p["center_mm"]), axis=1) > _reach(case, p)
        near_other = np.zeros(len(cxyz), dtype=bool)
        for p in others:
            near_other |= np.linalg.norm(cxyz - np.array(p["center_mm"]), axis=1) <= max(p["semi_axes_mm"]) * 0.5
        sel = far_from_coronary & near_other
        assert case.labels[tuple(v[sel] for v in calc)].max(initial=0) == 0
        assert case.other_calcium[tuple(v[sel] for v in calc)].all()
        # (4) dense bone (> 600 HU) away from every plaque is 'other', never a label
        bone = case.hu >= 600
        bidx = np.nonzero(bone)
        bxyz = _voxel_xyz(case, bidx)
        away = np.ones(len(bxyz), dtype=bool)
        for p in plaques:
            away &= np.linalg.norm(bxyz - np.array(p["center_mm"]), axis=1) > _reach(case, p)
        assert away.sum() > 0, "the phantom should contain bone"
        assert case.other_calcium[tuple(v[away] for v in bidx)].all()
        assert case.labels[tuple(v[away] for v in bidx)].max(initial=0) == 0


def test_truth_agatston_equals_scipy_reference(burdened):
    cases = burdened + [make_phantom(s, small(kind="chest", calcium_category=c)) for s, c in ((5, "11-100"), (6, "101-400"))]
    for case in cases:
        g = case.geometry
        ref, n = reference_agatston(case.hu, case.labels, g.pixel_spacing_mm, g.slice_thickness_mm, g.slice_increment_mm)
        truth = case.truth
        for a in ARTERIES:
            assert truth["agatston_per_artery"][a] == pytest.approx(ref[a], abs=1e-6), (case.seed, a)
        assert truth["agatston_total"] == pytest.approx(sum(ref.values()), abs=1e-6)
        assert len(truth["lesions"]) == n
        flagged = {les["slice_index"] for les in truth["lesions"] if les["artery"]}
        assert [i in flagged for i in range(g.n_slices)] == truth["slice_has_coronary_calcium"]


def test_zero_calcium_patients_score_zero():
    for seed in (1, 2, 3):
        case = make_phantom(seed, small(kind="mixed", calcium_category="0", aortic_calcium_probability=1.0))
        assert all(v == 0.0 for v in case.truth["agatston_per_artery"].values())
        assert case.truth["risk_category"] == "0"
        assert not case.labels.any()
        assert not any(case.truth["slice_has_coronary_calcium"])
        assert case.other_calcium.any()  # bone / aortic calcium is there, and not coronary


def test_zero_share_of_drawn_categories():
    rng = np.random.default_rng(0)
    cats = [draw_category(rng, None) for _ in range(4000)]
    share = cats.count("0") / len(cats)
    assert 0.14 <= share <= 0.20 and CATEGORY_PROBS["0"] == pytest.approx(0.17)
    assert set(cats) == set(CATEGORY_PROBS)


def test_spacing_and_thickness_within_ranges_over_many_seeds():
    seen_t, seen_ps, overlap = set(), [], 0
    for seed in range(45):
        plan = plan_phantom(seed, PhantomConfig(kind="mixed"), detail=False)
        p = plan.protocol
        assert 0.3 <= p.pixel_spacing_mm <= 0.8
        assert 1.5 <= p.thickness_mm <= 5.0
        assert 0 < p.increment_mm <= p.thickness_mm
        overlap += p.increment_mm < p.thickness_mm
        assert plan.grid.rows == plan.grid.cols == 512
        cover = plan.z_mm[-1] - plan.z_mm[0]
        assert (110 <= cover <= 190) if plan.kind == "cardiac_gated" else (200 <= cover <= 380), (seed, plan.kind, cover)
        assert p.manufacturer and p.model and p.kernel and p.kvp in (100.0, 120.0, 140.0)
        seen_t.add(p.thickness_mm)
        seen_ps.append(p.pixel_spacing_mm)
    assert len(seen_t) >= 3 and overlap >= 1
    assert min(seen_ps) < 0.45 and max(seen_ps) > 0.65  # gated small FOV and chest large FOV both occur


def test_written_dicom_reads_back_with_same_hu_and_geometry(tmp_path):
    from cacstream.engine.series import read_volume, scan_path

    case = make_phantom(4, small(kind="chest", calcium_category="11-100", increment_mm=2.0, thickness_mm=3.0))
    paths = write_series(case, tmp_path)
    assert len(paths) == case.geometry.n_slices
    folder = paths[0].parent
    truth = json.loads((folder / "truth.json").read_text())
    assert truth["agatston_per_artery"] == case.truth["agatston_per_artery"]
    masks = np.load(folder / "labels.npz")
    assert np.array_equal(masks["labels"], case.labels) and np.array_equal(masks["other_calcium"], case.other_calcium)
    scan = scan_path(folder)
    assert not scan.rejected and len(scan.series) == 1, (scan.rejected, scan.skipped)
    assert scan.series[0].uid == truth["series_instance_uid"]
    vol = read_volume(scan.series[0])
    g, h = vol.geometry, case.geometry
    assert np.array_equal(vol.hu, case.hu)
    assert (g.rows, g.columns) == (h.rows, h.columns)
    assert g.pixel_spacing_mm == pytest.approx(h.pixel_spacing_mm)
    assert g.slice_thickness_mm == pytest.approx(h.slice_thickness_mm)
    assert g.slice_increment_mm == pytest.approx(h.slice_increment_mm)
    assert g.z_mm == pytest.approx(h.z_mm, abs=1e-4)
    first = scan.series[0].first
    assert first.position_mm[:2] == pytest.approx(case.origin_xy_mm, abs=1e-4)
    assert first.acquisition.manufacturer == case.acquisition.manufacturer
    assert first.acquisition.convolution_kernel == case.acquisition.convolution_kernel


def test_calibration_ideal_areas_match_pi_r_squared():
    case = make_phantom(2, PhantomConfig(kind="calibration", ideal=True, matrix=256, thickness_mm=2.5))
    ps = case.geometry.pixel_spacing_mm[0]
    x0, y0 = case.origin_xy_mm
    z = np.asarray(case.geometry.z_mm)
    factor = min(case.geometry.slice_thickness_mm, case.geometry.slice_increment_mm) / 3.0
    expected_total = 0.0
    for ins in case.truth["inserts"]:
        r = ins["diameter_mm"] / 2
        cx, cy, _ = ins["center_mm"]
        zlo, zhi = ins["z_range_mm"]
        inside_z = np.flatnonzero((z >= zlo) & (z <= zhi))
        assert len(inside_z) >= 1 and list(inside_z) == ins["slices"]
        # disc pixels of this insert: the calcium in a window around its centre
        c0, r0 = int(round((cx - x0) / ps)), int(round((cy - y0) / ps))
        half = int(math.ceil(r / ps)) + 2
        for k in range(len(z)):
            win = case.hu[k, r0 - half:r0 + half + 1, c0 - half:c0 + half + 1]
            n = int((win >= 130).sum())
            if k not in inside_z:
                assert n == 0
                continue
            assert (win[win >= 130] == ins["density_hu"]).all()  # ideal: exact density, no partial volume
            area = n * ps * ps
            # lattice-point bound: the unit cells of the counted pixels lie within the disc of radius
            # r + s/√2 and cover the disc of radius r − s/√2
            assert math.pi * max(r - ps / math.sqrt(2), 0) ** 2 <= area <= math.pi * (r + ps / math.sqrt(2)) ** 2
            assert n == ins["ideal_pixel_count"]
            if area >= 1.0:
                w = 1 + (ins["density_hu"] >= 200) + (ins["density_hu"] >= 300) + (ins["density_hu"] >= 400)
                expected_total += area * w * factor
    # threshold mode over the whole slice scores exactly the inserts (water and shell stay below 130)
    assert case.truth["threshold_mode"]["agatston_total"] == pytest.approx(expected_total, abs=1e-9)
    assert not case.labels.any()


def test_calibration_realistic_mode_is_noisy_and_blurred():
    case = make_phantom(3, PhantomConfig(kind="calibration", matrix=128, thickness_mm=3.0))
    water = case.hu[:, 60:70, 5:15]
    assert abs(float(water.mean())) < 5 and 3 < float(water.std()) < 40
    ps = case.geometry.pixel_spacing_mm[0]
    x0, y0 = case.origin_xy_mm

    def peak(diameter: float, density: float) -> float:
        ins = [i for i in case.truth["inserts"] if i["diameter_mm"] == diameter and i["density_hu"] == density][0]
        cx, cy, _ = ins["center_mm"]
        c0, r0 = int(round((cx - x0) / ps)), int(round((cy - y0) / ps))
        return float(case.hu[:, r0 - 3:r0 + 4, c0 - 3:c0 + 4].max())

    assert 700 < peak(5.0, 800.0) < 900  # wide insert: its centre keeps the nominal density
    assert peak(1.0, 800.0) < 500  # 1 mm insert: partial volume + PSF pull the peak far down
    assert case.truth["threshold_mode"]["agatston_total"] > 0


def test_non_gated_motion_spreads_plaques():
    spread = {}
    for moving in (False, True):
        cfg = small(kind="chest", calcium_category=">400", motion=moving, z_coverage_mm=30.0,
                    aortic_calcium_probability=0.0, valve_calcium_probability=0.0)
        plan = plan_phantom(12, cfg)
        r = render_plan(plan)
        cor = (r.source_class >= 1) & (r.source_class <= 4)
        spread[moving] = (int(np.count_nonzero(cor & (r.source_hu >= 10.0))), float(r.source_hu[cor].max()))
    footprint_static, peak_static = spread[False]
    footprint_moving, peak_moving = spread[True]
    assert footprint_moving > 1.2 * footprint_static  # smeared over more voxels
    assert peak_moving < peak_static  # and diluted


def test_cli_writes_series_and_refuses_to_clobber(tmp_path):
    from cacstream.training.commands import phantom as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--series", "2", "--seed", "40", "--kind", "cardiac_gated", "--matrix", "64"])
    assert cmd.run(args) == 0
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [f.name for f in folders] == ["phantom_cardiac_gated_s000040", "phantom_cardiac_gated_s000041"]
    for f in folders:
        truth = json.loads((f / "truth.json").read_text())
        assert len(list(f.glob("*.dcm"))) == len(truth["geometry"]["z_mm"])
    assert cmd.run(args) == 2  # exists: refused without --overwrite


def test_cli_passes_the_realism_options_and_rejects_bad_ones(tmp_path, capsys):
    """The hard-negative / realism options reach the generator (recorded in truth.json, pixels differ from
    the default series of the same seed) and an out-of-range value is refused with its name."""
    from cacstream.training.commands import phantom as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    base = ["--series", "1", "--seed", "6", "--kind", "cardiac_gated", "--matrix", "64", "--calcium-category", "101-400"]
    assert cmd.run(parser.parse_args([str(tmp_path / "plain"), *base])) == 0
    assert cmd.run(parser.parse_args([str(tmp_path / "lean"), *base, "--lean-coronary-fat-probability", "1",
                                      "--cartilage-foci-probability", "1", "--aortic-calcium-probability", "1",
                                      "--aortic-part-weights", "1", "0", "0", "--valve-calcium-probability", "0.5"])) == 0
    (plain,), (lean,) = (list((tmp_path / k).glob("phantom_*")) for k in ("plain", "lean"))
    config = json.loads((lean / "truth.json").read_text())["config"]
    assert config["lean_coronary_fat_probability"] == 1.0 and config["cartilage_foci_probability"] == 1.0
    assert config["aortic_calcium_probability"] == 1.0 and config["aortic_part_weights"] == [1.0, 0.0, 0.0]
    assert config["valve_calcium_probability"] == 0.5
    assert json.loads((plain / "truth.json").read_text())["config"]["lean_coronary_fat_probability"] == 0.0
    a, b = (np.stack([pydicom.dcmread(f).pixel_array for f in sorted(d.glob("*.dcm"))]) for d in (plain, lean))
    assert a.shape == b.shape and not np.array_equal(a, b)
    capsys.readouterr()
    assert cmd.run(parser.parse_args([str(tmp_path / "bad"), *base, "--lean-coronary-fat-probability", "1.5"])) == 2
    assert "lean_coronary_fat_probability must be within 0..1" in capsys.readouterr().err
    assert cmd.run(parser.parse_args([str(tmp_path / "bad"), *base, "--aortic-part-weights", "0", "0", "0"])) == 2
    assert "aortic_part_weights" in capsys.readouterr().err


def test_label_definition_on_a_hand_made_case():
    """calcium_masks: a plaque blob is labelled, a noise spike on its faint fringe is not, the
    larger source wins a shared voxel, and dense non-coronary voxels go to other_calcium."""
    from cacstream.training.phantom.plaques import OTHER_CLASS
    from cacstream.training.phantom.truth import calcium_masks

    hu = np.zeros((1, 12, 12), np.float32)
    src = np.zeros_like(hu)
    cls = np.zeros(hu.shape, np.uint8)
    dense = np.zeros(hu.shape, bool)
    # LAD plaque: 2×2 blob at 300 HU with a 150 HU contribution, fringe of 15 HU around it
    cls[0, 1:7, 1:7], src[0, 1:7, 1:7] = 2, 15.0
    src[0, 3:5, 3:5], hu[0, 3:5, 3:5] = 150.0, 300.0
    hu[0, 1, 1] = 140.0  # noise spike in the fringe, not touching the blob: not calcium of the plaque
    hu[0, 5, 5] = 135.0  # touching the blob (8-connected): part of the plaque's blob
    # RCA plaque next to it wins the voxel it dominates
    cls[0, 3, 6], src[0, 3, 6], hu[0, 3, 6] = 4, 80.0, 200.0
    # bone far away, aortic calcium footprint
    dense[0, 10, 10], hu[0, 10, 10] = True, 700.0
    cls[0, 10, 1], src[0, 10, 1], hu[0, 10, 1] = OTHER_CLASS, 60.0, 250.0
    labels, other = calcium_masks(hu, src, cls, dense, 130.0, 10.0, 30.0)
    expected = np.zeros_like(labels)
    expected[0, 3:5, 3:5] = 2
    expected[0, 5, 5] = 2
    expected[0, 3, 6] = 4
    assert np.array_equal(labels, expected)
    assert other[0, 10, 10] and other[0, 10, 1] and other.sum() == 2


@pytest.mark.parametrize("seed,kind", [(6, "cardiac_gated"), (7, "chest")])
def test_cartilage_foci_are_small_non_coronary_calcium(seed: int, kind: str) -> None:
    """Patchy costal-cartilage calcium (``cartilage_foci_probability``) adds calcium that the truth marks
    as other calcium, never as coronary, leaves the coronary truth as it was, and forms 3D components of
    its own, far below the skeletal check's 2,000 mm³ (what COCA gated patient 0's chest wall shows)."""
    base = dict(kind=kind, matrix=256, pixel_spacing_range_mm=(0.3, 1.6), z_coverage_mm=150.0, thickness_mm=5.0)
    plain = make_phantom(seed, PhantomConfig(**base))
    foci = make_phantom(seed, PhantomConfig(**base, cartilage_foci_probability=1.0))
    assert np.array_equal(plain.labels, foci.labels)
    assert foci.truth["agatston_total"] == plain.truth["agatston_total"]
    new = (foci.hu >= 130) & (plain.hu < 130)
    assert new.sum() > 0
    assert foci.other_calcium[new].all() and not (foci.labels[new] > 0).any()
    assert ((foci.hu >= 130) | (plain.hu < 130)).all()  # foci only add dense matter
    lab, _ = ndi.label(foci.hu >= 130, structure=np.ones((3, 3, 3)))
    comps = np.unique(lab[new])
    # components that are mostly focus (a few noise voxels of the uncalcified cartilage may join them)
    own = [c for c in comps if c and new[lab == c].mean() >= 0.5]
    assert own, "no focus formed a component of its own"
    voxel_mm3 = float(np.prod(foci.geometry.pixel_spacing_mm)) * float(foci.geometry.slice_increment_mm)
    assert max(int((lab == c).sum()) for c in own) * voxel_mm3 < 2000.0


def test_cartilage_foci_probability_is_validated() -> None:
    with pytest.raises(ValueError, match="cartilage_foci_probability"):
        PhantomConfig(cartilage_foci_probability=1.5)


def _fat_around_coronary_calcium(case: object) -> float:
    """Share of fat (< -30 HU) in the tissue 1-3 mm around the phantom's coronary calcium, per slice
    (the ring ``scripts/lesion-features-probe.py --ring`` measures on model lesions and COCA ROIs)."""
    calc = case.hu >= 130
    fat = n = 0
    for z in np.flatnonzero((case.labels > 0).any(axis=(1, 2))):
        d = ndi.distance_transform_edt(~((case.labels[z] > 0) & calc[z]), sampling=case.geometry.pixel_spacing_mm)
        ring = (d > 1.0) & (d <= 3.0) & ~calc[z]
        fat += int((case.hu[z][ring] < -30).sum())
        n += int(ring.sum())
    return fat / n


@pytest.mark.parametrize("seed,kind", [(6, "cardiac_gated"), (7, "chest")])
def test_lean_coronary_sleeves_put_plaques_in_soft_tissue(seed: int, kind: str) -> None:
    """``lean_coronary_fat_probability`` 1 replaces every artery's 3.5 mm fat pad by a thin soft-tissue-like
    sleeve: the same plaques, now with far less fat around them (COCA's ROI plaques: 40 % in the median,
    default phantom plaques 89 %)."""
    base = dict(kind=kind, matrix=256, pixel_spacing_range_mm=(0.3, 1.6), z_coverage_mm=150.0, thickness_mm=3.0,
                calcium_category="101-400")
    plain = make_phantom(seed, PhantomConfig(**base))
    lean = make_phantom(seed, PhantomConfig(**base, lean_coronary_fat_probability=1.0))
    assert lean.truth["plaques"] == plain.truth["plaques"]
    assert (lean.labels > 0).sum() > 0
    before, after = _fat_around_coronary_calcium(plain), _fat_around_coronary_calcium(lean)
    assert before > 0.6 and after < before - 0.2, (before, after)


def test_no_lean_sleeves_draws_nothing() -> None:
    """Probability 0 (the default) draws nothing from the sleeve stream and paints the 3.5 mm fat pads, so
    every phantom made before the option existed is unchanged."""
    from cacstream.training.phantom.coronaries import FAT_PAD_HU, FAT_PAD_MARGIN_MM, artery_shapes, draw_pads
    from cacstream.training.phantom.generate import plan_phantom

    arteries = plan_phantom(6, PhantomConfig(), detail=False).patient.arteries
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    pads = draw_pads(rng, arteries, 0.0)
    assert rng.bit_generator.state == state
    assert all(not p.lean and p.hu == FAT_PAD_HU and np.all(p.margin_mm == FAT_PAD_MARGIN_MM) for p in pads.values())
    shipped = artery_shapes(arteries)
    assert [s.name for s in artery_shapes(arteries, pads)] == [s.name for s in shipped] == ["coronary_fat", "coronaries"]
    assert all(np.array_equal(a.segments, b.segments) for a, b in zip(artery_shapes(arteries, pads), shipped))
    lean = draw_pads(np.random.default_rng(0), arteries, 1.0)
    assert all(p.lean and p.hu > -92.0 and p.margin_mm.max() <= 3.5 for p in lean.values())
    assert [s.name for s in artery_shapes(arteries, lean)] == [f"coronary_sleeve_{n}" for n in arteries] + ["coronaries"]


def test_lean_coronary_fat_probability_is_validated() -> None:
    with pytest.raises(ValueError, match="lean_coronary_fat_probability"):
        PhantomConfig(lean_coronary_fat_probability=-0.1)


def _aortic_parts(seed: int, weights: tuple[float, float, float]) -> list[int]:
    """The aortic part (0 root / ascending, 1 arch, 2 descending) nearest to each aortic plaque's centre."""
    plan = plan_phantom(seed, PhantomConfig(kind="chest", aortic_calcium_probability=1.0, aortic_part_weights=weights),
                        detail=False)
    v = plan.patient.vessels
    return [int(v.aorta_part[np.linalg.norm(v.aorta - np.array(p.center), axis=1).argmin()])
            for p in plan.plaques if p.kind == "aortic"]


@pytest.mark.parametrize("part", [0, 1, 2])
def test_aortic_part_weights_place_the_wall_calcium(part: int) -> None:
    """All the odds on one part put every aortic plaque on that part's wall (a plaque's centre lies on
    the wall, so the nearest centreline point is of its own part, away from the joins)."""
    weights = tuple(1.0 if k == part else 0.0 for k in range(3))
    parts = [q for seed in (3, 4, 5, 6) for q in _aortic_parts(seed, weights)]
    assert len(parts) >= 4
    assert sum(q == part for q in parts) >= 0.9 * len(parts), parts


def test_default_aortic_part_weights_keep_every_phantom() -> None:
    """The default odds are those the generator always used: naming them changes no plaque."""
    a = plan_phantom(9, PhantomConfig(kind="chest", aortic_calcium_probability=1.0), detail=False)
    b = plan_phantom(9, PhantomConfig(kind="chest", aortic_calcium_probability=1.0,
                                      aortic_part_weights=(0.2, 0.35, 0.45)), detail=False)
    assert [p.center for p in a.plaques] == [p.center for p in b.plaques]
    assert PhantomConfig(aortic_part_weights=[1, 0, 0]).aortic_part_weights == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 0.0, 0.0), (-1.0, 1.0, 1.0)])
def test_aortic_part_weights_are_validated(weights: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="aortic_part_weights"):
        PhantomConfig(aortic_part_weights=weights)
