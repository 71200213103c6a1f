"""The bone-distance rule (engine/scoring/juxta_skeletal.py): the cropped, slab-wise distance against a
distance transform of the whole volume, then the rule through both scoring paths (whole volume and
slice by slice) on a series with a "rib", a calcification beside it and a plaque far from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cacstream.engine.config import AgatstonConfig
from cacstream.engine.pipeline.runner import PipelineConfig
from cacstream.engine.pipeline.scorer import score_series
from cacstream.engine.report.json_report import scored_report, validate_report
from cacstream.engine.scoring.agatston import score_volume
from cacstream.engine.scoring.juxta_skeletal import JUXTA_REASON, near_skeleton, slab_reach, slabs
from cacstream.engine.scoring.skeleton import SKELETAL_REASON
from cacstream.engine.series import scan_path
from cacstream.engine.series.types import Geometry
from cacstream.training.dicom_writer import write_ct_series

from _fake_models import fake_labels, fake_models


@pytest.mark.parametrize("seed", range(10))
def test_near_skeleton_equals_a_whole_volume_distance_transform(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_slices, rows, cols = int(rng.integers(3, 9)), int(rng.integers(20, 50)), int(rng.integers(20, 50))
    bone = ndimage.binary_dilation(rng.random((n_slices, rows, cols)) < 0.004, iterations=2)
    spacing = (float(rng.uniform(0.5, 4.0)), float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.3, 1.0)))
    distance = float(rng.uniform(1.0, 9.0))
    gap = ndimage.distance_transform_edt(~bone, sampling=spacing) if bone.any() else np.full(bone.shape, np.inf)
    z = int(rng.integers(0, n_slices))
    comps, n = ndimage.label((rng.random((rows, cols)) < 0.08) & ~bone[z], structure=np.ones((3, 3)))
    given = {zz: bone[zz] for zz in slabs([z], n_slices, spacing[0], distance)}  # only the slices within reach
    got = near_skeleton(comps, n, z, given, spacing, distance)
    want = np.zeros(n + 1, bool)
    for k in range(1, n + 1):
        want[k] = bool(np.any(gap[z][comps == k] < distance))
    np.testing.assert_array_equal(got, want)


def test_slab_reach_counts_whole_increments() -> None:
    assert slab_reach(3.0, 8.0) == 2 and slab_reach(2.0, 8.0) == 4 and slab_reach(10.0, 8.0) == 0
    assert slabs([0, 9], 10, 3.0, 8.0) == [0, 1, 2, 7, 8, 9]


SPACING, THICKNESS, N, SIZE = 0.7, 3.0, 12, 64


def _rib_speck_and_plaque() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 6x30-pixel bar at 300 HU through every slice (3,175 mm³: a rib), a 2x2 speck at 300 HU three
    background pixels above it on slice 4 (2.8 mm between pixel centres) (calcified cartilage beside the rib) and an r=2 disc at 400 HU
    on slices 5 and 6, 28 pixels (19.6 mm) away (a plaque); all in the fake segmenter's labels."""
    hu = np.full((N, SIZE, SIZE), 20.0, np.float32)
    hu[:, 50:56, 10:40] = 300.0
    hu[4, 45:47, 20:22] = 300.0
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    disc = (yy - 20) ** 2 + (xx - 44) ** 2 <= 4
    hu[5:7, disc] = 400.0
    speck = np.zeros(hu.shape, bool)
    speck[4, 45:47, 20:22] = True
    return hu, speck, np.broadcast_to(disc, hu.shape) & (hu == 400.0)


def _geometry() -> Geometry:
    return Geometry(rows=SIZE, columns=SIZE, pixel_spacing_mm=(SPACING, SPACING), slice_thickness_mm=THICKNESS,
                    slice_increment_mm=THICKNESS, normal=(0.0, 0.0, 1.0),
                    z_mm=tuple(float(THICKNESS * i) for i in range(N)))


def test_whole_volume_scorer_excludes_the_calcium_beside_bone() -> None:
    hu, speck, plaque = _rib_speck_and_plaque()
    g = _geometry()
    labels = fake_labels(hu)
    res = score_volume(hu, g, labels)
    off = AgatstonConfig().for_reference_labels()
    only_plaque = score_volume(hu, g, np.where(plaque, labels, 0).astype(np.uint8), off)
    only_speck = score_volume(hu, g, np.where(speck, labels, 0).astype(np.uint8), off)
    assert res.lesions == only_plaque.lesions and res.agatston_total == only_plaque.agatston_total
    near = [les for les, why in res.excluded_lesions if why == JUXTA_REASON]
    assert near == only_speck.lesions and len(near) == 1
    assert sum(why == SKELETAL_REASON for _, why in res.excluded_lesions) == N  # the rib itself
    # 2.8 mm from the rib: a limit of 2.5 mm keeps the speck, the rule off keeps it too
    assert len(score_volume(hu, g, labels, AgatstonConfig(min_bone_distance_mm=2.5)).lesions) == 3
    assert len(score_volume(hu, g, labels, AgatstonConfig(min_bone_distance_mm=None)).lesions) == 3
    assert score_volume(hu, g, labels, AgatstonConfig(min_bone_distance_mm=3.0)).lesions == res.lesions
    with pytest.raises(ValueError, match="min_bone_distance_mm"):
        AgatstonConfig(min_bone_distance_mm=0.0)


def test_slice_by_slice_pipeline_agrees_and_reports_the_reason(tmp_path: Path) -> None:
    hu, speck, _ = _rib_speck_and_plaque()
    write_ct_series(hu, tmp_path / "s", pixel_spacing_mm=(SPACING, SPACING), slice_thickness_mm=THICKNESS)
    (series,) = scan_path(tmp_path / "s").series
    score = score_series(series, models=fake_models(), config=PipelineConfig(batch_size=4))
    got = score.scored.result
    ref = score_volume(hu, series.geometry, fake_labels(hu))
    assert got.lesions == ref.lesions and len(got.lesions) == 2
    assert got.excluded_lesions == ref.excluded_lesions
    assert not np.any((score.label_maps.get(4, np.zeros((SIZE, SIZE))) > 0) & speck[4])  # gone from the SEG too
    report = scored_report(score.scored)
    validate_report(report)
    assert [x["reason"] for x in report["excluded_lesions"]].count(JUXTA_REASON) == 1
    assert report["agatston_config"]["min_bone_distance_mm"] == 8.0
