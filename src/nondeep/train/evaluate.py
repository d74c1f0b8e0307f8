"""Evaluation: of a model on a loader, and of a saved checkpoint on its dataset (optionally fused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, load_model
from ..data import build_loaders
from ..reparam import reparameterize_model


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, channels_last: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over the whole loader, in eval mode."""
    model.eval()
    total, loss_sum, top1, top5 = 0, 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (ranked[:, 0] == y).sum().item()
        top5 += (ranked == y[:, None]).any(dim=1).sum().item()
        total += y.numel()
    return {"eval_loss": loss_sum / total, "eval_top1": 100.0 * top1 / total, "eval_top5": 100.0 * top5 / total}


def evaluate_checkpoint(path: str | Path, data: str | None = None, data_dir: str | None = None, fused: bool = False,
                        device: str | torch.device = "cpu", batch_size: int = 1024,
                        use_ema: bool = False) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split of the dataset it was trained on (or `data`)."""
    model, meta = load_model(path, map_location=device, use_ema=use_ema)
    data = data or meta["data"]["name"]
    _, eval_loader, info = build_loaders(data, data_dir=data_dir, batch_size=batch_size, eval_batch_size=batch_size,
                                         device=device)
    if model.num_classes != info.num_classes:
        raise CheckpointError(f"checkpoint {path} was trained for {model.num_classes} classes but {info.name} has "
                              f"{info.num_classes}: evaluate it on the dataset it was trained on")
    if fused:
        model = reparameterize_model(model)
    return {"checkpoint": str(path), "model": meta["model"], "data": info.name, "fused": fused,
            **evaluate(model, eval_loader, torch.device(device))}
