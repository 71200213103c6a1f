"""Skeletal calcium (engine/scoring/skeleton.py): 3D components against scipy.ndimage, and the rule
through both scoring paths (whole volume and slice by slice) on a series with a labelled "rib"."""

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
from cacstream.engine.scoring.skeleton import SKELETAL_REASON, large_component_masks
from cacstream.engine.series import read_volume, scan_path
from cacstream.training.dicom_writer import write_ct_series

from _fake_models import fake_labels, fake_models


@pytest.mark.parametrize("seed", range(12))
def test_large_components_equal_scipy_26_connectivity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 9)), int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    mask = rng.random(shape) < rng.uniform(0.05, 0.45)
    lab, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    voxels = np.bincount(lab.ravel())
    voxels[0] = 0
    limit = float(rng.integers(0, 30))
    voxel_mm3 = float(rng.uniform(0.2, 3.0))
    got = large_component_masks(shape[0], lambda z: mask[z], voxel_mm3, limit * voxel_mm3, range(shape[0]))
    for z in range(shape[0]):
        np.testing.assert_array_equal(got[z], mask[z] & (voxels[lab[z]] > limit))


def test_diagonal_neighbours_across_slices_join() -> None:
    """Two voxels touching only at a corner across slices are one component (26-connectivity); a query
    that lists one slice returns only that slice."""
    mask = np.zeros((2, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True
    got = large_component_masks(2, lambda z: mask[z], 1.0, 1.5, [1])
    assert list(got) == [1] and got[1][1, 1]  # 2 voxels > 1.5 mm³
    assert not large_component_masks(2, lambda z: mask[z], 1.0, 2.0, [1])[1].any()
    with pytest.raises(ValueError, match="voxel volume"):
        large_component_masks(2, lambda z: mask[z], 0.0, 1.0, [1])


SPACING, THICKNESS, N, SIZE = 0.7, 3.0, 12, 64


def _rib_and_plaque() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU with a 6x30-pixel bar at 300 HU through every slice (88 mm² x 36 mm = 3,175 mm³: a rib) and a
    r=2 disc at 400 HU on slices 5 and 6 (a plaque); both in the fake segmenter's [130, 640) HU labels."""
    hu = np.full((N, SIZE, SIZE), 20.0, np.float32)
    hu[:, 50:56, 10:40] = 300.0
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    disc = (yy - 20) ** 2 + (xx - 44) ** 2 <= 4
    hu[5:7, disc] = 400.0
    rib = np.zeros(hu.shape, bool)
    rib[:, 50:56, 10:40] = True
    return hu, rib, np.broadcast_to(disc, hu.shape) & (hu == 400.0)


def test_whole_volume_scorer_excludes_the_rib_and_lists_it() -> None:
    from cacstream.engine.series.types import Geometry

    hu, rib, plaque = _rib_and_plaque()
    g = Geometry(rows=SIZE, columns=SIZE, pixel_spacing_mm=(SPACING, SPACING), slice_thickness_mm=THICKNESS,
                 slice_increment_mm=THICKNESS, normal=(0.0, 0.0, 1.0), z_mm=tuple(float(THICKNESS * i) for i in range(N)))
    labels = fake_labels(hu)
    off = AgatstonConfig(skeletal_component_mm3=None)
    res = score_volume(hu, g, labels)
    # independent expectations: each structure scored alone with the rule off
    only_plaque = score_volume(hu, g, np.where(plaque, labels, 0).astype(np.uint8), off)
    only_rib = score_volume(hu, g, np.where(rib, labels, 0).astype(np.uint8), off)
    assert res.lesions == only_plaque.lesions and res.agatston_total == only_plaque.agatston_total
    assert [les for les, _ in res.excluded_lesions] == only_rib.lesions and len(only_rib.lesions) == N
    assert {why for _, why in res.excluded_lesions} == {SKELETAL_REASON}
    # the rule off counts both; a limit above the rib's 3,175 mm³ keeps the rib
    both = score_volume(hu, g, labels, off)
    assert len(both.lesions) == N + 2 and not both.excluded_lesions
    assert len(score_volume(hu, g, labels, AgatstonConfig(skeletal_component_mm3=3500.0)).lesions) == N + 2
    assert score_volume(hu, g, labels, AgatstonConfig(skeletal_component_mm3=3000.0)).lesions == res.lesions
    with pytest.raises(ValueError, match="skeletal_component_mm3"):
        AgatstonConfig(skeletal_component_mm3=0.0)


def test_slice_by_slice_pipeline_agrees_and_reports_the_exclusion(tmp_path: Path) -> None:
    hu, rib, _ = _rib_and_plaque()
    write_ct_series(hu, tmp_path / "s", pixel_spacing_mm=(SPACING, SPACING), slice_thickness_mm=THICKNESS)
    (series,) = scan_path(tmp_path / "s").series
    vol = read_volume(series).hu
    models = fake_models()
    score = score_series(series, models=models, config=PipelineConfig(batch_size=4))
    got = score.scored.result
    ref = score_volume(vol, series.geometry, fake_labels(vol))
    assert got.lesions == ref.lesions and len(got.lesions) == 2
    assert got.excluded_lesions == ref.excluded_lesions and len(got.excluded_lesions) == N
    assert got.agatston_total == ref.agatston_total
    for i, lm in score.label_maps.items():  # the rib's pixels are gone from the maps the SEG / key image use
        assert not np.any((lm > 0) & rib[i])
    report = scored_report(score.scored)
    validate_report(report)
    assert len(report["excluded_lesions"]) == N
    assert {x["reason"] for x in report["excluded_lesions"]} == {"skeletal"}
    assert report["agatston_config"]["skeletal_component_mm3"] == 2000.0


def test_missing_components_skip_the_check_with_a_warning(tmp_path: Path) -> None:
    """If a slice's calcium components were not kept, completion cannot join them: it says so in the
    report's warnings and counts every lesion rather than guess."""
    import dataclasses
    import threading

    from cacstream.engine.pipeline.finalize import finalize_series
    from cacstream.engine.pipeline.runner import SlicePipeline
    from cacstream.engine.pipeline.stages import SliceJob

    hu, _, _ = _rib_and_plaque()
    write_ct_series(hu, tmp_path / "s", pixel_spacing_mm=(SPACING, SPACING), slice_thickness_mm=THICKNESS)
    (series,) = scan_path(tmp_path / "s").series
    outcomes: dict = {}
    lock = threading.Lock()

    def keep(o) -> None:  # noqa: ANN001
        with lock:
            outcomes[o.key] = o

    models = fake_models()
    with SlicePipeline(AgatstonConfig(), keep, models=models, config=PipelineConfig(batch_size=4)) as pipe:
        for h in series.slices:
            pipe.submit(SliceJob(series.uid, h))
    full = finalize_series(series, outcomes, mode="model", agatston=AgatstonConfig(), model=models.info)
    assert len(full.scored.result.excluded_lesions) == N and not full.scored.warnings
    k = series.slices[3].key
    outcomes[k] = dataclasses.replace(outcomes[k], calcium_components=None)
    got = finalize_series(series, outcomes, mode="model", agatston=AgatstonConfig(), model=models.info)
    assert not got.scored.result.excluded_lesions and len(got.scored.result.lesions) == N + 2
    assert any("skeletal-calcium check skipped" in w for w in got.scored.warnings)
