"""The packaged default weights (engine/weights/default/, made by scripts/train-default-weights.sh).

They must load (fp16-stored safetensors into float32 modules, ONNX made on first use), and score
phantoms they never saw through the real command, ``cacstream score --mode model`` with
``--backend auto``, sanely:

* a calcified gated phantom (truth 101-400) gets a nonzero score near the truth;
* a zero-calcium phantom full of bone, aortic-wall and valve calcium scores at most 5 % of what
  threshold mode (every >= 130 HU lesion) finds in the same files, and since v1.2 (the claim rule) it
  scores exactly 0, the models issue's target;
* no lesion the model counts touches that bone / aortic / valve calcium (``other_calcium`` of the
  phantom's truth), checked lesion by lesion through the engine's own model path.

The ONNX files are generated into a fresh engine folder here, so the test also shows that
``--backend auto`` works out of the box on a fresh checkout (it picks ONNX Runtime on a CPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cacstream.engine.weights_location import packaged_weights_dir

WEIGHTS = packaged_weights_dir()
CALCIFIED_SEED, ZERO_SEED = 9700, 9710  # never used in training (seeds 1000..1399)


def _phantoms():
    from cacstream.training.phantom import PhantomConfig, make_phantom

    calc = make_phantom(CALCIFIED_SEED, PhantomConfig(kind="cardiac_gated", calcium_category="101-400",
                                                      z_coverage_mm=36.0, thickness_mm=3.0))
    zero = make_phantom(ZERO_SEED, PhantomConfig(kind="cardiac_gated", calcium_category="0", z_coverage_mm=36.0,
                                                 thickness_mm=3.0, aortic_calcium_probability=1.0,
                                                 valve_calcium_probability=1.0))
    return calc, zero


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory):
    from cacstream.training.phantom import write_series

    root = tmp_path_factory.mktemp("phantoms")
    calc, zero = _phantoms()
    write_series(calc, root / "calc", folder="calcified")
    write_series(zero, root / "zero", folder="zero")
    return root, calc, zero


def _score(path: Path, out: Path, engines: Path, mode: str) -> dict:
    env = {**__import__("os").environ, "CACSTREAM_ENGINES": str(engines)}
    env.pop("CACSTREAM_WEIGHTS", None)
    cmd = [sys.executable, "-m", "cacstream", "score", str(path), "--out", str(out), "--mode", mode,
           "--quiet", "--no-sr", "--no-seg", "--no-key-image"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "run-summary.json"]
    assert len(reports) == 1, sorted(p.name for p in out.iterdir())
    return reports[0]


def test_validation_warning_only_for_weights_that_failed() -> None:
    from cacstream.engine.inference.runtime import validation_warning

    assert validation_warning({"weights_id": "w", "validation": {"passed": True, "summary": "ok"}}) is None
    assert validation_warning({"weights_id": "w"}) is None
    msg = validation_warning({"weights_id": "w", "validation": {"passed": False, "summary": "sens 0.5"}})
    assert msg is not None and "w are NOT validated" in msg and "sens 0.5" in msg


def test_default_weights_are_packaged_small_and_documented() -> None:
    cfg = json.loads((WEIGHTS / "config.json").read_text())
    total = sum(p.stat().st_size for p in WEIGHTS.iterdir() if p.is_file())
    assert total < 25e6, f"{total / 1e6:.1f} MB"
    assert not list(WEIGHTS.glob("*.onnx")), "ONNX files are generated on first use, not shipped"
    for sec in ("slice_filter", "segmenter"):
        assert cfg[sec]["onnx_on_first_use"] is True and cfg[sec]["storage_dtype"] == "float16"
    rec = cfg["training"]
    assert "phantom seeds 1000..1399" in rec["data"]["phantoms"] and rec["command"].startswith("bash scripts/")
    held = cfg["metrics"]["heldout_phantoms"]
    assert held["series"] == 40 and held["seeds"] == "5000..5039"
    assert cfg["validation"]["passed"] is False  # v1 still misses: docs/models.md says what and why


def test_default_weights_load_as_float32_modules() -> None:
    import torch
    from cacstream.training.weights import load_weights

    bundle = load_weights(WEIGHTS)
    for module in (bundle.slice_filter.model, bundle.segmenter.model):
        dtypes = {p.dtype for p in module.parameters()}
        assert dtypes == {torch.float32}
    with torch.no_grad():
        size = bundle.slice_filter.preprocess.input_size  # 512 behind the 4x4 max-pool front
        x = torch.zeros(1, 1, size, size)
        assert torch.isfinite(bundle.slice_filter.model(x)).all()


def test_score_cli_with_default_weights(series, engines: Path, tmp_path: Path) -> None:
    root, calc, zero = series
    truth = float(calc.truth["agatston_total"])
    r_calc = _score(root / "calc", tmp_path / "calc", engines, "model")
    assert r_calc["status"] == "scored" and r_calc["model"]["backend"] == "onnxruntime"
    assert r_calc["agatston_total"] > 0
    # v0 weights missed their held-out targets: every report says so, in words a reader cannot miss
    assert any("NOT validated for clinical use" in w for w in r_calc["warnings"]), r_calc["warnings"]
    assert abs(r_calc["agatston_total"] - truth) <= 0.5 * truth, (r_calc["agatston_total"], truth)
    assert (engines / "default" / "slice_filter.onnx").is_file()  # made on first use, in the engine folder

    r_zero = _score(root / "zero", tmp_path / "zero", engines, "model")
    r_thr = _score(root / "zero", tmp_path / "zero-thr", engines, "threshold")
    assert r_thr["agatston_total"] > 1000  # bone + aortic + valve calcium are in these very files
    # What the v0 weights achieve: bone is excluded, the few misassigned aortic / valve lesions stay a
    # small fraction of the non-coronary calcium in the image (measured: 103 of several thousand).
    assert r_zero["agatston_total"] <= 0.05 * r_thr["agatston_total"]


def test_zero_calcium_phantom_scores_zero(series, engines: Path, tmp_path: Path) -> None:
    """The zero-calcium phantom 9710 (bone, aortic and valve calcium, no coronary) scores 0. The U-Net
    (v1.2, v1.3) still labels part of its aortic / valve calcium as an artery; the claim rule
    (engine/scoring/claims.py) is what excludes it (this was a strict xfail before the rule)."""
    root, _, _ = series
    r_zero = _score(root / "zero", tmp_path / "zero", engines, "model")
    assert r_zero["agatston_total"] == 0.0 and r_zero["lesions"] == []


def test_model_lesions_never_touch_bone_or_aortic_calcium(series, engines: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Lesion by lesion through the engine's own model path. The v0 weights still label some aortic /
    valve / rib calcium as an artery (see the held-out record below), so the test bounds what they let
    through against the non-coronary calcium in the image and fails if it gets worse; issue 4 wants 0."""
    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.inference.runtime import CalciumModels
    from cacstream.engine.scoring.agatston import score_volume
    from cacstream.training.evaluate_default import other_calcium_overlap

    monkeypatch.setenv("CACSTREAM_ENGINES", str(engines))
    models = CalciumModels.load(WEIGHTS, backend="auto", threads=1)
    cfg = AgatstonConfig()
    _, calc, zero = series
    for case in (calc, zero):
        res = run_engine_path(models, case.hu, case.geometry, cfg)
        ov = other_calcium_overlap(case.hu, res.labels, case.other_calcium, case.geometry, cfg)
        assert ov["model_total"] == pytest.approx(res.agatston_total, rel=1e-9, abs=1e-9)
        other = score_volume(case.hu, case.geometry, case.other_calcium.astype(np.uint8),
                             AgatstonConfig().for_reference_labels()).agatston_total
        assert other > 0  # every test phantom holds bone, and the zero-calcium one aortic + valve calcium
        # v0 weights: what they let through stays under 5 % of that calcium; issue 4 wants 0
        assert ov["agatston_touching_other"] <= 0.05 * other, (case.seed, ov, other)


@pytest.mark.xfail(strict=True, reason="issue 4 acceptance not met by the shipped weights (v1.3, a 2-core CPU budget): "
                   "held-out risk-category accuracy 85 % against 90 % and 46 lesions on aortic / valve calcium "
                   "against 0 (the filter's 0.98 / 0.91 meets its targets since the skeletal gate; docs/models.md); "
                   "strict, so it turns red the day retrained weights meet them")
def test_shipped_weights_meet_the_held_out_acceptance() -> None:
    """The held-out evaluation recorded in the weights' config.json (``evaluate_default heldout
    --update-config``) against the issue's targets."""
    cfg = json.loads((WEIGHTS / "config.json").read_text())
    m = cfg["metrics"]["heldout_phantoms"]
    f = m["slice_filter"]["all"]
    assert f["sensitivity"] >= 0.95 and f["specificity"] >= 0.90
    assert m["risk_accuracy"] >= 0.90
    assert m["other_calcium"]["model_lesions_touching"] == 0


def test_shipped_filter_meets_its_held_out_targets() -> None:
    """The part of the acceptance the shipped weights do meet, as recorded by the held-out evaluation:
    slice-filter sensitivity >= 0.95 and specificity >= 0.90 (since the skeletal gate; docs/models.md),
    with the engine's default rules named in the record."""
    cfg = json.loads((WEIGHTS / "config.json").read_text())
    m = cfg["metrics"]["heldout_phantoms"]
    f = m["slice_filter"]["all"]
    assert m["series"] == 40 and f["sensitivity"] >= 0.95 and f["specificity"] >= 0.90, f
    assert "skeletal gate" in m["segment_regions"]
