"""DINO loss (facebookresearch/dino ``DINOLoss``) generalised to a different number of local crops per
sample, which DINO-LG needs: labelled slices carry RLC random + GLC guided local crops, unlabelled slices
only RLC.

The loss is the mean, over every (teacher global view, student view of the same slice, other than that
same view) pair, of the cross-entropy H(softmax((t − c)/τ_t), softmax(s/τ_s)). With the same number of
crops for every sample this is exactly DINO's loss (its mean over view pairs of per-view batch means);
with variable counts every crop weighs the same, so the paper's "≈ 3 % of all crops are guided" holds.
The centre c is an EMA of the teacher's batch mean (momentum 0.9); the teacher temperature τ_t warms
up linearly per epoch (0.04 → 0.07 by default), the student's τ_s is 0.1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from cacstream.training.dino.schedules import teacher_temperature_schedule
from torch import Tensor, nn


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student, over multi-crop views.

    Args:
        out_dim: K, the head's output size (the centre has this size).
        warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs: teacher temperature
            schedule, one value per epoch.
        student_temp: τ_s (0.1).
        center_momentum: EMA momentum of the centre (0.9).
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule: np.ndarray = teacher_temperature_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs
        )
        #: diagnostics of the last call: mean teacher entropy (nats) and the teacher temperature used.
        #: Entropy near log(K) with a flat loss means collapse to uniform; near 0, to one prototype.
        self.last_stats: dict[str, float] = {}

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temp_schedule[min(epoch, len(self.teacher_temp_schedule) - 1)])

    def forward(
        self,
        student_global: Tensor,
        student_local: Tensor,
        local_owner: Tensor,
        teacher_global: Tensor,
        epoch: int,
    ) -> Tensor:
        """Loss for one batch of B slices.

        Args:
            student_global: (2B, K) student outputs on the two global crops, crop-major (rows 0..B-1 are
                global crop 1 of each slice, rows B..2B-1 global crop 2), as DINO orders them.
            student_local: (L, K) student outputs on all local crops (random and guided) of the batch.
            local_owner: (L,) index in [0, B) of the slice each local crop came from.
            teacher_global: (2B, K) teacher outputs on the same global crops, same order.
            epoch: selects the teacher temperature.
        """
        two_b, k = teacher_global.shape
        if two_b % 2 or student_global.shape != teacher_global.shape:
            raise ValueError(
                f"global outputs must be (2B, K) for student and teacher, got "
                f"{tuple(student_global.shape)} and {tuple(teacher_global.shape)}"
            )
        if student_local.shape[0] != local_owner.shape[0]:
            raise ValueError("one owner index per local crop is required")
        b = two_b // 2
        temp = self.teacher_temp(epoch)
        q = F.softmax((teacher_global.float() - self.center) / temp, dim=-1).detach()
        q1, q2 = q[:b], q[b:]
        logp = F.log_softmax(student_global.float() / self.student_temp, dim=-1)
        total = -(q1 * logp[b:]).sum() - (q2 * logp[:b]).sum()  # each teacher view vs the other global
        n_terms = 2 * b
        if student_local.shape[0]:
            logp_local = F.log_softmax(student_local.float() / self.student_temp, dim=-1)
            q_pair = q1[local_owner] + q2[local_owner]  # every local crop vs both teacher views
            total = total - (q_pair * logp_local).sum()
            n_terms += 2 * student_local.shape[0]
        self.update_center(teacher_global)
        with torch.no_grad():
            entropy = -(q * torch.log(q.clamp_min(1e-12))).sum(dim=-1).mean()
        self.last_stats = {"teacher_entropy": float(entropy), "teacher_temp": temp}
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """EMA of the teacher's batch mean (all-reduced across processes when distributed)."""
        batch_center = teacher_output.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_output.shape[0]), device=teacher_output.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
