"""``calibrate evaluate`` (calibration/evaluate.py): metrics against hand-computed cases, the evaluation path
against the engine's own scoring, and the whole CLI chain build → quantize → evaluate on tiny weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _calibration_data import phantom_folder
from _tiny_weights import MATRIX, tiny_weights_dir
from cacstream.calibration.evaluate import (
    Counts,
    GateConfig,
    agatston_agreement,
    apply_gate,
    confusion,
    dice_metrics,
    filter_metrics,
    scored_mask,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


# --------------------------------------------------------------------------- metrics by hand


def test_confusion_counts_and_rates() -> None:
    c = Counts()
    c.add_confusion("k", np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool))
    m = filter_metrics(c.filt["k"])
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (2, 1, 1, 1)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1 / 2)
    assert m["agreement"] == pytest.approx(3 / 5)
    assert filter_metrics({"tp": 0, "fn": 0, "tn": 4, "fp": 0})["sensitivity"] is None


def test_pooled_dice_by_hand() -> None:
    c = Counts()
    a = np.zeros((2, 3, 3), np.uint8)
    b = np.zeros((2, 3, 3), np.uint8)
    a[0, 0, :2] = 2  # LAD: 2 voxels
    b[0, 0, 1:] = 2  # LAD: 2 voxels, 1 shared
    a[1, 2, 2] = 4  # RCA only in a
    c.add_dice("x", a, b)
    c.add_dice("x", a, a)  # a second series, identical: pooled, not averaged
    d = dice_metrics(c.dice["x"])
    assert d["LAD"] == pytest.approx((2 * 1 + 2 * 2) / (4 + 4))
    assert d["RCA"] == pytest.approx((0 + 2) / (1 + 2))
    assert d["LM"] is None and d["LCX"] is None


def test_scored_mask_applies_the_agatston_threshold() -> None:
    hu = np.array([[[100.0, 130.0, 500.0]]])
    lab = np.array([[[2, 2, 0]]], np.uint8)
    np.testing.assert_array_equal(scored_mask(lab, hu, 130.0), [[[0, 2, 0]]])


def test_agatston_agreement_by_hand() -> None:
    fp32 = [0.0, 10.0, 100.0, 400.0]
    int8 = [0.5, 12.0, 104.0, 400.0]  # diffs 0.5, 2, 4, 0: within max(1, 5 %): yes, no, yes, yes
    r = agatston_agreement(fp32, int8)
    d = np.array([0.5, 2.0, 4.0, 0.0])
    assert r["mean_diff"] == pytest.approx(d.mean()) and r["sd_diff"] == pytest.approx(d.std(ddof=1))
    assert r["loa_high"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    assert r["max_abs_diff"] == 4.0 and r["within_1pt_or_5pct"] == pytest.approx(0.75)


def test_risk_confusion_by_hand() -> None:
    m = confusion(["0", "0", "11-100", ">400"], ["0", "1-10", "11-100", ">400"])
    assert m[0][0] == 1 and m[0][1] == 1 and m[2][2] == 1 and m[4][4] == 1 and sum(map(sum, m)) == 4


def _metrics(s32: float, s8: float, same: int, n: int) -> dict:
    return {
        "filter": {
            "fp32_vs_truth": {"sensitivity": s32},
            "int8_vs_truth": {"sensitivity": s8},
            "int8_vs_fp32": {"sensitivity": 1.0},
        },
        "risk": {"int8_vs_fp32_agreement": same / n, "int8_vs_fp32_same": same},
        "series": n,
    }


def test_gate_thresholds() -> None:
    assert apply_gate(_metrics(0.95, 0.945, 49, 50), GateConfig())["passed"]  # 0.5 point, 98 %
    g = apply_gate(_metrics(0.95, 0.935, 50, 50), GateConfig())  # 1.5 points
    assert not g["passed"] and not g["checks"][0]["passed"] and g["checks"][1]["passed"]
    assert not apply_gate(_metrics(0.95, 0.965, 50, 50), GateConfig())["passed"]  # |diff|: a gain fails too
    g = apply_gate(_metrics(0.95, 0.95, 48, 50), GateConfig())  # 96 %
    assert not g["passed"] and g["checks"][1]["value"] == pytest.approx(96.0)
    assert apply_gate(_metrics(0.95, 0.95, 48, 50), GateConfig(min_risk_agreement_pct=95.0))["passed"]
    no_truth = _metrics(0.9, 0.9, 10, 10)
    no_truth["filter"]["fp32_vs_truth"] = {"sensitivity": None}
    no_truth["filter"]["int8_vs_fp32"]["sensitivity"] = 0.985
    g = apply_gate(no_truth, GateConfig())
    assert not g["passed"] and "no truth" in g["checks"][0]["name"]


# -------------------------------------------------------------- the path is the engine's path


def test_evaluation_path_scores_like_the_engine(
    weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from cacstream.calibration.build import find_series
    from cacstream.calibration.evaluate import run_engine_path
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.inference.runtime import CalciumModels
    from cacstream.engine.pipeline.models import ModelStages
    from cacstream.engine.pipeline.scorer import score_series
    from cacstream.engine.series import read_volume

    m = CalciumModels.load(weights, backend="onnxruntime", batch_size=4)
    series, _, _ = find_series([phantom_folder(tmp_path_factory)], quiet=True)
    for s in series:
        engine = score_series(s, AgatstonConfig(), models=ModelStages(m)).scored
        ours = run_engine_path(m, read_volume(s).hu, s.geometry, AgatstonConfig())
        assert int(ours.flags.sum()) == engine.slices_flagged
        assert ours.agatston_total == pytest.approx(engine.result.agatston_total, rel=1e-9, abs=1e-9)
        assert ours.risk == engine.result.risk_category


# ------------------------------------------------------------------------ the CLI, end to end


def test_cli_build_quantize_evaluate(
    weights: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from cacstream.engine.cli import main

    src = phantom_folder(tmp_path_factory)
    assert (
        main(
            [
                "calibrate",
                "build",
                str(src),
                "--out",
                str(tmp_path / "set"),
                "--weights",
                str(weights),
                "-n",
                "16",
                "--seed",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "calibrate",
                "quantize",
                str(weights),
                "--set",
                str(tmp_path / "set"),
                "--out",
                str(tmp_path / "q"),
                "--method",
                "max",
                "--max-fp32-layers",
                "1",
                "--fp32-share",
                "0.01",
                "--sensitivity-slices",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    rec = json.loads((tmp_path / "q" / "int8.json").read_text())
    assert rec["sensitivity_rule"] == {"max_fp32_layers": 1, "fp32_share": 0.01, "slices": 4}
    for m in rec["models"].values():  # at most one layer kept, the top-ranked one (a share >= 1 % is sure)
        assert m["sensitivity"]["kept_fp32"] == [m["sensitivity"]["layers"][0]["node"]]
        assert m["sensitivity"]["check_slices"] == 4
    assert main(["calibrate", "quantize", str(weights), "--set", str(tmp_path / "set"), "--out",
                 str(tmp_path / "q2"), "--fp32-share", "2", "--quiet"]) != 0
    out = tmp_path / "report"
    code = main(
        [
            "calibrate",
            "evaluate",
            str(weights),
            "--phantoms",
            "3",
            "--seed",
            "9800",
            "--matrix",
            str(MATRIX),
            "--z-coverage",
            "30",
            "--int8",
            str(tmp_path / "q"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    for f in (
        "report.md",
        "metrics.json",
        "per_series.csv",
        "agatston_int8_vs_fp32.png",
        "risk_confusion.png",
        "dice_per_artery.png",
    ):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    doc = json.loads((out / "metrics.json").read_text())
    met = doc["metrics"]
    assert doc["context"]["int8_record"]["method"] == "max"
    assert code == (0 if met["gate"]["passed"] else 1)
    with open(out / "per_series.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == met["series"] == 3
    # the gate's risk agreement is the share of series whose categories match in the CSV
    same = sum(r["fp32_risk"] == r["int8_risk"] for r in rows)
    assert met["risk"]["int8_vs_fp32_agreement"] == pytest.approx(same / 3)
    # the truth columns are the phantoms' own truth
    from cacstream.training.phantom import PhantomConfig, make_phantom

    truth = make_phantom(
        9800, PhantomConfig(kind="mixed", matrix=MATRIX, z_coverage_mm=30.0, calcium_category="0")
    ).truth
    assert float(rows[0]["truth_agatston"]) == pytest.approx(truth["agatston_total"])
    assert int(rows[0]["truth_flagged"]) == sum(truth["slice_has_coronary_calcium"])
    # confusion counts add up to the slices
    for k, v in met["filter"].items():
        assert v["tp"] + v["fn"] + v["tn"] + v["fp"] == met["slices"], k
    text = (out / "report.md").read_text()
    assert ("PASS" if met["gate"]["passed"] else "FAIL") in text.splitlines()[0]
    assert "risk-category agreement INT8 vs FP32" in text


def test_cli_evaluate_on_series_folders_and_bad_input(
    weights: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import shutil

    from _calibration_data import calibration_set
    from _tiny_weights import TRAIN_SEEDS
    from cacstream.calibration.evaluate import training_phantom_seeds
    from cacstream.calibration.quantize import QuantizeConfig, quantize_weights
    from cacstream.calibration.sets import load_set
    from cacstream.engine.cli import main

    w = tmp_path / "w"
    shutil.copytree(weights, w)
    assert training_phantom_seeds(w) == [(TRAIN_SEEDS[0], TRAIN_SEEDS[0] + TRAIN_SEEDS[1] - 1)]
    # the tiny weights were trained on seeds 9100..9105: evaluating on them is refused (held-out only)
    assert (
        main(
            [
                "calibrate",
                "evaluate",
                str(w),
                "--phantoms",
                "3",
                "--seed",
                "9099",
                "--matrix",
                "64",
                "--out",
                str(tmp_path / "seen"),
                "--quiet",
            ]
        )
        == 2
    )
    assert not (tmp_path / "seen").exists()
    # no INT8 graphs yet: a clear error, not a traceback
    assert (
        main(["calibrate", "evaluate", str(w), "--phantoms", "1", "--out", str(tmp_path / "r0"), "--quiet"])
        == 2
    )
    quantize_weights(w, load_set(calibration_set(tmp_path_factory)), None, QuantizeConfig(), quiet=True)
    code = main(
        [
            "calibrate",
            "evaluate",
            str(w),
            "--set",
            str(phantom_folder(tmp_path_factory)),
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    met = json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]
    assert code in (0, 1) and met["series"] == 4 and "fp32_vs_truth" in met["dice"]
