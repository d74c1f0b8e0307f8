"""Teachers: one checkpoint or an ensemble of them (the mean of their logits, as in Ba & Caruana's ECNN).

A checkpoint is read (and its checksum verified) first, without building the model: its content hash goes
into the cache key, and on a cache hit the teacher network is never built or run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..checkpoint import CheckpointError, read_checkpoint
from ..data import DataInfo, TensorLoader
from ..models import create_model


@dataclass
class TeacherCheckpoint:
    path: str
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def sha256(self) -> str:
        return self.meta["sha256"]

    @property
    def uses_ema(self) -> bool:  # the weights the run reported its accuracy for
        return any(k.startswith("ema.module.") for k in self.tensors)

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "model": self.meta["model"], "sha256": self.sha256, "ema": self.uses_ema,
                "epochs": self.meta.get("epoch")}

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        prefix = "ema.module." if self.uses_ema else "model."
        model = create_model(self.meta["model"], **self.meta["model_kwargs"])
        model.load_state_dict({k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)},
                              strict=True)
        return model.to(device).eval()


def read_teachers(paths: Sequence[str | Path], info: DataInfo) -> list[TeacherCheckpoint]:
    """Read and verify every teacher; each must have been trained on data like the student's (same classes,
    channels, image size and normalisation), since the cached logits are computed on the student's inputs."""
    if not paths:
        raise CheckpointError("distillation needs at least one teacher checkpoint (--teacher PATH)")
    teachers = []
    for path in paths:
        tensors, meta = read_checkpoint(path)
        data = meta.get("data", {})
        asked = {"classes": list(info.classes), "in_chans": info.in_chans, "image_size": list(info.image_size),
                 "mean": [round(v, 6) for v in info.mean], "std": [round(v, 6) for v in info.std]}
        had = {"classes": list(data.get("classes", [])), "in_chans": data.get("in_chans"),
               "image_size": list(data.get("image_size", [])), "mean": [round(v, 6) for v in data.get("mean", [])],
               "std": [round(v, 6) for v in data.get("std", [])]}
        differ = [k for k in asked if asked[k] != had[k]]
        if differ:
            raise CheckpointError(f"teacher {path} was trained on {data.get('name')!r}, which differs from the "
                                  f"student's data {info.name!r} in {', '.join(differ)}: use a teacher trained "
                                  f"on the same dataset")
        teachers.append(TeacherCheckpoint(str(path), meta, tensors))
    return teachers


class Ensemble(nn.Module):
    """The mean of the members' logits (one member: that teacher)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.members]).mean(0)


def build_ensemble(teachers: Sequence[TeacherCheckpoint], device: torch.device | str = "cpu") -> Ensemble:
    return Ensemble([t.build(device) for t in teachers]).to(device).eval()


@torch.no_grad()
def logits_over(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> torch.Tensor:
    """The model's float32 logits (on the CPU) over an unshuffled loader, in its order."""
    model.eval()
    return torch.cat([model(batch[0].to(device)).float().cpu() for batch in loader])


def logits_over_images(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                       batch_size: int = 1024, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits over uint8 (N, C, H, W) images, normalised exactly as the training loader does."""
    labels = torch.zeros(images.shape[0], dtype=torch.int64)
    loader = TensorLoader(images, labels, batch_size, mean, std, device=device)
    return logits_over(model, loader, device)


@torch.no_grad()
def predictions(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> torch.Tensor:
    """argmax class of every sample of an unshuffled loader (CPU int64)."""
    model.eval()
    return torch.cat([model(batch[0].to(device)).argmax(1).cpu() for batch in loader])


def agreement(student_pred: torch.Tensor, teacher_pred: torch.Tensor) -> float:
    """% of samples on which the two argmax predictions agree."""
    return 100.0 * (student_pred == teacher_pred).double().mean().item()
