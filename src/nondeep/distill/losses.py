"""Distillation losses and the loss_fn that `nondeep.train.train` calls.

mimic (Ba & Caruana 2014): L2 regression of the student's logits on the teacher's,
    mimic = mean over the batch and the C classes of (z_s - z_t)^2
i.e. the paper's 1/(2B) sum_b ||z_s - z_t||^2 times 2/C: a constant factor, which only rescales the learning
rate, chosen so the loss is the same size for any number of classes.
kd (Hinton et al. 2015): with p^T = softmax(z / T),
    kd = T^2 * mean over the batch of KL(p_t^T || p_s^T) = T^2 / B * sum_b sum_c p_t^T (log p_t^T - log p_s^T)
the T^2 keeps the gradients' size independent of T (as in Hinton et al., timm and torchdistill).
Either is mixed with the label cross-entropy: loss = alpha * distill + (1 - alpha) * CE(z_s, y).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("mimic", "kd")


def mimic_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between logits, averaged over the batch and the classes."""
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


class CachedTargets:
    """Teacher logits looked up by the sample's index in the transfer set (the cached mode)."""

    needs_indices = True

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits.float()

    def __call__(self, indices: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
        if indices is None:
            raise RuntimeError("cached teacher logits need sample indices: the loader must run with_indices")
        if self.logits.device != indices.device:  # one transfer of the whole table, not one per batch
            self.logits = self.logits.to(indices.device)
        return self.logits.index_select(0, indices)


class OnlineTeacher:
    """The teacher run on each (augmented) training batch, without gradients (--teacher-online)."""

    needs_indices = False

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher.eval()

    def __call__(self, indices: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(images).float()


class DistillLoss:
    """loss_fn(logits, labels, indices, images) for `train`: alpha * mimic|kd + (1 - alpha) * cross-entropy."""

    def __init__(self, kind: str, targets: Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor],
                 alpha: float = 1.0, temperature: float = 4.0, label_smoothing: float = 0.0) -> None:
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.kind, self.targets, self.alpha = kind, targets, alpha
        self.temperature, self.label_smoothing = temperature, label_smoothing
        self.needs_indices = getattr(targets, "needs_indices", False)  # read by train()

    def distill_term(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "mimic":
            return mimic_loss(logits, teacher_logits)
        return kd_loss(logits, teacher_logits, self.temperature)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None,
                 images: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if self.alpha > 0:  # alpha = 0 is plain label training: the teacher is not even consulted
            loss = loss + self.alpha * self.distill_term(logits, self.targets(indices, images))
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * F.cross_entropy(logits.float(), labels,
                                                             label_smoothing=self.label_smoothing)
        return loss
