"""The held-out evaluation's arithmetic (training/evaluate_default.py), on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from cacstream.training.evaluate_default import add_conf, confusion_metrics, new_conf, other_calcium_overlap


def test_confusion_metrics_by_hand() -> None:
    c = new_conf()
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0], bool)
    ref = np.array([1, 1, 0, 1, 0, 0, 0, 1, 0, 0], bool)
    add_conf(c, pred, ref)
    assert c == {"tp": 3, "fp": 1, "tn": 5, "fn": 1}
    m = confusion_metrics(c)
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(5 / 6)
    assert m["precision_1"] == pytest.approx(3 / 4) and m["f1_1"] == pytest.approx(0.75)
    assert m["precision_0"] == pytest.approx(5 / 6) and m["accuracy"] == pytest.approx(0.8)


def test_confusion_metrics_without_positives_are_undefined_not_zero() -> None:
    c = new_conf()
    add_conf(c, np.zeros(4, bool), np.zeros(4, bool))
    m = confusion_metrics(c)
    assert m["sensitivity"] is None and m["f1_1"] is None and m["specificity"] == 1.0


def test_other_calcium_overlap_hand_case() -> None:
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.series.types import Geometry

    hu = np.full((2, 8, 8), -50.0)
    hu[0, 1:3, 1:3] = 450.0  # 4 px = 4 mm², weight 4 -> 16; overlaps "other" calcium
    hu[1, 5:7, 5:8] = 250.0  # 6 px = 6 mm², weight 2 -> 12; coronary only
    labels = np.zeros(hu.shape, np.uint8)
    labels[0, 1:3, 1:3] = 2
    labels[1, 5:7, 5:8] = 4
    other = np.zeros(hu.shape, bool)
    other[0, 1, 1:3] = True  # half of the first lesion
    geom = Geometry(rows=8, columns=8, pixel_spacing_mm=(1.0, 1.0), slice_thickness_mm=3.0,
                    slice_increment_mm=3.0, normal=(0.0, 0.0, 1.0), z_mm=(0.0, 3.0))
    ov = other_calcium_overlap(hu, labels, other, geom, AgatstonConfig())
    assert ov["model_total"] == pytest.approx(28.0)
    assert ov["lesions_touching_other"] == 1 and ov["agatston_touching_other"] == pytest.approx(16.0)
    assert ov["agatston_share_inside_other"] == pytest.approx(8.0)
