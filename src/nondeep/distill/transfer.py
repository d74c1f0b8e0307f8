"""The transfer set: the images the student is taught on in the cached mode, and their loaders.

torchdistill's pitfall: a cache keyed by sample index, filled while the loader augments at random, holds
the logits of whichever augmented view came first, and every later epoch pairs a *different* view with
them. Here the cache is keyed by a fixed set of views instead: the K+1 copies of the training set (copy 0
un-augmented, copies 1..K augmented once, deterministically from a seed, like Ba & Caruana's extra
unlabelled inputs). The student's loader serves exactly those views with augmentation off, and the loss
looks their logits up by index, so every (view, teacher logits) pair is exact, in every epoch. An epoch is
one pass over the N training images, each seen as one of its K+1 views drawn at random: K buys variety of
teacher targets, not more steps, so students taught with different K train for the same steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from ..data import Augment, DataInfo, TensorLoader
from ..data.sampling import mix_seed
from ..data.tensor_loader import crop_flip, cutout_mask

_CHUNK = 4096  # images augmented at a time: bounds the float/pad temporaries


def augmented_copy(images: torch.Tensor, augment: Augment, mean: Sequence[float], seed: int) -> torch.Tensor:
    """One augmented uint8 copy of `images` (crop/flip as in training; cutout fills the square with the mean
    pixel, which is 0 after normalising, as the training loader does). Deterministic given `seed`."""
    gen = torch.Generator().manual_seed(seed)
    fill = torch.tensor([round(255 * m) for m in mean], dtype=torch.uint8).view(1, -1, 1, 1)
    out = []
    for start in range(0, images.shape[0], _CHUNK):
        x = crop_flip(images[start:start + _CHUNK], augment.crop_padding, augment.flip, gen)
        if augment.cutout:
            b, c, h, w = x.shape
            x = torch.where(cutout_mask(b, h, w, augment.cutout, gen, x.device), fill.to(x.device), x)
        out.append(x)
    return torch.cat(out)


def make_transfer_set(images: torch.Tensor, labels: torch.Tensor, copies: int, augment: Augment,
                      mean: Sequence[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the original set followed by `copies` augmented copies: sample i of copy k is at
    index k * N + i. Labels are repeated (they only feed the optional cross-entropy term)."""
    if copies < 0:
        raise ValueError(f"transfer copies must be >= 0, got {copies}")
    if copies and not augment.enabled:
        raise ValueError("transfer copies need an augmentation to differ from the originals: set crop_padding, "
                         "flip or cutout (or use --transfer-copies 0)")
    if copies == 0:
        return images, labels
    views = [images] + [augmented_copy(images, augment, mean, mix_seed(seed, 0x7A5F, k)) for k in range(1, copies + 1)]
    return torch.cat(views), labels.repeat(copies + 1)


@dataclass
class TransferData:
    """The cached mode's data: a loader factory for `nondeep.train.train(loaders=...)`."""

    images: torch.Tensor        # uint8 (N * (K+1), C, H, W), on the CPU
    labels: torch.Tensor
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    info: DataInfo
    batch_size: int
    eval_batch_size: int
    seed: int
    views: int = 1              # K + 1: the copies of the training set in `images`

    def __call__(self, device: torch.device, rank: int, world_size: int) -> tuple[TensorLoader, TensorLoader, DataInfo]:
        samples = len(self.labels) // self.views
        per_rank = samples // world_size  # as build_loaders: drop a ragged last batch unless it is the only one
        train = TensorLoader(self.images, self.labels, self.batch_size, self.info.mean, self.info.std, shuffle=True,
                             augment=Augment.off(), drop_last=per_rank >= self.batch_size, device=device,
                             seed=self.seed, rank=rank, world_size=world_size, with_indices=True, views=self.views)
        evaluate = TensorLoader(self.eval_images, self.eval_labels, self.eval_batch_size, self.info.mean,
                                self.info.std, device=device)
        return train, evaluate, dataclasses.replace(self.info, num_train=samples)
