"""The exponential moving average of a model's weights (and buffers), updated without host round trips.

torch's AveragedModel with get_ema_multi_avg_fn computes it, but its update_parameters reads n_averaged on the
host twice a step and copies it to the device once per device: on CUDA that copy (from pageable memory) waits
for the device, one host sync a step, which the trainer's step otherwise avoids (issue 14). ModelEMA keeps
AveragedModel's module, buffers and checkpoint layout (module.*, n_averaged) and torch's update (the first
update copies, later ones lerp each floating-point tensor, integer buffers as torch's EMA function does), with
the count kept on the host: n_averaged is read once, at the first update (it may come from a checkpoint).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ModelEMA(AveragedModel):
    """AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True), without a host read
    or a host-to-device copy per update."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay
        self._updates: int | None = None  # the host's copy of n_averaged, read at the first update

    @torch.no_grad()
    def update_parameters(self, model: nn.Module, keep: torch.Tensor | None = None) -> None:
        """keep: a device flag, 1.0 to update, 0.0 to leave the average and its count as they are (a step
        skipped on the device, on_nan skip); the masked update runs on the device, count included."""
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*model.parameters(), *model.buffers()]
        if keep is not None:
            self._masked_update(averaged, current, keep)
            self._updates = None  # the count moved on the device
            return
        if self._updates is None:
            self._updates = int(self.n_averaged)  # the one read: n_averaged may have been loaded since __init__
        if self._updates == 0:
            for a, c in zip(averaged, current, strict=True):
                a.detach().copy_(c.detach())
        else:
            for ema_tensors, model_tensors in _by_device_and_dtype(averaged, current):  # as torch groups them
                self.multi_avg_fn(ema_tensors, model_tensors, None)
        self._updates += 1
        self.n_averaged.fill_(self._updates)  # kept for the checkpoint; a fill is no host read

    def _masked_update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], keep: torch.Tensor) -> None:
        """torch's update (a copy the first time, then a lerp by 1 - decay) with its weight times keep."""
        weight = keep.float() * torch.where(self.n_averaged == 0, 1.0, 1.0 - self.decay).to(keep.device)
        for ema, model in _by_device_and_dtype(averaged, current):
            if ema[0].is_floating_point():
                torch._foreach_lerp_(ema, model, weight.to(ema[0].device, ema[0].dtype))
            else:  # integer buffers (BatchNorm's count), as torch's EMA function treats them; weight 0 gives e
                for e, c in zip(ema, model, strict=True):
                    e.copy_(e * (1 - weight) + c * weight)
        self.n_averaged += (keep > 0).to(self.n_averaged.dtype)

    def load_state_dict(self, *args, **kwargs):  # type: ignore[override]
        self._updates = None  # read n_averaged again at the next update
        return super().load_state_dict(*args, **kwargs)


def _by_device_and_dtype(averaged: list[torch.Tensor], current: list[torch.Tensor]) -> list[tuple[list, list]]:
    """(averaged, current) tensor lists of one device and dtype each, current moved to averaged's device."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for a, c in zip(averaged, current, strict=True):
        pair = groups.setdefault((a.device, a.dtype), ([], []))
        pair[0].append(a.detach())
        pair[1].append(c.detach().to(a.device))
    return list(groups.values())
