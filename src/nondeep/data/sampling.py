"""Epoch orders shared by every loader: a seeded permutation per epoch, cut into equal per-rank shards.

The permutation depends only on (seed, epoch), never on the rank or on earlier epochs, so every rank of a
DDP job agrees on it, and a run resumed at any epoch (and batch) sees exactly the order it would have seen.
"""

from __future__ import annotations

import torch

_MASK = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (splitmix64-style), so (1, 0) and (0, 1) differ."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK


def shard_size(n: int, world_size: int) -> int:
    """Samples each rank gets per epoch: the same on every rank (the < world_size left over are skipped,
    different ones each epoch when shuffling)."""
    return n // world_size


def epoch_indices(n: int, *, seed: int, epoch: int, shuffle: bool, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """This rank's sample indices for `epoch`: its own contiguous slice of the epoch permutation."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if shuffle:
        g = torch.Generator().manual_seed(mix_seed(seed, epoch))
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if world_size == 1:
        return order
    per = shard_size(n, world_size)
    return order[rank * per:(rank + 1) * per]


def holdout_split(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) indices: a fixed pseudo-random `fraction` of range(n) is held out, the same for
    every seed so runs with different seeds are scored on the same images; both come back sorted."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_split must be in [0, 1), got {fraction}")
    n_val = round(n * fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(0x5EED, n)))
    return order[n_val:].sort().values, order[:n_val].sort().values
