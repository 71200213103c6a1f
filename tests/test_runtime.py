"""The model runtime (engine/inference/runtime.py): kernels preprocessing → filter → threshold →
segmenter → argmax → labels at native size, on every CPU backend, against independent references.

Includes the issue-6 acceptance check "backends agree": on the COCA samples and 10 phantoms, ONNX
Runtime FP32 and PyTorch give the same slice decisions and Agatston within 0.1 % — with the tiny
weights trained in this session, and (stricter) with the shipped default weights when present.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cacstream.engine.backends.base import BackendUnavailable
from cacstream.engine.inference.runtime import CalciumModels, nearest_indices, sigmoid
from cacstream.engine.inference.weights_spec import WEIGHTS_FORMAT, WeightsFolderError, read_weights_spec

from _tiny_weights import FILTER_INPUT_SIZE, INPUT_SIZE, MATRIX, TRAIN_SEEDS, tiny_weights_dir

AGREEMENT_PHANTOM_SEEDS = range(9300, 9310)  # never used to train the tiny weights (TRAIN_SEEDS)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def runtimes(tiny_weights: Path) -> dict[str, CalciumModels]:
    # one intra-op thread: the test machine is shared, and 2 OpenMP threads against a busy core cost
    # 100x on these tiny models (see torch_backend's docstring); results do not depend on it
    return {be: CalciumModels.load(tiny_weights, backend=be, batch_size=4, threads=1) for be in ("onnxruntime", "torch")}


@pytest.fixture(scope="module")
def phantom_hu() -> np.ndarray:
    from cacstream.training.phantom import PhantomConfig, make_phantom

    case = make_phantom(9400, PhantomConfig(matrix=MATRIX, z_coverage_mm=24.0, calcium_category="101-400"))
    return case.hu


def _copy_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


# ------------------------------------------------------------------------------ small functions


def test_weights_format_matches_the_training_export() -> None:
    from cacstream.training.weights import FORMAT

    assert WEIGHTS_FORMAT == FORMAT


def test_nearest_indices_equal_torch_nearest_exact() -> None:
    import torch
    import torch.nn.functional as F

    for src, dst in [(32, 64), (32, 512), (224, 512), (512, 224), (7, 5), (5, 7), (3, 3)]:
        grid = torch.arange(src, dtype=torch.float32).view(1, 1, src, 1).expand(1, 1, src, 1)
        ref = F.interpolate(grid, size=(dst, 1), mode="nearest-exact")[0, 0, :, 0].long().numpy()
        np.testing.assert_array_equal(nearest_indices(src, dst), ref, err_msg=f"{src}->{dst}")


def test_sigmoid_is_stable_and_exact() -> None:
    z = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0])
    p = sigmoid(z)
    assert np.all(np.isfinite(p)) and p[0] == 0.0 and p[-1] == 1.0 and p[3] == 0.5
    np.testing.assert_allclose(p[1:-1], 1 / (1 + np.exp(-z[1:-1])), rtol=1e-12)


# ------------------------------------------------------------------------- against references


def _reference(tiny_weights: Path, hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training's own torch preprocessing + the modules + torch nearest-exact resize of the argmax."""
    import torch
    import torch.nn.functional as F

    from cacstream.training.datasets.preprocess import preprocess_slices
    from cacstream.training.weights import load_weights

    b = load_weights(tiny_weights)
    with torch.no_grad():
        logits = b.slice_filter.model(preprocess_slices(hu, b.slice_filter.preprocess)).double().numpy()
        seg = b.segmenter.model(preprocess_slices(hu, b.segmenter.preprocess)).argmax(dim=1)
        labels = F.interpolate(seg[:, None].float(), size=hu.shape[1:], mode="nearest-exact")[:, 0]
    return 1 / (1 + np.exp(-logits)), labels.to(torch.uint8).numpy()


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_runtime_matches_the_training_reference(backend: str, runtimes: dict, tiny_weights: Path,
                                                phantom_hu: np.ndarray) -> None:
    m = runtimes[backend]
    p_ref, labels_ref = _reference(tiny_weights, phantom_hu)
    p = m.filter_probabilities(phantom_hu)
    assert p.shape == (len(phantom_hu),) and p.dtype == np.float64
    np.testing.assert_allclose(p, p_ref, atol=1e-5)
    labels = m.segment(phantom_hu)
    assert labels.shape == phantom_hu.shape == (len(phantom_hu), MATRIX, MATRIX) and labels.dtype == np.uint8
    mismatch = float(np.mean(labels != labels_ref))
    assert mismatch < 1e-3, mismatch  # argmax near-ties may flip a pixel between float paths
    np.testing.assert_array_equal(m.filter_flags(phantom_hu), p >= m.filter_threshold)


def test_low_level_steps_give_identical_results(runtimes: dict, phantom_hu: np.ndarray) -> None:
    m = runtimes["onnxruntime"]
    x = m.preprocess(phantom_hu, "filter")
    assert x.shape == (len(phantom_hu), 1, FILTER_INPUT_SIZE, FILTER_INPUT_SIZE) and x.dtype == np.float32
    np.testing.assert_array_equal(m.probabilities(m.infer(x, "filter").logits), m.filter_probabilities(phantom_hu))
    xs = m.preprocess(phantom_hu, "segmenter")
    labels = m.labels_from_logits(m.infer(xs, "segmenter").logits, phantom_hu.shape[1:])
    np.testing.assert_array_equal(labels, m.segment(phantom_hu))


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_size_does_not_change_results(batch_size: int, tiny_weights: Path, runtimes: dict,
                                            phantom_hu: np.ndarray) -> None:
    base = runtimes["onnxruntime"]
    m = CalciumModels.load(tiny_weights, backend="onnxruntime", batch_size=batch_size, threads=1)
    assert m.filter_backend.max_batch_size == batch_size
    np.testing.assert_allclose(m.filter_probabilities(phantom_hu), base.filter_probabilities(phantom_hu), atol=1e-6)
    np.testing.assert_array_equal(m.segment(phantom_hu), base.segment(phantom_hu))


def test_input_forms(runtimes: dict, phantom_hu: np.ndarray) -> None:
    m = runtimes["onnxruntime"]
    whole = m.filter_probabilities(phantom_hu)
    np.testing.assert_array_equal(m.filter_probabilities(list(phantom_hu)), whole)
    np.testing.assert_array_equal(m.filter_probabilities(phantom_hu[2]), whole[2:3])
    assert m.segment(phantom_hu[:0]).shape == (0, MATRIX, MATRIX)
    assert m.filter_probabilities(phantom_hu[:0]).shape == (0,)
    # mixed sizes: the filter groups them; the segmenter refuses (labels are per size)
    small = phantom_hu[0, ::2, ::2].copy()
    mixed = m.filter_probabilities([phantom_hu[0], small, phantom_hu[1]])
    assert mixed[0] == whole[0] and mixed[2] == whole[1]
    assert mixed[1] == m.filter_probabilities(small)[0]
    with pytest.raises(ValueError, match="different sizes"):
        m.segment([phantom_hu[0], small])


def test_model_info_and_configs(runtimes: dict, tiny_weights: Path) -> None:
    cfg = json.loads((tiny_weights / "config.json").read_text())
    for name, m in runtimes.items():
        info = m.info
        assert (info.weights_id, info.backend, info.precision, info.device) == ("tiny-test", name, "fp32", "cpu")
        assert info.filter_threshold == m.filter_threshold == cfg["slice_filter"]["threshold"]
        assert (m.filter_config.input_size, m.segmenter_config.input_size) == (FILTER_INPUT_SIZE, INPUT_SIZE)
        assert m.filter_config.to_dict() == cfg["slice_filter"]["preprocess"]


def test_auto_picks_onnxruntime_on_this_cpu(tiny_weights: Path) -> None:
    from cacstream.engine.backends.select import gpu_present

    if gpu_present():
        pytest.skip("a GPU is present; auto prefers GPU backends")
    m = CalciumModels.load(tiny_weights)
    assert m.choice.name == "onnxruntime" and m.info.backend == "onnxruntime" and not m.notes


def test_pipeline_model_stages_use_the_runtime(tiny_weights: Path, phantom_hu: np.ndarray, runtimes: dict) -> None:
    from cacstream.engine.config import ScoreConfig
    from cacstream.engine.pipeline.models import load_models

    stages = load_models(ScoreConfig(weights_dir=str(tiny_weights), backend="onnxruntime", batch_size=4))
    p = stages.filter_probabilities(list(phantom_hu))
    np.testing.assert_allclose(p, runtimes["onnxruntime"].filter_probabilities(phantom_hu))
    labels = stages.segment(list(phantom_hu[:3]))
    np.testing.assert_array_equal(np.stack(labels), runtimes["onnxruntime"].segment(phantom_hu[:3]))


# ------------------------------------------------------------------------------ bad weights folders


def test_broken_config_json_names_the_file(tiny_weights: Path, tmp_path: Path) -> None:
    w = _copy_weights(tiny_weights, tmp_path / "w")
    (w / "config.json").write_text("{ not json")
    for backend in ("onnxruntime", "torch", "auto"):
        with pytest.raises(WeightsFolderError, match=r"w/config\.json: not valid JSON"):
            CalciumModels.load(w, backend=backend)


def test_missing_onnx_names_the_file_and_auto_falls_back(tiny_weights: Path, tmp_path: Path) -> None:
    w = _copy_weights(tiny_weights, tmp_path / "w")
    (w / "segmenter.onnx").unlink()
    with pytest.raises(WeightsFolderError, match=r"w/segmenter\.onnx: fp32 ONNX file of the segmenter not found"):
        CalciumModels.load(w, backend="onnxruntime")
    m = CalciumModels.load(w, backend="auto")
    assert m.choice.name == "torch" and any("segmenter.onnx" in n for n in m.notes)


def test_mismatched_input_size_names_the_onnx_file(tiny_weights: Path, tmp_path: Path) -> None:
    w = _copy_weights(tiny_weights, tmp_path / "w")
    _edit_config(w, lambda c: c["slice_filter"]["preprocess"].update(input_size=48))
    with pytest.raises(ValueError, match=r"slice_filter\.onnx: input 'slices' is \(batch, 1, 64, 64\) but the "
                                         r"weights' config\.json says \(batch, 1, 48, 48\)"):
        CalciumModels.load(w, backend="onnxruntime")
    with pytest.raises(WeightsFolderError, match=r"config\.json: slice_filter: preprocess\.input_size 48"):
        CalciumModels.load(w, backend="torch")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("segmenter"), r"no 'segmenter' section"),
    (lambda c: c["slice_filter"].update(threshold=1.5), r"slice_filter: threshold must be a probability"),
    (lambda c: c["segmenter"].update(classes=["bg", "a"]), r"segmenter: classes"),
    (lambda c: c["slice_filter"]["preprocess"].update(normalisation="zscore"), r"slice_filter\.preprocess"),
    (lambda c: c.update(format="other/1"), r"format 'other/1'"),
])
def test_invalid_config_values_name_the_file_and_key(edit, message: str, tiny_weights: Path, tmp_path: Path) -> None:
    w = _copy_weights(tiny_weights, tmp_path / "w")
    _edit_config(w, edit)
    with pytest.raises(WeightsFolderError, match=r"config\.json.*" + message):
        read_weights_spec(w)


def test_precision_file_conventions(tiny_weights: Path, tmp_path: Path) -> None:
    w = _copy_weights(tiny_weights, tmp_path / "w")
    spec = read_weights_spec(w)
    assert spec.filter.onnx_name("fp32") == "slice_filter.onnx"
    assert spec.filter.onnx_name("int8") == "slice_filter.int8.onnx"
    assert spec.segmenter.onnx_name("fp16") == "segmenter.fp16.onnx"
    with pytest.raises(WeightsFolderError, match=r"slice_filter\.int8\.onnx.*not found.*calibrate"):
        spec.filter.onnx_path("int8")
    extra = tmp_path / "engines"
    extra.mkdir()
    shutil.copy(w / "slice_filter.onnx", extra / "slice_filter.int8.onnx")
    assert spec.filter.onnx_path("int8", (extra,)) == extra / "slice_filter.int8.onnx"
    _edit_config(w, lambda c: c["slice_filter"].update(onnx_variants={"int8": "custom-q.onnx"}))
    assert read_weights_spec(w).filter.onnx_name("int8") == "custom-q.onnx"


def test_unavailable_precision_is_explained(tiny_weights: Path) -> None:
    with pytest.raises(BackendUnavailable, match="offers fp32, bf16 on cpu, not int8"):
        CalciumModels.load(tiny_weights, backend="torch", precision="int8")
    with pytest.raises(WeightsFolderError, match=r"slice_filter\.int8\.onnx"):
        CalciumModels.load(tiny_weights, backend="onnxruntime", precision="int8")


def test_fp16_graph_runs_on_onnxruntime_cpu(tiny_weights: Path, tmp_path: Path, runtimes: dict,
                                           phantom_hu: np.ndarray) -> None:
    from cacstream.calibration.fp16 import convert_weights_fp16

    w = _copy_weights(tiny_weights, tmp_path / "w")
    convert_weights_fp16(w)
    m = CalciumModels.load(w, backend="onnxruntime", precision="fp16")
    assert m.info.precision == "fp16" and m.filter_backend.input_dtype == "float32"
    np.testing.assert_allclose(m.filter_probabilities(phantom_hu),
                               runtimes["onnxruntime"].filter_probabilities(phantom_hu), atol=2e-3)


# --------------------------------------------------------------------------- backends agree (issue 6)


def _score_series(m: CalciumModels, hu: np.ndarray, geometry) -> tuple[np.ndarray, np.ndarray, object]:
    """The pipeline's model mode: segment flagged slices only (around their flagged patches, the
    engine's default regions), score with the labels."""
    from cacstream.engine.scoring.agatston import score_volume

    p, patches = m.filter_decisions(hu, tuple(geometry.pixel_spacing_mm))
    flags = p >= m.filter_threshold
    labels = np.zeros(hu.shape, np.uint8)
    if flags.any():
        labels[flags] = m.segment(hu[flags], None if patches is None else patches[flags])
    return p, flags, score_volume(hu, geometry, labels)


def _agreement_cases(coca_root: Path | None, phantom_matrix: int, z_mm: float) -> list[tuple[str, np.ndarray, object]]:
    from cacstream.training.phantom import PhantomConfig, make_phantom

    cases = []
    if coca_root is not None:
        from cacstream.training.data.coca import (
            list_gated_patients,
            list_nongated_patients,
            load_gated_patient,
            load_nongated_patient,
        )

        for pid in list_gated_patients(coca_root):
            v = load_gated_patient(coca_root, pid).volume
            cases.append((f"coca gated {pid}", v.hu, v.geometry))
        for pid in list_nongated_patients(coca_root):
            v = load_nongated_patient(coca_root, pid).volume
            cases.append((f"coca non-gated {pid}", v.hu, v.geometry))
    for seed in AGREEMENT_PHANTOM_SEEDS:
        assert not TRAIN_SEEDS[0] <= seed < TRAIN_SEEDS[0] + TRAIN_SEEDS[1]
        c = make_phantom(seed, PhantomConfig(matrix=phantom_matrix, z_coverage_mm=z_mm))
        cases.append((f"phantom {seed}", c.hu, c.geometry))
    return cases


def _assert_agree(a: CalciumModels, b: CalciumModels, cases: list, per_artery: bool) -> None:
    problems = []
    for name, hu, geometry in cases:
        pa, fa, ra = _score_series(a, hu, geometry)
        pb, fb, rb = _score_series(b, hu, geometry)
        if not np.array_equal(fa, fb):
            problems.append(f"{name}: slice decisions differ at {np.flatnonzero(fa != fb).tolist()}")
        if np.abs(pa - pb).max(initial=0.0) > 1e-5:  # the decisions agree for any threshold, not just this one
            problems.append(f"{name}: filter probabilities differ by {np.abs(pa - pb).max():.2e}")
        pairs = [("total", ra.agatston_total, rb.agatston_total)]
        if per_artery:
            pairs += [(k, ra.agatston_per_artery[k], rb.agatston_per_artery[k]) for k in ra.agatston_per_artery]
            if ra.risk_category != rb.risk_category:
                problems.append(f"{name}: risk {ra.risk_category} vs {rb.risk_category}")
        for what, x, y in pairs:
            if abs(x - y) > 1e-3 * max(abs(x), abs(y)) + 1e-9:
                problems.append(f"{name}: Agatston {what} {x:.3f} vs {y:.3f}")
    assert not problems, "\n".join(problems)


def test_backends_agree_on_coca_and_phantoms(runtimes: dict, coca_root: Path) -> None:
    """Issue 6 acceptance, tiny weights: ORT FP32 and PyTorch, same decisions, Agatston within 0.1 %."""
    cases = _agreement_cases(coca_root, MATRIX, 24.0)
    assert len(cases) >= 10 + 3
    _assert_agree(runtimes["onnxruntime"], runtimes["torch"], cases, per_artery=False)


def test_backends_agree_with_the_shipped_default_weights(coca_root: Path) -> None:
    """Issue 6 acceptance, stricter: the shipped default weights, full-size phantoms, and also every
    artery's Agatston within 0.1 % and the same risk category."""
    from cacstream.engine.weights_location import WeightsNotFound, resolve_weights_dir

    try:
        weights = resolve_weights_dir()
    except WeightsNotFound as e:
        pytest.skip(f"no default weights shipped yet ({e})")
    ort_m = CalciumModels.load(weights, backend="onnxruntime", batch_size=16)
    torch_m = CalciumModels.load(weights, backend="torch", batch_size=16)
    _assert_agree(ort_m, torch_m, _agreement_cases(coca_root, 512, 24.0), per_artery=True)
