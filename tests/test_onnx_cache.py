"""ONNX files made on first use (engine/inference/onnx_cache.py) for weights shipped as fp16 safetensors
only (training/default_weights.py ``package``), as the packaged default weights are.

Checked against independent expectations: the packaged tensors are exactly the fp16 rounding of the
exported ones, ``--backend auto`` serves the folder with ONNX Runtime out of the box (the file is made
in the engine folder, with a sidecar naming the safetensors it came from), ONNX Runtime and PyTorch
give the same probabilities on the packaged weights, a changed safetensors file is never served from a
stale ONNX file, and a folder without the flag keeps the old behaviour (missing ONNX is an error for
an explicit ``onnxruntime`` and a fallback for ``auto``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cacstream.engine.backends.base import BackendUnavailable
from cacstream.engine.inference.onnx_cache import FLAG
from cacstream.engine.inference.runtime import CalciumModels
from cacstream.engine.inference.weights_spec import WeightsFolderError
from cacstream.training.default_weights import package

from _tiny_weights import MATRIX, tiny_weights_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture()
def packaged(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CACSTREAM_ENGINES", str(tmp_path / "engines"))
    out = tmp_path / "pkg"
    package(tiny, out, {"note": "test"})
    return out


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    from cacstream.training.phantom import PhantomConfig, make_phantom

    return make_phantom(9410, PhantomConfig(matrix=MATRIX, z_coverage_mm=24.0, calcium_category="101-400")).hu


def test_package_stores_fp16_and_no_onnx(tiny: Path, packaged: Path) -> None:
    assert not list(packaged.glob("*.onnx"))
    cfg = json.loads((packaged / "config.json").read_text())
    assert cfg["training"] == {"note": "test"}
    for sec in ("slice_filter", "segmenter"):
        assert cfg[sec][FLAG] is True and cfg[sec]["storage_dtype"] == "float16"
        name = cfg[sec]["weights"]
        full, half = load_file(str(tiny / name)), load_file(str(packaged / name))
        assert full.keys() == half.keys()
        for k, v in full.items():
            if v.is_floating_point():
                assert half[k].dtype == torch.float16
                assert torch.equal(half[k], v.half()), k
            else:
                assert torch.equal(half[k], v), k


def test_auto_backend_generates_onnx_on_first_use(packaged: Path, tmp_path: Path, hu: np.ndarray) -> None:
    ort_m = CalciumModels.load(packaged, backend="auto", batch_size=4, threads=1)
    assert ort_m.choice.name == "onnxruntime"
    made = sorted(p.name for p in (tmp_path / "engines" / "pkg").glob("*.onnx"))
    assert ort_m.tile_grid is not None  # the patch_max filter's patches tile the segmenter's input
    tile = f"segmenter.tile{ort_m.tile_grid.tile}.onnx"
    assert made == sorted(["segmenter.onnx", tile, "slice_filter.onnx"])
    side = json.loads((tmp_path / "engines" / "pkg" / "slice_filter.onnx.json").read_text())
    import hashlib

    assert side["weights_sha256"] == hashlib.sha256((packaged / "slice_filter.safetensors").read_bytes()).hexdigest()
    assert side["onnx_check"]["passed"]
    torch_m = CalciumModels.load(packaged, backend="torch", batch_size=4, threads=1)
    np.testing.assert_allclose(ort_m.filter_probabilities(hu), torch_m.filter_probabilities(hu), atol=1e-5)
    np.testing.assert_array_equal(ort_m.segment(hu[:3]), torch_m.segment(hu[:3]))
    _, patches = ort_m.filter_decisions(hu[:3])
    np.testing.assert_array_equal(ort_m.segment(hu[:3], patches), torch_m.segment(hu[:3], patches))
    # second load: the cached files are reused, not rewritten
    mtime = (tmp_path / "engines" / "pkg" / "slice_filter.onnx").stat().st_mtime_ns
    CalciumModels.load(packaged, backend="onnxruntime", batch_size=4, threads=1)
    assert (tmp_path / "engines" / "pkg" / "slice_filter.onnx").stat().st_mtime_ns == mtime


def test_changed_weights_are_never_served_from_a_stale_onnx(packaged: Path, hu: np.ndarray) -> None:
    first = CalciumModels.load(packaged, backend="onnxruntime", batch_size=4, threads=1).filter_probabilities(hu)
    path = packaged / "slice_filter.safetensors"
    sd = load_file(str(path))
    sd["head.linear.bias"] = sd["head.linear.bias"] + 3.0  # a different model: logits shift by +3
    save_file(sd, str(path))
    again = CalciumModels.load(packaged, backend="onnxruntime", batch_size=4, threads=1).filter_probabilities(hu)
    torch_p = CalciumModels.load(packaged, backend="torch", batch_size=4, threads=1).filter_probabilities(hu)
    np.testing.assert_allclose(again, torch_p, atol=1e-5)
    assert np.all(again > first)


def test_without_the_flag_a_missing_onnx_is_reported(tiny: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACSTREAM_ENGINES", str(tmp_path / "engines"))
    w = tmp_path / "noflag"
    shutil.copytree(tiny, w)
    for p in w.glob("*.onnx"):
        p.unlink()
    with pytest.raises(WeightsFolderError, match="ONNX file of the slice_filter not found"):
        CalciumModels.load(w, backend="onnxruntime")
    m = CalciumModels.load(w, backend="auto", threads=1)  # auto falls back to PyTorch, as before
    assert m.choice.name == "torch"
    assert not (tmp_path / "engines").exists() or not list((tmp_path / "engines").rglob("*.onnx"))


def test_unwritable_engine_folder_falls_back_to_the_user_cache(packaged: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, so no folder can be made here")
    monkeypatch.setenv("CACSTREAM_ENGINES", str(blocked))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    m = CalciumModels.load(packaged, backend="onnxruntime", batch_size=4, threads=1)
    assert m.choice.name == "onnxruntime"
    assert (tmp_path / "xdg" / "cacstream" / "onnx" / "pkg" / "slice_filter.onnx").is_file()


def test_bad_safetensors_is_a_clear_error(packaged: Path) -> None:
    (packaged / "segmenter.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises((WeightsFolderError, BackendUnavailable), match="segmenter"):
        CalciumModels.load(packaged, backend="onnxruntime")
