"""`cacstream demo` (the README's quick start) end to end, small: its exit code separates what the
engine must guarantee (every series reported; threshold mode exact) from what the weights measure
(model-mode categories against the phantom truth, shown and counted, an error only when asked)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cacstream.engine.cli import main

from _tiny_weights import tiny_weights_dir

FAST = ["--series", "2", "--matrix", "64", "--rate", "400", "--quiet-s", "0.5", "--no-live", "--timeout-s", "120"]


def test_threshold_demo_scores_every_series_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--mode", "threshold", *FAST]) == 0
    err = capsys.readouterr().err
    assert err.count("yes") >= 2 and "not reported" not in err


def test_model_demo_exit_code_counts_disagreements_only_when_asked(
        tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    weights = str(tiny_weights_dir(tmp_path_factory))
    assert main(["demo", "--mode", "model", "--weights", weights, *FAST]) == 0
    err = capsys.readouterr().err
    assert "not reported" not in err
    code = main(["demo", "--mode", "model", "--weights", weights, "--require-agreement", *FAST])
    err = capsys.readouterr().err
    m = re.search(r"(\d+) of 2 model-mode risk categories disagree", err)
    assert code == (1 if m else 0), err
    if m:  # the table says the same: one red "no" per disagreement
        assert err.count("no") >= int(m.group(1))


def test_demo_without_weights_in_model_mode_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--mode", "model", "--weights", str(tmp_path / "none"), *FAST]) == 5
    assert "cacstream demo --mode model" in capsys.readouterr().err
