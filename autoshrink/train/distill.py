"""Knowledge distillation loss (Hinton et al.): soft targets from the uncompressed model."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_term(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch."""
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * (t * t)


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, task_loss: Tensor, *, alpha: float, temperature: float
) -> Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * task_loss."""
    return alpha * kd_term(student_logits, teacher_logits, temperature) + (1.0 - alpha) * task_loss
