"""Per-iteration schedules (facebookresearch/dino ``utils.cosine_scheduler``) and the per-epoch teacher
temperature schedule of ``DINOLoss``.

Schedules are plain arrays indexed by the global iteration, so a resumed run needs nothing but the
iteration counter to continue on exactly the same curve.
"""

from __future__ import annotations

import math

import numpy as np


def cosine_scheduler(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Linear warm-up from ``start_warmup_value`` to ``base_value`` over ``warmup_epochs``, then a
    half-cosine from ``base_value`` to ``final_value``; one value per iteration (epochs × niter_per_ep).
    """
    if epochs < 1 or niter_per_ep < 1:
        raise ValueError(f"need epochs >= 1 and niter_per_ep >= 1, got {epochs}, {niter_per_ep}")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    n = max(len(iters), 1)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(math.pi * iters / n))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def teacher_temperature_schedule(
    warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: int, epochs: int
) -> np.ndarray:
    """One teacher temperature per epoch: linear warm-up, then constant (DINO's DINOLoss)."""
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_teacher_temp_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
    return np.concatenate(
        (
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs),
            np.ones(epochs - warmup_epochs) * teacher_temp,
        )
    )
