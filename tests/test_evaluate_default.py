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


class _Oracle:
    """Flags every slice and 'segments' with fixed labels: the truth plus half of a non-coronary deposit."""

    filter_threshold = 0.5
    region_rule = "whole slice (test oracle)"

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def filter_decisions(self, hu, pixel_spacing_mm=None):  # noqa: ANN001, ANN201
        assert len(pixel_spacing_mm) == 2  # the engine path passes the series' one (row, column) pair
        return np.ones(len(hu)), None

    def segment(self, hu, regions=None):  # noqa: ANN001, ANN201
        assert len(hu) == len(self.labels)
        return self.labels.copy()


def test_heldout_metrics_count_the_claim_rule_and_record_the_rules() -> None:
    """A 3-slice case by hand: one LAD plaque (truth) and an aortic deposit the 'model' labels half of.
    The claim rule excludes the half-claimed deposit, so the score, category and Dice equal the truth's,
    the exclusion is counted under its reason, and the metrics record the rules they were measured with."""
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.agatston import score_volume
    from cacstream.engine.series.types import Geometry
    from cacstream.training.evaluate_default import HeldoutCase, evaluate_heldout

    hu = np.full((3, 32, 32), 40.0, np.float32)
    truth = np.zeros(hu.shape, np.uint8)
    other = np.zeros(hu.shape, bool)
    hu[1, 4:8, 4:8] = 350.0  # LAD plaque: 16 px
    truth[1, 4:8, 4:8] = 2
    hu[2, 20:26, 20:26] = 500.0  # aortic deposit: 36 px
    other[2, 20:26, 20:26] = True
    model = truth.copy()
    model[2, 20:23, 20:26] = 1  # half of it labelled LM
    g = Geometry(rows=32, columns=32, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=3.0, slice_increment_mm=3.0,
                 normal=(0.0, 0.0, 1.0), z_mm=(0.0, 3.0, 6.0))
    ref = score_volume(hu, g, truth, AgatstonConfig().for_reference_labels())
    case = HeldoutCase(7, "cardiac_gated", hu, g, truth, other, {
        "slice_has_coronary_calcium": [False, True, False], "agatston_total": ref.agatston_total,
        "agatston_per_artery": ref.agatston_per_artery, "risk_category": ref.risk_category})
    metrics, rows = evaluate_heldout(_Oracle(model), [case], 1, quiet=True)
    assert ref.agatston_total == 16 * 0.25 * 3  # 4 mm² at weight 3
    assert rows[0]["model_agatston"] == ref.agatston_total and metrics["risk_accuracy"] == 1.0
    assert rows[0]["model_lesions_excluded_claim"] == 1 and rows[0]["model_lesions_excluded_skeletal"] == 0
    assert metrics["other_calcium"]["model_lesions_touching"] == 0
    assert metrics["other_calcium"]["model_lesions_excluded_claim"] == 1
    assert metrics["lesion_rules"] == {"min_claimed_share": 0.75, "skeletal_component_mm3": 2000.0,
                                       "min_bone_distance_mm": 8.0, "cardiac_levels": True}
    assert rows[0]["model_lesions_excluded_outside_levels"] == 0
    assert metrics["other_calcium"]["model_lesions_excluded_outside_levels"] == 0
    assert metrics["segment_regions"] == "whole slice (test oracle)"
