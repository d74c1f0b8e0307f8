"""Structural reparameterisation: fold every block's training-time branches into single convs."""

from __future__ import annotations

import copy

import torch
from torch import nn


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the model (a deep copy unless `inplace`) in eval mode with every block that has
    `reparameterize()` folded. BN statistics must be final: fusing in train mode would freeze batch
    statistics that the next forward would have updated, so the model is switched to eval first."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for module in list(model.modules()):
        if hasattr(module, "reparameterize"):
            module.reparameterize()
    return model


@torch.no_grad()
def max_fusion_error(model: nn.Module, fused: nn.Module, input_size: tuple[int, ...], batch_size: int = 2,
                     seed: int = 0) -> float:
    """Max abs difference between the outputs of `model` and `fused` (both in eval mode) on a fresh random batch."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    x = torch.randn(batch_size, *input_size, generator=generator).to(device)
    model.eval(), fused.eval()
    return (model(x) - fused(x)).abs().max().item()
