"""DINOLoss against facebookresearch/dino's loss written out in the test (equal crop counts), the
variable-crop generalisation, centring, and the teacher temperature schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cacstream.training.dino.loss import DINOLoss


def reference_dino_loss(
    student_output: torch.Tensor,
    teacher_output: torch.Tensor,
    center: torch.Tensor,
    ncrops: int,
    temp: float,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """DINO's DINOLoss.forward, verbatim in behaviour: chunked views, skip same view, mean of batch means."""
    student_out = (student_output / student_temp).chunk(ncrops)
    teacher_out = F.softmax((teacher_output - center) / temp, dim=-1).detach().chunk(2)
    total, n = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            n += 1
    return total / n


def test_equals_dino_with_equal_crop_counts() -> None:
    torch.manual_seed(0)
    b, k, n_local = 5, 32, 3
    teacher = torch.randn(2 * b, k)
    student = torch.randn((2 + n_local) * b, k)  # crop-major: g1 | g2 | l1 | l2 | l3
    loss = DINOLoss(k, 0.04, 0.04, 0, 10)
    loss.center.copy_(torch.randn(1, k) * 0.1)
    center = loss.center.clone()
    locals_ = student[2 * b :]
    owner = torch.arange(b).repeat(n_local)  # crop-major local rows: sample index cycles
    got = loss(student[: 2 * b], locals_, owner, teacher, epoch=0)
    expected = reference_dino_loss(student, teacher, center, 2 + n_local, 0.04)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_variable_crop_counts_weigh_every_crop_equally() -> None:
    torch.manual_seed(1)
    k = 16
    teacher = torch.randn(4, k)  # B = 2
    sg = torch.randn(4, k)
    sl = torch.randn(5, k)
    owner = torch.tensor([0, 0, 0, 1, 1])  # sample 0 has 3 local crops (e.g. 2 random + 1 guided), 1 has 2
    loss = DINOLoss(k, 0.05, 0.05, 0, 1)
    got = loss(sg, sl, owner, teacher, 0)
    q = F.softmax(teacher / 0.05, dim=-1)
    terms = []

    def ce(qi: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return -(qi * F.log_softmax(s / 0.1, dim=-1)).sum()

    for bi in range(2):
        q1, q2 = q[bi], q[2 + bi]
        terms += [ce(q1, sg[2 + bi]), ce(q2, sg[bi])]
        for li in range(5):
            if owner[li] == bi:
                terms += [ce(q1, sl[li]), ce(q2, sl[li])]
    assert len(terms) == 2 * 2 + 2 * 5
    torch.testing.assert_close(got, torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)


def test_center_is_ema_of_teacher_batch_mean() -> None:
    k = 8
    loss = DINOLoss(k, 0.04, 0.04, 0, 1, center_momentum=0.9)
    t1 = torch.randn(6, k)
    loss(torch.randn(6, k), torch.zeros(0, k), torch.zeros(0, dtype=torch.long), t1, 0)
    torch.testing.assert_close(loss.center, 0.1 * t1.mean(0, keepdim=True))
    t2 = torch.randn(6, k)
    loss(torch.randn(6, k), torch.zeros(0, k), torch.zeros(0, dtype=torch.long), t2, 0)
    torch.testing.assert_close(
        loss.center, 0.9 * 0.1 * t1.mean(0, keepdim=True) + 0.1 * t2.mean(0, keepdim=True)
    )


def test_teacher_temperature_warms_up_per_epoch() -> None:
    loss = DINOLoss(4, 0.04, 0.07, 3, 10)
    np.testing.assert_allclose(loss.teacher_temp_schedule, [0.04, 0.055, 0.07] + [0.07] * 7)
    assert loss.teacher_temp(1) == pytest.approx(0.055) and loss.teacher_temp(50) == pytest.approx(0.07)


def test_gradient_only_reaches_the_student() -> None:
    torch.manual_seed(2)
    teacher = torch.randn(4, 8, requires_grad=True)
    student = torch.randn(10, 8, requires_grad=True)
    loss = DINOLoss(8, 0.04, 0.04, 0, 1)
    out = loss(student[:4], student[4:], torch.tensor([0, 1, 0, 1, 0, 1]), teacher, 0)
    out.backward()
    assert teacher.grad is None and student.grad is not None
    # teacher entropy diagnostic is a valid entropy
    assert 0.0 <= loss.last_stats["teacher_entropy"] <= math.log(8) + 1e-6
