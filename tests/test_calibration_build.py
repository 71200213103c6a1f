"""``calibrate build`` (calibration/build.py) end to end on small phantom series with the tiny weights:
the manifest says where every slice came from, and the stored inputs are exactly the models' input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _calibration_data import SERIES, calibration_set, phantom_folder
from _tiny_weights import tiny_weights_dir
from cacstream.calibration.sets import load_set


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def cset(tmp_path_factory: pytest.TempPathFactory):
    return load_set(calibration_set(tmp_path_factory))


def test_manifest_records_the_provenance_of_every_slice(cset, weights: Path) -> None:
    import pydicom

    m = cset.manifest
    cfg = json.loads((weights / "config.json").read_text())
    assert m["weights_id"] == "tiny-test" and m["seed"] == 7 and m["version"] == 1
    assert m["strategy"]["name"] == "stratified" and m["strategy"]["axes"] == ["filter", "scanner", "hu"]
    assert m["preprocess"]["filter"] == cfg["slice_filter"]["preprocess"]
    assert m["preprocess"]["segmenter"] == cfg["segmenter"]["preprocess"]
    assert m["filter_threshold"] == cfg["slice_filter"]["threshold"]
    assert len(cset) == 24 and m["population"]["series"] == len(SERIES)
    for s in cset.slices:
        ds = pydicom.dcmread(s.path, stop_before_pixels=True)  # the recorded file holds the recorded slice
        assert ds.SOPInstanceUID == s.sop_instance_uid and ds.SeriesInstanceUID == s.series_instance_uid
        assert s.stratum == " / ".join(s.strata[a] for a in ("filter", "scanner", "hu"))
        assert ds.Manufacturer in s.strata["scanner"]
        truth = json.loads((Path(s.path).parent / "truth.json").read_text())
        assert s.stats["truth_calcium"] == truth["slice_has_coronary_calcium"][s.slice_index]
        assert abs(s.stats["z_mm"] - truth["geometry"]["z_mm"][s.slice_index]) < 0.01


def test_stored_inputs_are_the_models_input(cset, weights: Path) -> None:
    """Independent reference: pydicom HU of the recorded file, training's torch preprocessing."""
    import pydicom
    from cacstream.kernels.config import PreprocessConfig
    from cacstream.training.datasets.preprocess import preprocess_slices

    for role in ("filter", "segmenter"):
        cfg = PreprocessConfig.from_dict(cset.manifest["preprocess"][role])
        for j, s in enumerate(cset.slices):
            ds = pydicom.dcmread(s.path)
            hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            ref = preprocess_slices(hu, cfg).numpy()[0]
            np.testing.assert_allclose(cset.inputs[role][j], ref, atol=2e-6, err_msg=f"{role} slice {j}")


def test_statistics_match_the_runtime_and_numpy(cset, weights: Path) -> None:
    import pydicom
    from cacstream.engine.inference.runtime import CalciumModels

    m = CalciumModels.load(weights, backend="onnxruntime")
    for s in cset.slices[:8]:
        ds = pydicom.dcmread(s.path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert s.stats["hu_max"] == float(hu.max()) and s.stats["hu_min"] == float(hu.min())
        assert s.stats["filter_probability"] == pytest.approx(float(m.filter_probabilities(hu)[0]), abs=1e-6)
        label = "flagged" if s.stats["filter_probability"] >= m.filter_threshold else "not_flagged"
        assert s.strata["filter"] in (label, "near_threshold")


def test_same_seed_same_set_other_seed_other_set(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, weights: Path, cset
) -> None:
    from cacstream.calibration.build import BuildConfig, build_set
    from cacstream.calibration.select import SelectionConfig

    src = phantom_folder(tmp_path_factory)
    again = build_set(
        [src],
        tmp_path / "again",
        weights,
        BuildConfig(SelectionConfig(n=24, seed=7), name="test"),
        quiet=True,
    )
    assert again.set_id == cset.set_id
    other = build_set(
        [src],
        tmp_path / "other",
        weights,
        BuildConfig(SelectionConfig(n=24, seed=8), name="test"),
        quiet=True,
    )
    assert other.set_id != cset.set_id
    rnd = build_set(
        [src],
        tmp_path / "rnd",
        weights,
        BuildConfig(SelectionConfig(n=500, strategy="random"), name="all"),
        quiet=True,
    )
    assert len(rnd) == rnd.manifest["population"]["slices"]  # n larger than the population: every slice


def test_no_series_is_a_clear_error(tmp_path: Path, weights: Path) -> None:
    from cacstream.calibration.build import build_set

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    with pytest.raises(ValueError, match="no eligible CT series"):
        build_set([tmp_path / "empty"], tmp_path / "s", weights, quiet=True)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_set([tmp_path / "missing"], tmp_path / "s", weights, quiet=True)
