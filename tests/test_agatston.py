"""Agatston / volume / mass scoring (engine/scoring/agatston.py) against an independent reference.

The reference below is written from DESIGN.md's rules with scipy.ndimage.label and numpy, one lesion
at a time, and the comparison is lesion by lesion (same slice, pixel count, peak, weight, artery;
areas and scores to 1e-9 relative), on hypothesis-generated random and adversarial volumes and on
hand-computed cases.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.domain import ARTERIES
from cacstream.engine.scoring import agatston
from cacstream.engine.series.types import Geometry

REL = 1e-9
ARTERY_OF = {1: "LM", 2: "LAD", 3: "LCX", 4: "RCA"}


def geometry(shape, spacing=(0.5, 0.5), thickness=3.0, increment=3.0, z0=-100.0) -> Geometry:
    n, rows, cols = shape
    return Geometry(rows=rows, columns=cols, pixel_spacing_mm=spacing, slice_thickness_mm=thickness,
                    slice_increment_mm=increment, normal=(0.0, 0.0, 1.0),
                    z_mm=tuple(z0 + increment * i for i in range(n)))


# ------------------------------------------------------------------------------------------------
# Independent reference: DESIGN.md rules, scipy labelling, one lesion at a time.


def ref_weight(peak: float, t: tuple[float, float, float, float]) -> int:
    if peak >= t[3]:
        return 4
    if peak >= t[2]:
        return 3
    if peak >= t[1]:
        return 2
    return 1


def reference(hu, labels, geo: Geometry, cfg: AgatstonConfig):
    struct = ndimage.generate_binary_structure(2, 2 if cfg.connectivity == 8 else 1)
    pixel_area = geo.pixel_spacing_mm[0] * geo.pixel_spacing_mm[1]
    lesions = []
    skeletal = labels is not None and cfg.skeletal_component_mm3 is not None
    if skeletal:  # the 3D calcium components (26-connected) and their volumes
        lab3, _ = ndimage.label(hu.astype(np.float64) >= cfg.threshold_hu, structure=np.ones((3, 3, 3)))
        vol3 = np.bincount(lab3.ravel()) * pixel_area * geo.slice_increment_mm
    claim = labels is not None and cfg.min_claimed_share is not None
    near_bone = skeletal and cfg.min_bone_distance_mm is not None
    if near_bone:  # 3D distance (mm) of every voxel to the bone-sized calcium, by scipy over the whole volume
        bone = (lab3 > 0) & (vol3[lab3] > cfg.skeletal_component_mm3)
        gap = (ndimage.distance_transform_edt(~bone, sampling=(geo.slice_increment_mm, *geo.pixel_spacing_mm))
               if bone.any() else np.full(hu.shape, np.inf))
    for s in range(hu.shape[0]):
        h = hu[s].astype(np.float64)
        mask = h >= cfg.threshold_hu
        if labels is not None:
            claimed = labels[s] > 0
            if claim:  # a calcium component labelled only in part (below the share) is not counted at all
                comp, m = ndimage.label(mask, structure=struct)
                for j in range(1, m + 1):
                    sel = comp == j
                    k = int((sel & claimed).sum())
                    if 0 < k < cfg.min_claimed_share * int(sel.sum()):
                        claimed = claimed & ~sel
            mask &= claimed
        lab, n = ndimage.label(mask, structure=struct)
        found = []
        for i in range(1, n + 1):
            sel = lab == i
            k = int(sel.sum())
            area = k * pixel_area
            if not area >= cfg.min_area_mm2:
                continue
            if skeletal and vol3[lab3[s][sel][0]] > cfg.skeletal_component_mm3:
                continue  # bone-sized component: excluded
            if near_bone and gap[s][sel].min() < cfg.min_bone_distance_mm:
                continue  # beside bone: excluded
            peak = float(h[sel].max())
            w = ref_weight(peak, cfg.weight_thresholds_hu)
            artery = None
            if labels is not None:
                counts = np.bincount(labels[s][sel], minlength=5)[1:5]
                artery = ARTERY_OF[1 + int(np.argmax(counts))]
            rows, cols = np.nonzero(sel)
            found.append({
                "first": int(np.flatnonzero(sel.ravel())[0]), "slice_index": s, "z_mm": geo.z_mm[s],
                "n_pixels": k, "area_mm2": area, "peak_hu": peak, "mean_hu": float(h[sel].mean()),
                "weight": w, "score": area * w, "artery": artery,
                "centroid_rc": (float(rows.mean()), float(cols.mean())),
                "volume_mm3": k * pixel_area * geo.slice_increment_mm,
            })
        lesions += sorted(found, key=lambda d: d["first"])
    factor = (min(geo.slice_thickness_mm, geo.slice_increment_mm) / cfg.reference_thickness_mm
              if cfg.normalise_thickness else 1.0)
    total = sum(d["score"] for d in lesions) * factor
    per = {a: sum(d["score"] for d in lesions if d["artery"] == a) * factor for a in ARTERIES}
    vol = sum(d["volume_mm3"] for d in lesions)
    per_vol = {a: sum(d["volume_mm3"] for d in lesions if d["artery"] == a) for a in ARTERIES}
    mass = per_mass = None
    if cfg.mass_calibration_mg_per_hu_cm3 is not None:
        c = cfg.mass_calibration_mg_per_hu_cm3
        mass = sum(d["mean_hu"] * d["volume_mm3"] / 1000.0 * c for d in lesions)
        per_mass = {a: sum(d["mean_hu"] * d["volume_mm3"] / 1000.0 * c for d in lesions if d["artery"] == a)
                    for a in ARTERIES}
    return lesions, dict(total=total, per=per, volume=vol, per_volume=per_vol, mass=mass, per_mass=per_mass,
                         factor=factor)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-9)


def assert_matches_reference(result, ref_lesions, ref_tot) -> None:
    assert len(result.lesions) == len(ref_lesions)
    for ours, ref in zip(result.lesions, ref_lesions):
        where = f"slice {ref['slice_index']} lesion at first pixel {ref['first']}"
        assert ours.slice_index == ref["slice_index"], where
        assert ours.n_pixels == ref["n_pixels"], where
        assert ours.peak_hu == ref["peak_hu"], where
        assert ours.weight == ref["weight"], where
        assert ours.artery == ref["artery"], where
        assert ours.z_mm == ref["z_mm"], where
        for key in ("area_mm2", "score", "mean_hu", "volume_mm3"):
            assert close(getattr(ours, key), ref[key]), (where, key, getattr(ours, key), ref[key])
        assert close(ours.centroid_rc[0], ref["centroid_rc"][0])
        assert close(ours.centroid_rc[1], ref["centroid_rc"][1])
    assert close(result.agatston_total, ref_tot["total"])
    assert close(result.thickness_factor, ref_tot["factor"])
    assert close(result.volume_mm3_total, ref_tot["volume"])
    for a in ARTERIES:
        assert close(result.agatston_per_artery[a], ref_tot["per"][a])
        assert close(result.volume_mm3_per_artery[a], ref_tot["per_volume"][a])
    if ref_tot["mass"] is None:
        assert result.mass_mg_total is None and result.mass_mg_per_artery is None
    else:
        assert close(result.mass_mg_total, ref_tot["mass"])
        for a in ARTERIES:
            assert close(result.mass_mg_per_artery[a], ref_tot["per_mass"][a])
    if all(abs(ref_tot["total"] - b) > 1e-6 for b in (0.0, 10.0, 100.0, 400.0)):
        assert result.risk_category == agatston.risk_category(ref_tot["total"])


# ------------------------------------------------------------------------------------------------
# Volumes: random and adversarial


HU_LOW = np.array([-1000.0, -50.0, 0.0, 100.0, 129.0, 129.5, 129.99])
HU_HIGH = np.array([130.0, 130.5, 150.0, 199.0, 199.5, 200.0, 250.0, 299.0, 299.5, 300.0, 350.0, 399.0, 400.0,
                    401.0, 1200.0])


def pattern(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    r, c = np.indices((h, w))
    if kind == "checker":
        return (r + c) % 2 == 0
    if kind == "diagonal":
        return (r - c) % 3 == 0
    if kind == "full":
        return np.ones((h, w), bool)
    if kind == "empty":
        return np.zeros((h, w), bool)
    if kind == "border":
        m = np.zeros((h, w), bool)
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
        return m
    if kind == "u_shapes":
        m = np.zeros((h, w), bool)
        m[:, ::3] = True
        m[-1, :] = True
        m[0, 1::6] = True
        return m
    if kind == "spiral":
        m = np.zeros((h, w), bool)
        top, left, bottom, right = 0, 0, h - 1, w - 1
        while top <= bottom and left <= right:
            m[top, left:right + 1] = True
            m[top:bottom + 1, right] = True
            if bottom - top >= 2:
                m[bottom, left:right + 1] = True
            if right - left >= 2:
                m[top + 2:bottom + 1, left] = True
            top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        return m
    if kind == "singles":
        m = np.zeros((h, w), bool)
        m[::2, ::2] = rng.random(m[::2, ::2].shape) < 0.5
        return m
    if kind == "blobs":
        m = ndimage.binary_dilation(rng.random((h, w)) < 0.08, iterations=int(rng.integers(1, 3)))
        return m
    return rng.random((h, w)) < rng.uniform(0.1, 0.9)


KINDS = ["random", "checker", "diagonal", "full", "empty", "border", "u_shapes", "spiral", "singles", "blobs"]
SPACINGS = [(0.5, 0.5), (0.3, 0.7), (0.474609375, 0.474609375), (0.8, 0.35), (1.0, 1.0)]
THICKNESS = [(3.0, 3.0), (3.0, 1.5), (2.5, 2.5), (1.0, 0.7), (5.0, 5.0), (0.625, 0.625)]


@st.composite
def cases(draw):
    n = draw(st.integers(1, 4))
    h = draw(st.integers(1, 20))
    w = draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    hu = np.empty((n, h, w), np.float32)
    for s in range(n):
        m = pattern(draw(st.sampled_from(KINDS)), h, w, rng)
        hu[s] = np.where(m, rng.choice(HU_HIGH, size=(h, w)), rng.choice(HU_LOW, size=(h, w)))
    labels = None
    mode = draw(st.sampled_from(["threshold", "random_labels", "blocks"]))
    if mode == "random_labels":
        labels = rng.integers(0, 5, size=hu.shape).astype(np.uint8)
    elif mode == "blocks":  # large labelled regions that split lesions between arteries
        labels = np.zeros(hu.shape, np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            z, r0, c0 = rng.integers(0, n), rng.integers(0, h), rng.integers(0, w)
            dr, dc = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
            labels[z, r0:r0 + dr, c0:c0 + dc] = rng.integers(1, 5)
    spacing = draw(st.sampled_from(SPACINGS))
    thickness, increment = draw(st.sampled_from(THICKNESS))
    pixel_area = spacing[0] * spacing[1]
    min_area = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.5, 2.0]),
                              st.integers(0, 6).map(lambda k: k * pixel_area)))  # exactly at k pixels
    cfg = AgatstonConfig(
        connectivity=draw(st.sampled_from([4, 8])),
        min_area_mm2=min_area,
        normalise_thickness=draw(st.booleans()),
        mass_calibration_mg_per_hu_cm3=draw(st.sampled_from([None, 0.743])),
        # the default, off, and limits these small volumes exceed (the rule acts only with labels)
        skeletal_component_mm3=draw(st.sampled_from([2000.0, None, 1.0, 5.0, 20.0])),
        # the claim rule: the default, off, a majority, and "all of it"
        min_claimed_share=draw(st.sampled_from([0.75, None, 0.5, 1.0])),
        # the bone-distance rule: the default, off, and distances of about a pixel and a few
        min_bone_distance_mm=draw(st.sampled_from([8.0, None, 0.6, 2.0])),
    )
    return hu, labels, geometry(hu.shape, spacing, thickness, increment), cfg


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_score_volume_equals_reference_lesion_by_lesion(case):
    hu, labels, geo, cfg = case
    result = agatston.score_volume(hu, geo, labels, cfg)
    ref_lesions, ref_tot = reference(hu, labels, geo, cfg)
    assert_matches_reference(result, ref_lesions, ref_tot)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), threshold=st.sampled_from([130.0, 130.5, 129.25, 200.0]))
def test_int16_hu_scores_exactly_like_the_same_values_in_float32(case, threshold):
    """int16 HU (read_volume's exact fast path) take the kernels' integer route: same lesions, same totals."""
    hu, labels, geo, cfg = case
    cfg = dataclasses.replace(cfg, threshold_hu=threshold)
    hu_int = np.rint(hu)
    as_float = agatston.score_volume(hu_int.astype(np.float32), geo, labels, cfg)
    as_int16 = agatston.score_volume(hu_int.astype(np.int16), geo, labels, cfg)
    assert as_int16.lesions == as_float.lesions
    assert as_int16.agatston_total == as_float.agatston_total
    ref_lesions, ref_tot = reference(hu_int.astype(np.float32), labels, geo, cfg)
    assert_matches_reference(as_int16, ref_lesions, ref_tot)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_slice_lesions_equal_score_volume(case):
    """The streaming entry point (one slice at a time) gives the volume's lesions exactly."""
    hu, labels, geo, cfg = case
    whole = agatston.score_volume(hu, geo, labels, cfg)
    streamed = []
    for s in range(hu.shape[0]):
        streamed += agatston.slice_lesions(hu[s], None if labels is None else labels[s], geo.pixel_spacing_mm,
                                           s, geo.z_mm[s], geo.slice_increment_mm, cfg)
    excluded = [les for les, _ in whole.excluded_lesions]  # the skeletal rule acts at completion
    assert [les for les in streamed if les not in excluded] == whole.lesions
    assert all(les in streamed for les in excluded) and len(streamed) == len(whole.lesions) + len(excluded)
    kept = [les for les in streamed if les not in excluded]
    assert agatston.summarise(kept, geo, cfg).agatston_total == whole.agatston_total


# ------------------------------------------------------------------------------------------------
# Hand-computed cases


def one_lesion(peak: float, size: int = 3, shape=(1, 8, 8), value: float | None = None) -> np.ndarray:
    hu = np.full(shape, -50.0, np.float32)
    hu[0, 2:2 + size, 2:2 + size] = 150.0 if value is None else value
    hu[0, 3, 3] = peak
    return hu


def test_hand_computed_3x3_lesion():
    """3×3 pixels of 0.5 mm, peak 250 HU, 3 mm slices: 9 × 0.25 = 2.25 mm², weight 2, score 4.5."""
    hu = one_lesion(250.0)
    res = agatston.score_volume(hu, geometry(hu.shape, (0.5, 0.5), 3.0, 3.0))
    (les,) = res.lesions
    assert (les.n_pixels, les.area_mm2, les.weight, les.score) == (9, 2.25, 2, 4.5)
    assert res.agatston_total == 4.5 and res.thickness_factor == 1.0
    assert les.volume_mm3 == 9 * 0.25 * 3.0 == res.volume_mm3_total
    assert les.mean_hu == pytest.approx((8 * 150 + 250) / 9)
    assert les.centroid_rc == (3.0, 3.0) and les.artery is None and les.z_mm == -100.0
    assert res.risk_category == "1-10"
    assert res.agatston_per_artery == {a: 0.0 for a in ARTERIES}  # threshold mode: in no artery
    assert res.mass_mg_total is None and res.mass_mg_per_artery is None


def test_thickness_normalisation_uses_the_increment_when_slices_overlap():
    hu = one_lesion(250.0)
    # 3 mm slices every 1.5 mm: effective thickness 1.5 mm, factor 0.5; voxel depth 1.5 mm
    res = agatston.score_volume(hu, geometry(hu.shape, (0.5, 0.5), 3.0, 1.5))
    assert res.thickness_factor == 0.5 and res.agatston_total == 2.25
    assert res.volume_mm3_total == 9 * 0.25 * 1.5
    assert res.lesions[0].score == 4.5  # lesion scores are not normalised
    res = agatston.score_volume(hu, geometry(hu.shape, (0.5, 0.5), 2.5, 2.5))
    assert res.agatston_total == pytest.approx(4.5 * 2.5 / 3.0, rel=1e-15)
    res = agatston.score_volume(hu, geometry(hu.shape, (0.5, 0.5), 2.5, 2.5),
                                config=AgatstonConfig(normalise_thickness=False))
    assert res.agatston_total == 4.5 and res.thickness_factor == 1.0


def test_mass_is_mean_hu_times_volume_in_cm3_times_factor():
    hu = one_lesion(250.0, value=250.0)  # 9 pixels of 250 HU, 0.25 mm² × 3 mm = 6.75 mm³
    res = agatston.score_volume(hu, geometry(hu.shape, (0.5, 0.5), 3.0, 3.0),
                                config=AgatstonConfig(mass_calibration_mg_per_hu_cm3=0.8))
    assert res.mass_mg_total == pytest.approx(250.0 * 6.75 / 1000.0 * 0.8, rel=1e-12)  # 1.35 mg
    assert res.mass_mg_per_artery == {a: 0.0 for a in ARTERIES}


@pytest.mark.parametrize("peak,weight", [(130.0, 1), (199.0, 1), (199.5, 1), (200.0, 2), (299.0, 2),
                                         (299.99, 2), (300.0, 3), (399.0, 3), (400.0, 4), (2000.0, 4)])
def test_density_weight_boundaries(peak, weight):
    hu = one_lesion(peak, value=130.0)
    (les,) = agatston.score_volume(hu, geometry(hu.shape)).lesions
    assert les.peak_hu == np.float32(peak) and les.weight == weight and les.score == 2.25 * weight


def test_min_area_is_inclusive_and_exact_in_pixels():
    # 0.5 mm pixels: 4 pixels = 1.00 mm² (kept), 3 pixels = 0.75 mm² (dropped)
    hu = np.full((1, 6, 10), 0.0, np.float32)
    hu[0, 1, 1:5] = 300.0
    hu[0, 4, 1:4] = 300.0
    res = agatston.score_volume(hu, geometry(hu.shape))
    assert [les.n_pixels for les in res.lesions] == [4]
    assert res.lesions[0].area_mm2 == 1.0


def test_threshold_is_inclusive_at_130():
    hu = np.full((1, 5, 5), 129.99, np.float32)
    hu[0, 1:3, 1:3] = 130.0
    (les,) = agatston.score_volume(hu, geometry(hu.shape)).lesions
    assert les.n_pixels == 4


def test_connectivity_8_joins_diagonals_and_4_does_not():
    hu = np.zeros((1, 6, 6), np.float32)
    for i in range(6):
        hu[0, i, i] = 300.0
    g = geometry(hu.shape, (1.0, 1.0))
    assert [les.n_pixels for les in agatston.score_volume(hu, g).lesions] == [6]
    four = agatston.score_volume(hu, g, config=AgatstonConfig(connectivity=4))
    assert [les.n_pixels for les in four.lesions] == [1] * 6


def test_artery_is_the_majority_label_and_ties_go_to_the_lowest():
    hu = np.zeros((1, 6, 8), np.float32)
    hu[0, 1, 1:5] = 300.0  # lesion A: 4 pixels
    hu[0, 4, 1:5] = 500.0  # lesion B: 4 pixels
    labels = np.zeros(hu.shape, np.uint8)
    labels[0, 1, 1:5] = [4, 2, 4, 2]  # RCA 2, LAD 2: tie -> LAD (label 2 < 4)
    labels[0, 4, 1:5] = [4, 4, 4, 1]  # RCA 3, LM 1 -> RCA
    hu[0, 0, 6] = 1000.0  # bone outside the label mask: not calcium in label mode
    hu[0, 0, 7] = 1000.0
    g = geometry(hu.shape, (0.5, 0.5))
    res = agatston.score_volume(hu, g, labels)
    assert [(les.artery, les.n_pixels) for les in res.lesions] == [("LAD", 4), ("RCA", 4)]
    assert res.agatston_per_artery == {"LM": 0.0, "LAD": 3.0, "LCX": 0.0, "RCA": 4.0}
    assert res.agatston_total == 7.0 == sum(res.agatston_per_artery.values())
    assert res.config["calcium_mask"] == "labels>0"
    # threshold mode: the bone counts (2 px = 0.5 mm² < 1 mm² here, so make it bigger) and no artery
    hu[0, 1, 6:8] = 1000.0
    thr = agatston.score_volume(hu, g)
    assert [les.artery for les in thr.lesions] == [None, None, None]
    assert thr.agatston_per_artery == {a: 0.0 for a in ARTERIES}
    assert thr.config["calcium_mask"] == "whole_slice"


def test_per_artery_scores_sum_to_the_total_when_every_lesion_has_an_artery():
    rng = np.random.default_rng(11)
    hu = rng.choice(HU_HIGH, size=(5, 40, 40)).astype(np.float32) * (rng.random((5, 40, 40)) < 0.4)
    labels = rng.integers(1, 5, size=hu.shape).astype(np.uint8)
    res = agatston.score_volume(hu, geometry(hu.shape, (0.4, 0.4), 3.0, 2.0), labels)
    assert len(res.lesions) > 20 and all(les.artery for les in res.lesions)
    assert sum(res.agatston_per_artery.values()) == pytest.approx(res.agatston_total, rel=1e-12)
    assert sum(res.volume_mm3_per_artery.values()) == pytest.approx(res.volume_mm3_total, rel=1e-12)


def test_empty_volume_scores_zero():
    hu = np.full((3, 16, 16), -1000.0, np.float32)
    cfg = AgatstonConfig(mass_calibration_mg_per_hu_cm3=0.7)
    res = agatston.score_volume(hu, geometry(hu.shape), config=cfg)
    assert res.lesions == [] and res.agatston_total == 0.0 and res.risk_category == "0"
    assert res.volume_mm3_total == 0.0 and res.mass_mg_total == 0.0


def test_config_records_every_knob_and_the_derived_values():
    cfg = AgatstonConfig(min_area_mm2=0.5, mass_calibration_mg_per_hu_cm3=0.74)
    hu = one_lesion(250.0)
    g = geometry(hu.shape, (0.3, 0.7), 3.0, 1.5)
    res = agatston.score_volume(hu, g, config=cfg)
    for key, value in cfg.to_dict().items():
        assert res.config[key] == value
    assert res.config["thickness_factor"] == 0.5 == res.thickness_factor
    assert res.config["effective_thickness_mm"] == 1.5
    assert res.config["voxel_volume_mm3"] == pytest.approx(0.3 * 0.7 * 1.5)
    assert "artery_tie_break" in res.config
    import json

    json.dumps(res.config)  # plain JSON for the report


def test_float64_and_int16_volumes_score_like_float32():
    hu = one_lesion(250.0)
    g = geometry(hu.shape)
    base = agatston.score_volume(hu, g)
    assert agatston.score_volume(hu.astype(np.float64), g).lesions == base.lesions
    assert agatston.score_volume(hu.astype(np.int16), g).lesions == base.lesions


def test_shape_and_spacing_errors_are_clear():
    hu = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="does not match the geometry"):
        agatston.score_volume(hu, geometry((3, 4, 4)))
    with pytest.raises(ValueError, match="pixel spacing"):
        agatston.score_volume(hu, dataclasses.replace(geometry(hu.shape), pixel_spacing_mm=(0.0, 0.5)))
    with pytest.raises(ValueError, match="thickness"):
        agatston.score_volume(hu, geometry(hu.shape, thickness=3.0, increment=0.0))


def test_weights_for_peaks_vectorised():
    w = agatston.weights_for_peaks(np.array([130, 199.999, 200, 300, 400, 100]), (130.0, 200.0, 300.0, 400.0))
    assert w.tolist() == [1, 1, 2, 3, 4, 1]


@pytest.mark.parametrize("patient,expected", [("0", 5.86), ("1", 367.4), ("2", 111.6)])
def test_coca_gated_patients_score_the_expected_totals(coca_root, patient, expected):
    """Issue 2's acceptance figures: Agatston from the COCA ROIs' label volumes, within 0.5."""
    from cacstream.training.data.coca import load_gated_patient

    case = load_gated_patient(coca_root, patient)
    res = agatston.score_volume(case.volume.hu, case.volume.geometry, case.labels, AgatstonConfig().for_reference_labels())
    assert abs(res.agatston_total - expected) <= 0.5
    assert sum(res.agatston_per_artery.values()) == pytest.approx(res.agatston_total, rel=1e-12)
    ref_lesions, ref_tot = reference(case.volume.hu, case.labels, case.volume.geometry, AgatstonConfig())
    assert_matches_reference(res, ref_lesions, ref_tot)
