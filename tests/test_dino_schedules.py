"""Cosine schedules against DINO's formula, evaluated independently point by point."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cacstream.training.dino.schedules import cosine_scheduler, teacher_temperature_schedule


def test_cosine_with_warmup_matches_formula() -> None:
    s = cosine_scheduler(1.0, 0.1, epochs=4, niter_per_ep=5, warmup_epochs=1, start_warmup_value=0.0)
    assert len(s) == 20
    np.testing.assert_allclose(s[:5], np.linspace(0, 1, 5))
    n = 15
    for i in range(n):
        assert s[5 + i] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * i / n)))


def test_momentum_schedule_goes_from_base_towards_one() -> None:
    m = cosine_scheduler(0.996, 1.0, epochs=3, niter_per_ep=10)
    assert m[0] == pytest.approx(0.996)
    assert np.all(np.diff(m) >= 0) and m[-1] < 1.0 and m[-1] > 0.9999


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        cosine_scheduler(1, 0, epochs=2, niter_per_ep=3, warmup_epochs=3)
    with pytest.raises(ValueError):
        teacher_temperature_schedule(0.04, 0.07, 5, 3)
