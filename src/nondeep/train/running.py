"""An epoch's running training loss and accuracy, summed on the device with no host sync a step.

Reading a CUDA tensor from the host (`.item()`, `if tensor:`) waits for every queued kernel: one such read a
step keeps the GPU idle while Python prepares the next step. So the loop adds each step's loss, correct count
and finiteness to device tensors and reads them back (one sync) only for the progress bar at most every
REFRESH_SECONDS, before a checkpoint, and at the epoch's end.

The NaN guard stays exact although it is read late: the sums keep the first step whose loss was not finite,
so the error names that step, and the loop reads the flag before every checkpoint so that no checkpoint holds
weights updated by a non-finite loss. Under on_nan skip the optimizer skips such a step on the device (fused
step with found_inf) and the sums leave it out and count it, also with no read a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

REFRESH_SECONDS = 0.5  # the progress bar's figures are at most this old


@dataclass
class Totals:
    """What the device sums hold, read on the host."""
    loss_sum: float
    correct: float
    seen: int
    skipped: int                      # steps the optimizer skipped: a loss or gradient not finite (on_nan skip)
    first_nonfinite_step: int | None  # the first step whose loss was NaN or infinite, if any

    def partial(self, seconds: float) -> dict[str, float]:
        """The partial epoch a checkpoint records (what RunningSums starts from on resume)."""
        return {"loss_sum": self.loss_sum, "correct": int(self.correct), "seen": self.seen, "seconds": seconds}


class RunningSums:
    """Per-epoch sums on `device`, started from a checkpoint's partial epoch (loss_sum, correct, seen)."""

    def __init__(self, device: torch.device, loss_sum: float = 0.0, correct: float = 0.0, seen: int = 0) -> None:
        # [loss x images, correct predictions, images of kept steps, skipped steps, first non-finite step (inf:
        # none)]; float64 holds the counts exactly. Without a keep flag the images are counted on the host.
        self._sums = torch.tensor([loss_sum, correct, 0.0, 0.0, math.inf], dtype=torch.float64, device=device)
        self.seen = int(seen)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, step: int,
            keep: torch.Tensor | None = None) -> None:
        """Queue this step's contribution (device ops only); keep (on_nan skip): the step's device flag, 0.0
        when the optimizer skipped it, which then adds nothing but its count of skipped steps."""
        loss = loss.detach().double()
        n = labels.numel()
        finite = torch.isfinite(loss)
        correct = (logits.detach().argmax(1) == labels).sum().double()
        if keep is None:  # the hot path: no op more than the sums need
            self._sums[:2] += torch.stack([loss * n, correct])
            self.seen += n
        else:
            kept = keep.double()
            loss_part = torch.where(kept > 0, loss * n, 0.0)  # NaN x 0 is NaN
            self._sums[:4] += torch.stack([loss_part, correct * kept, n * kept, 1 - kept])
        self._sums[4:] = torch.minimum(self._sums[4:], torch.where(finite, math.inf, float(step)).view(1))

    def read(self) -> Totals:
        """The sums on the host: one device sync."""
        loss_sum, correct, seen, skipped, bad = self._sums.tolist()
        return Totals(loss_sum, correct, self.seen + int(seen), int(skipped), None if math.isinf(bad) else int(bad))
