"""Optimizer and learning-rate schedule. The schedule is a pure function of the step, so resuming needs
nothing but the step number."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on BN parameters and biases (1-d tensors): decaying them only hurts small nets.

    Under on_nan skip the optimizer is torch's fused one: its step takes a `found_inf` flag (the protocol
    GradScaler uses) and leaves the weights and its state untouched on the device when it is set, so skipping
    a non-finite step needs no host read (skip_if_nonfinite)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = True if cfg.on_nan == "skip" else None
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)
    sgd = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                          fused=fused)
    if fused and cfg.momentum > 0:
        # the fused step makes an empty momentum buffer at its first step and fills it there: a skipped first
        # step would leave it uninitialised. Zeros give the same first step (momentum x 0 + grad, no dampening).
        for p in [*decay, *no_decay]:
            sgd.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return sgd


def skip_if_nonfinite(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
    """Arm the fused optimizer's next step to skip itself on the device when `loss` or a gradient is not
    finite (under DDP the gradients are all-reduced, so every rank decides alike); returns the step's keep flag
    (1.0: the step counts, 0.0: skipped) for what else must skip it (the EMA, the running sums)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    finite = torch.isfinite(loss.detach()) & torch.isfinite(torch.nn.utils.get_total_norm(grads))
    optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]  # read by the fused step
    return finite.float()


def lr_at(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate for `step` (0-based) of `total_steps`.

    onecycle: linear rise from lr/10 to lr over the first 20% of steps, then linear decay to 0 (airbench's
    triangle); cosine: warm-up, then cosine to 0; step: warm-up, then x step_gamma at each milestone
    (fractions of training: the WRN recipe is 0.3/0.6/0.8 with gamma 0.2); constant: warm-up, then lr.
    """
    progress = step / max(1, total_steps)
    if cfg.schedule == "onecycle":
        peak = 0.2
        if progress < peak:
            return cfg.lr * (0.1 + 0.9 * progress / peak)
        return cfg.lr * max(0.0, (1 - progress) / (1 - peak))
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "cosine":
        after = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, after)))
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** sum(progress >= m for m in cfg.step_milestones)
    return cfg.lr
