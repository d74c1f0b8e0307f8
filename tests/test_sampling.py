"""data/sampling.py: the epoch orders, the DDP shards and the held-out split every loader shares.

Their exact values are pinned, not just their properties: a run resumed by a later nondeep must see the order
it would have seen, and a lab started again reuses runs validated on the held-out images of the version that
trained them. The pinned numbers were printed by this module at commit 718eae6 (torch 2.14.1); change them only
with a deliberate change of every run's data order, and say so in the commit."""

import pytest
import torch

from nondeep.data.sampling import epoch_indices, holdout_split, mix_seed, shard_size


def test_mix_seed_is_pinned_and_order_sensitive():
    assert mix_seed(0) == 6229623725594924965
    assert mix_seed(0, 0) == 573159089895335282
    assert (mix_seed(1, 0), mix_seed(0, 1)) == (7124867106191396943, 5232054368819540721)  # (1, 0) != (0, 1)
    assert mix_seed(7, 3) == 3372149508506556760
    assert all(0 <= mix_seed(a, b) < 2 ** 63 for a in (-1, 0, 2 ** 64 + 5) for b in (0, 1))  # a valid torch seed


def test_the_epoch_order_is_a_permutation_pinned_by_seed_and_epoch():
    order = epoch_indices(10, seed=0, epoch=0, shuffle=True)
    assert order.tolist() == [9, 6, 3, 8, 1, 0, 4, 5, 7, 2]
    assert sorted(epoch_indices(100, seed=3, epoch=5, shuffle=True).tolist()) == list(range(100))
    same = epoch_indices(100, seed=3, epoch=5, shuffle=True)
    assert torch.equal(same, epoch_indices(100, seed=3, epoch=5, shuffle=True))  # no hidden state between calls
    assert not torch.equal(same, epoch_indices(100, seed=4, epoch=5, shuffle=True))  # the seed matters
    assert not torch.equal(same, epoch_indices(100, seed=3, epoch=6, shuffle=True))  # so does the epoch
    assert epoch_indices(5, seed=3, epoch=5, shuffle=False).tolist() == [0, 1, 2, 3, 4]


def test_ranks_get_disjoint_equal_shards_of_one_epoch_order():
    n, world = 10, 3
    per = shard_size(n, world)
    assert per == 3
    whole = epoch_indices(n, seed=1, epoch=2, shuffle=True)
    shards = [epoch_indices(n, seed=1, epoch=2, shuffle=True, rank=r, world_size=world) for r in range(world)]
    assert [s.tolist() for s in shards] == [whole[r * per:(r + 1) * per].tolist() for r in range(world)]
    assert len({i for s in shards for i in s.tolist()}) == world * per  # disjoint; the 1 left over is skipped
    for rank in (-1, world):
        with pytest.raises(ValueError, match=rf"^rank {rank} is outside 0\.\.2$"):
            epoch_indices(n, seed=1, epoch=2, shuffle=True, rank=rank, world_size=world)


def test_the_held_out_split_is_pinned_and_the_same_for_every_seed():
    train, held = holdout_split(20, 0.25)
    assert held.tolist() == [0, 3, 5, 11, 19]
    assert train.tolist() == sorted(set(range(20)) - set(held.tolist()))
    assert [len(part) for part in holdout_split(1000, 0.1)] == [900, 100]
    train, held = holdout_split(8, 0.0)  # no validation: everything trains
    assert train.tolist() == list(range(8)) and held.numel() == 0
    for fraction in (1.0, -0.1):
        with pytest.raises(ValueError, match=rf"^val_split must be in \[0, 1\), got {fraction}$"):
            holdout_split(8, fraction)
