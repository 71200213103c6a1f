"""Segmentation regions (engine/inference/regions.py): the U-Net only runs around the slice filter's
flagged patches. Checked against hand-worked grids and an independent statement of the rule (the
segmenter module run by hand on zero-padded crops), on both CPU backends, and through the pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cacstream.engine.inference.regions import (
    RegionConfig,
    cells_to_run,
    cut_tiles,
    paste_cores,
    plan_tiles,
    resized_onnx,
    split_filter_logits,
    tile_grid,
)
from cacstream.engine.inference.runtime import CalciumModels, sigmoid

from _tiny_weights import MATRIX, tiny_weights_dir

#: core_patches=1 on the tiny weights (2x2 patch grid over a 32² segmenter input): 2x2 cores of
#: 16 px, 8 px halo, 32² tiles — small enough to see every edge case.
TINY_REGIONS = RegionConfig(mode="patches", core_patches=1, halo_px=8)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def phantom_hu() -> np.ndarray:
    from cacstream.training.phantom import PhantomConfig, make_phantom

    return make_phantom(9401, PhantomConfig(matrix=MATRIX, z_coverage_mm=24.0, calcium_category="101-400")).hu


# ------------------------------------------------------------------------------ pure functions


def test_filter_output_splits_into_slice_and_patch_logits() -> None:
    s, p = split_filter_logits(np.array([0.5, -1.0], np.float32))
    assert p is None and s.tolist() == [0.5, -1.0]
    raw = np.arange(10, dtype=np.float32).reshape(2, 5)  # 1 + 2x2
    s, p = split_filter_logits(raw)
    assert s.tolist() == [0.0, 5.0]
    assert p is not None and p.shape == (2, 2, 2) and p[1].tolist() == [[6.0, 7.0], [8.0, 9.0]]  # row-major
    with pytest.raises(ValueError, match="not a square grid"):
        split_filter_logits(np.zeros((2, 6), np.float32))


def test_shipped_grid_numbers() -> None:
    g = tile_grid(RegionConfig(), 8, 512)
    assert g is not None and (g.cells, g.core, g.halo, g.tile) == (4, 128, 16, 160)
    assert tile_grid(RegionConfig(mode="slice"), 8, 512) is None
    assert tile_grid(RegionConfig(), None, 512) is None  # no patch logits
    assert tile_grid(RegionConfig(core_patches=3), 8, 512) is None  # 8 patches are not whole 3-patch cores
    with pytest.raises(ValueError):
        RegionConfig(mode="bbox")  # type: ignore[arg-type]


def test_a_core_runs_when_any_of_its_patches_is_flagged() -> None:
    g = tile_grid(RegionConfig(), 8, 512)
    assert g is not None
    flags = np.zeros((8, 8), bool)
    flags[0, 1] = flags[5, 7] = flags[6, 6] = True
    cells = cells_to_run(flags, g)
    assert sorted(zip(*np.nonzero(cells))) == [(0, 0), (2, 3), (3, 3)]
    plan = plan_tiles([np.zeros((8, 8), bool), flags], g)
    assert plan == [(1, 0, 0), (1, 2, 3), (1, 3, 3)]


def test_cut_then_paste_gives_back_exactly_the_cores_that_ran() -> None:
    g = tile_grid(RegionConfig(core_patches=1, halo_px=3), 4, 8)  # 4x4 cells of 2 px, 8 px tiles
    assert g is not None and (g.core, g.tile) == (2, 8)
    x = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8) + 1
    plan = [(0, 0, 0), (1, 3, 2)]
    tiles = cut_tiles(x, plan, g)
    assert tiles.shape == (2, 1, 8, 8)
    # the halo past the slice edge is zero: the top-left tile's first 3 rows and columns
    assert np.all(tiles[0, 0, :3] == 0) and np.all(tiles[0, 0, :, :3] == 0)
    assert np.array_equal(tiles[0, 0, 3:, 3:], x[0, 0, :5, :5])
    pasted = paste_cores(tiles[:, 0].astype(np.uint8), plan, 2, g)  # "labels" = the input itself
    expect = np.zeros((2, 8, 8), np.uint8)
    expect[0, 0:2, 0:2] = x[0, 0, 0:2, 0:2]
    expect[1, 6:8, 4:6] = x[1, 0, 6:8, 4:6]
    assert np.array_equal(pasted, expect)


def test_torch_tiles_equal_numpy_tiles() -> None:
    torch = pytest.importorskip("torch")
    g = tile_grid(RegionConfig(core_patches=1, halo_px=3), 4, 8)
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    plan = [(0, 1, 1), (1, 0, 3)]
    np.testing.assert_array_equal(cut_tiles(torch.from_numpy(x), plan, g).numpy(), cut_tiles(x, plan, g))


@pytest.mark.gpu
def test_gpu_tiles_equal_numpy_tiles() -> None:
    """On a GPU the preprocessed batch is a CuPy or torch CUDA array; its tiles are cut on the device."""
    g = tile_grid(RegionConfig(core_patches=1, halo_px=3), 4, 8)
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    plan = [(0, 0, 0), (2, 3, 3), (1, 1, 2)]
    want = cut_tiles(x, plan, g)
    try:
        import cupy

        np.testing.assert_array_equal(cupy.asnumpy(cut_tiles(cupy.asarray(x), plan, g)), want)
    except ImportError:
        pass
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        np.testing.assert_array_equal(cut_tiles(torch.from_numpy(x).cuda(), plan, g).cpu().numpy(), want)


def test_a_graph_with_size_dependent_nodes_is_not_resized(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [-1, 1, 8, 8])
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 8, 8])], [shape])
    src = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph), str(src))
    with pytest.raises(ValueError, match="Reshape"):
        resized_onnx(src, tmp_path / "out.onnx", 4)


# ------------------------------------------------------------------------------ the runtime


@pytest.fixture(scope="module")
def tiled(tiny_weights: Path) -> dict[str, CalciumModels]:
    return {be: CalciumModels.load(tiny_weights, backend=be, batch_size=4, threads=1, regions=TINY_REGIONS)
            for be in ("onnxruntime", "torch")}


def test_patch_flags_follow_the_threshold_and_cover_every_flagged_slice(tiled, phantom_hu) -> None:
    m = tiled["onnxruntime"]
    raw = m._filter_result(phantom_hu)[0]
    assert raw.shape == (len(phantom_hu), 1 + 2 * 2)
    np.testing.assert_allclose(raw[:, 0], raw[:, 1:].max(axis=1), atol=1e-6)
    p, flags = m.filter_decisions(phantom_hu)
    assert flags is not None and flags.shape == (len(phantom_hu), 2, 2)
    want = sigmoid(raw[:, 1:]).reshape(-1, 2, 2) >= m.filter_threshold
    flagged = p >= m.filter_threshold
    for i in np.nonzero(flagged & ~want.any(axis=(1, 2)))[0]:  # rounding guard: the slice's top patch
        want[i].flat[int(np.argmax(raw[i, 1:]))] = True
    assert np.array_equal(flags, want)
    assert np.all(flags[flagged].any(axis=(1, 2)))
    assert np.array_equal(m.filter_probabilities(phantom_hu), p)


def test_segment_with_regions_equals_the_module_run_by_hand_on_padded_crops(tiled, tiny_weights, phantom_hu) -> None:
    """The rule stated independently: preprocess, zero-pad by the halo, run the PyTorch segmenter on
    each flagged core's crop, keep the core's argmax, background elsewhere, resample to the matrix."""
    import torch

    from cacstream.training.weights import load_weights

    m = tiled["torch"]
    assert m.tile_grid is not None and (m.tile_grid.core, m.tile_grid.tile) == (16, 32)
    seg = load_weights(tiny_weights).segmenter.model.eval()
    hu = phantom_hu[:6]
    regions = np.zeros((6, 2, 2), bool)
    regions[0, 0, 0] = True
    regions[1] = True
    regions[3, 1, 0] = regions[3, 0, 1] = True  # slices 2, 4, 5: nothing flagged -> all background
    x = np.asarray(m.preprocess(hu, "segmenter"))  # (6, 1, 32, 32)
    xp = np.pad(x, ((0, 0), (0, 0), (8, 8), (8, 8)))
    served = np.zeros((6, 32, 32), np.uint8)
    with torch.no_grad():
        for i, r, c in zip(*np.nonzero(regions)):
            crop = torch.from_numpy(np.ascontiguousarray(xp[i:i + 1, :, 16 * r:16 * r + 32, 16 * c:16 * c + 32]))
            served[i, 16 * r:16 * r + 16, 16 * c:16 * c + 16] = seg(crop).argmax(1)[0, 8:24, 8:24].numpy()
    idx = np.floor((np.arange(MATRIX) + 0.5) * (32 / MATRIX)).astype(int)  # nearest-exact 32 -> 64
    expect = served[:, idx][:, :, idx]
    got = m.segment(hu, regions)
    assert np.array_equal(got, expect)
    assert np.array_equal(tiled["onnxruntime"].segment(hu, regions), expect)  # the resized ONNX graph
    assert not got[2].any() and not got[4].any()
    with pytest.raises(ValueError, match="5 region maps for 6 slices"):
        m.segment(hu, regions[:5])


def test_slice_mode_and_no_regions_segment_whole_slices(tiny_weights, tiled, phantom_hu) -> None:
    whole = CalciumModels.load(tiny_weights, backend="onnxruntime", batch_size=4, threads=1,
                               regions=RegionConfig(mode="slice"))
    assert whole.tile_grid is None and whole.region_rule == "whole slice"
    assert whole.info.segment_regions == "whole slice"
    assert tiled["onnxruntime"].info.segment_regions.startswith("filter patches: 16 px cores")
    hu = phantom_hu[:4]
    np.testing.assert_array_equal(tiled["onnxruntime"].segment(hu), whole.segment(hu))


def test_the_pipeline_segments_the_regions_its_filter_flagged(tiled, phantom_hu) -> None:
    """ModelStages (what `score` and `watch` run) hands each slice's own patch flags to the segmenter."""
    from cacstream.engine.pipeline.models import ModelStages

    m = tiled["onnxruntime"]
    stages = ModelStages(m)
    slices = list(phantom_hu[:8])
    probs, regions = stages.filter(slices)
    p, flags = m.filter_decisions(phantom_hu[:8])
    np.testing.assert_allclose(probs, p)
    assert all(np.array_equal(a, b) for a, b in zip(regions, flags))
    got = stages.segment(slices, regions)
    expect = m.segment(phantom_hu[:8], flags)
    assert all(np.array_equal(a, b) for a, b in zip(got, expect))
