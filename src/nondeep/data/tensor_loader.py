"""The fast path for small datasets: the whole uint8 image set as one tensor, batches cut by indexing.

A DataLoader over 28x28 images spends its time in per-image Python (PIL, transforms, collation); here a
batch is one index op plus a few vectorised tensor ops for the augmentation, as in airbench. The uint8 set
is moved to `device` once (4x smaller than float), and cropping, flipping, normalising and cutout all run
there. Every random choice comes from generators seeded by (seed, epoch[, batch, rank]), so an epoch, and
any batch of it, can be replayed exactly: that is what makes mid-epoch resume exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from .sampling import epoch_indices, mix_seed, shard_size


@dataclass(frozen=True)
class Augment:
    """Per-batch training augmentation on tensors.

    crop_padding: random crop of the original size from the image zero-padded by this many px (0 = off);
    flip: random horizontal flip of half the samples; cutout: zero (after normalising, i.e. the mean)
    a square of this side at a random centre, which may hang over the border (0 = off).
    """
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.cutout < 0:
            raise ValueError(f"crop_padding and cutout must be >= 0, got {self}")

    @classmethod
    def off(cls) -> "Augment":
        return cls(crop_padding=0, flip=False, cutout=0)

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.flip or self.cutout)


def crop_flip(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (zero padding) and horizontal flip of a (B, C, H, W) batch, with no loop.

    Each sample's output rows are a shifted run of the padded input's rows, and its columns a shifted (when
    flipped, reversed) run of its columns: so one index_select of whole rows, then one gather along W.
    """
    b, c, h, w = x.shape
    if not padding and not flip:
        return x
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    hp, wp = x.shape[2], x.shape[3]
    dy = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen)
    cols = dx + torch.arange(w)
    if flip:
        flipped = torch.rand(b, 1, generator=gen) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    if padding:  # rows of the (B*C*Hp, Wp) view: copying whole rows is far cheaper than a gather
        rows = (torch.arange(b * c).view(b, c, 1) * hp + (dy + torch.arange(h)).view(b, 1, h)).view(-1)
        x = x.reshape(b * c * hp, wp).index_select(0, rows.to(x.device)).view(b, c, h, wp)
    return x.gather(3, cols.to(x.device).view(b, 1, 1, w).expand(b, c, h, w))


def cutout_mask(b: int, h: int, w: int, size: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B, 1, H, W) bool mask of one size x size square per sample, centred anywhere in the image."""
    cy = torch.randint(0, h, (b, 1), generator=gen).to(device) - size // 2
    cx = torch.randint(0, w, (b, 1), generator=gen).to(device) - size // 2
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (ys >= cy) & (ys < cy + size)
    in_cols = (xs >= cx) & (xs < cx + size)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


class TensorLoader:
    """Batches of (float32 normalised images, int64 labels) on `device` from in-memory uint8 images.

    images: uint8 (N, C, H, W); labels: (N,) integers. With world_size > 1 each rank takes its own equal,
    disjoint slice of every epoch's permutation. Call `set_epoch(epoch, start_batch)` before iterating;
    `len()` is the number of batches per epoch (on this rank).

    views > 1: `images` holds that many views of N samples, view-major (sample i of view k at k * N + i, as
    distillation's transfer set). An epoch then serves each of the N samples once, as one of its views drawn
    at random (seeded by seed and epoch), so the steps per epoch do not grow with the views; the yielded
    indices point into all V * N rows.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], shuffle: bool = False, augment: Augment | None = None,
                 drop_last: bool = False, device: str | torch.device = "cpu", seed: int = 0, rank: int = 0,
                 world_size: int = 1, with_indices: bool = False, views: int = 1) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"need one label per image: {tuple(labels.shape)} labels, {images.shape[0]} images")
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean and std need {c} values (one per channel), got {mean} and {std}")
        if views < 1 or images.shape[0] % views:
            raise ValueError(f"{images.shape[0]} images cannot be {views} equal views of the same samples")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size {batch_size} or rank {rank} of world_size {world_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)  # one transfer of the (small) uint8 set, not one per batch
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.views, self.samples = views, images.shape[0] // views
        self.with_indices = with_indices  # also yield each sample's dataset index (cached teacher logits)
        # normalise straight from the 0..255 scale: (x - 255 mean) / (255 std)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1) * 255
        self._inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1) * 255)
        self.epoch, self._start_batch = 0, 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before drop_last)."""
        n = self.samples
        return n if self.world_size == 1 else shard_size(n, self.world_size)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use epoch `epoch`'s order; the next iteration starts at batch `start_batch` (mid-epoch resume)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is outside 0..{len(self)}")
        self.epoch, self._start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = epoch_indices(self.samples, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                              rank=self.rank, world_size=self.world_size)
        if self.views > 1:  # every rank draws the same view for a sample: the draw depends on (seed, epoch) only
            view = torch.randint(0, self.views, (self.samples,),
                                 generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0x71E3)))
            order = view[order] * self.samples + order
        order = order.to(self.device)
        start, self._start_batch = self._start_batch, 0  # a resume offset applies to one pass only
        flat = self.images.view(self.images.shape[0], -1)  # index_select on 2-D is much faster than x[idx]
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = flat.index_select(0, idx).view(-1, *self.images.shape[1:])
            batch = (self._batch(x, i), self.labels.index_select(0, idx))
            yield (*batch, idx) if self.with_indices else batch

    def _batch(self, x: torch.Tensor, i: int) -> torch.Tensor:
        aug = self.augment
        gen = None
        if aug is not None:  # seeded per batch, so batch i of an epoch is the same after a resume
            gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, i))
            x = crop_flip(x, aug.crop_padding, aug.flip, gen)  # on uint8: a quarter of the bytes to move
        x = x.float().sub_(self._mean).mul_(self._inv_std)
        if aug is not None and aug.cutout:
            b, _, h, w = x.shape
            x.masked_fill_(cutout_mask(b, h, w, aug.cutout, gen, x.device), 0.0)
        return x
