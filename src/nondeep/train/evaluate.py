"""Evaluation: of a model on a loader, and of a saved checkpoint on its dataset (optionally fused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, load_model
from ..data import SMALL, build_loaders, resolve_data
from ..reparam import reparameterize_model


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, channels_last: bool = False,
             tta_flip: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over the whole loader, in eval mode; tta_flip: of the mean
    of the logits of each image and its left-right mirror (test-time augmentation)."""
    model.eval()
    total, loss_sum, top1, top5 = 0, 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        if tta_flip:
            logits = (logits + model(x.flip(-1)).float()) / 2
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (ranked[:, 0] == y).sum().item()
        top5 += (ranked == y[:, None]).any(dim=1).sum().item()
        total += y.numel()
    return {"eval_loss": loss_sum / total, "eval_top1": 100.0 * top1 / total, "eval_top5": 100.0 * top5 / total}


def evaluate_checkpoint(path: str | Path, data: str | None = None, data_dir: str | None = None, fused: bool = False,
                        device: str | torch.device = "cpu", batch_size: int | None = None,
                        use_ema: bool = False, tta_flip: bool | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split of the dataset it was trained on (found where training read
    it, from any working directory), or on `data`. An ImageFolder is read at the checkpoint's image size and
    channels. batch_size None: 256, lowered when a batch would not fit in memory. tta_flip None: as the run
    that wrote the checkpoint evaluated (its config's tta_flip), so the summary's accuracy is reproduced."""
    from .loop import resolve_device  # the trainer's check: a CUDA device asked for without CUDA is refused
    from .preflight import EVAL_BATCH, activation_bytes, eval_batch_for

    device = resolve_device(str(device))
    model, meta = load_model(path, map_location="cpu", use_ema=use_ema)
    trained = meta.get("data") or {}
    if data is None:
        data, data_dir = _recorded_data(trained, data_dir)
    if resolve_data(data, data_dir)[0] == "folder":
        size = dict(image_size=int(trained["image_size"][0]), in_chans=int(trained["in_chans"]))
    else:  # an in-memory set is resized to the side the model was trained at (the lab scaling's resolutions)
        size = dict(image_size=int(trained["image_size"][0])) if trained.get("image_size") else {}
    if batch_size is None:
        # a checkpoint that records no image (older ones) is probed at its model's own input size
        own = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224)))
        image = (int(trained.get("in_chans", own[0])), *map(int, trained.get("image_size", own[1:])))
        batch_size = eval_batch_for(EVAL_BATCH, activation_bytes(model, image)[1], device)
    _, eval_loader, info = build_loaders(data, data_dir=data_dir, batch_size=batch_size, eval_batch_size=batch_size,
                                         device=device, **size)
    if model.num_classes != info.num_classes:
        raise CheckpointError(f"checkpoint {path} was trained for {model.num_classes} classes but {info.name} has "
                              f"{info.num_classes}: evaluate it on the dataset it was trained on")
    if getattr(model, "in_chans", info.in_chans) != info.in_chans:
        raise CheckpointError(f"checkpoint {path} takes {model.in_chans}-channel images but {info.name} has "
                              f"{info.in_chans}: evaluate it on the dataset it was trained on")
    if fused:
        model = reparameterize_model(model)
    if tta_flip is None:
        tta_flip = bool((meta.get("config") or {}).get("tta_flip", False))
    return {"checkpoint": str(path), "model": meta["model"], "data": info.name, "fused": fused, "tta_flip": tta_flip,
            **evaluate(model.to(device), eval_loader, device, tta_flip=tta_flip)}


def _recorded_data(trained: dict[str, Any], data_dir: str | None) -> tuple[str, str | None]:
    """The dataset a checkpoint was trained on, at the absolute path its training recorded."""
    name, recorded = trained.get("name"), trained.get("path")
    if name is None:
        raise CheckpointError("the checkpoint records no dataset: pass --data")
    if name in SMALL:
        return name, data_dir or (recorded if recorded and Path(recorded).is_dir() else None)
    if recorded and Path(recorded).is_dir():
        return recorded, data_dir
    where = f" at {recorded}" if recorded else ""
    raise CheckpointError(f"the checkpoint was trained on the image folder {name!r}{where}, which is not there "
                          f"now: pass --data PATH of that folder")
