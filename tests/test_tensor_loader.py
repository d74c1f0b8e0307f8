"""data/tensor_loader.py: the loader's defaults and refusals, the augmentation settings, the crop's and the
cutout square's geometry, and the resume bounds of an epoch: the cases mutation testing found unchecked (the
loader's batches, shards, views and augmentation statistics are in test_data.py)."""

import pytest
import torch

from nondeep.data.sampling import epoch_indices
from nondeep.data.tensor_loader import Augment, TensorLoader, crop_flip, cutout_mask


@pytest.mark.parametrize("kwargs", [{"crop_padding": -1}, {"cutout": -1}])
def test_a_negative_padding_or_cutout_is_refused_on_its_own(kwargs):
    with pytest.raises(ValueError, match="crop_padding and cutout must be >= 0"):
        Augment(**kwargs)


def test_off_turns_every_augmentation_off():
    off = Augment.off()
    assert (off.crop_padding, off.flip, off.cutout) == (0, False, 0) and off.flip is False
    assert not off.enabled and Augment(0, False, 1).enabled and Augment(1, False, 0).enabled


@pytest.mark.parametrize("h, w, size", [(9, 7, 4), (8, 8, 3)])
def test_cutout_is_one_square_per_sample_centred_anywhere(h, w, size):
    """Each mask is a size x size square, cut only by the border, whose centre (the pixel size // 2 from its top
    left corner) is drawn uniformly over the whole image: every row and column occurs as a centre."""
    masks = cutout_mask(3000, h, w, size, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert masks.shape == (3000, 1, h, w) and masks.dtype == torch.bool
    centres_y, centres_x = set(), set()
    for mask in masks[:, 0]:
        rows = mask.any(1).nonzero().flatten().tolist()
        cols = mask.any(0).nonzero().flatten().tolist()
        assert torch.equal(mask, mask.any(1)[:, None] & mask.any(0)[None, :])  # a rectangle
        for kept, side, centres in ((rows, h, centres_y), (cols, w, centres_x)):
            assert kept == list(range(kept[0], kept[-1] + 1))  # contiguous
            if kept[0] > 0 and kept[-1] < side - 1:
                assert len(kept) == size  # not at a border: the whole side
            assert len(kept) <= size
            # the centre, from the edge the border did not cut
            centres.add(kept[0] + size // 2 if kept[0] > 0 else kept[-1] - (size - 1 - size // 2))
    assert centres_y == set(range(h)) and centres_x == set(range(w))


def test_an_epoch_resumes_at_any_batch_up_to_its_end():
    loader = TensorLoader(torch.zeros(12, 1, 2, 2, dtype=torch.uint8), torch.zeros(12), 4, (0.0,), (1.0,))
    loader.set_epoch(0, start_batch=len(loader))  # a checkpoint after the last batch, before the next epoch
    assert list(loader) == []
    with pytest.raises(ValueError, match=r"start_batch 4 is outside 0\.\.3"):
        loader.set_epoch(0, start_batch=4)
    with pytest.raises(ValueError, match=r"start_batch -1 is outside 0\.\.3"):
        loader.set_epoch(0, start_batch=-1)


def test_crop_of_a_wide_image_is_a_window_of_its_padded_original_at_every_offset():
    """Non-square (4 x 6) so rows and columns cannot be mistaken for each other."""
    x = torch.arange(64 * 4 * 6, dtype=torch.float32).view(64, 1, 4, 6)
    out = crop_flip(x, 1, False, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    offsets = set()
    for i in range(64):
        found = [(dy, dx) for dy in range(3) for dx in range(3)
                 if torch.equal(out[i], padded[i, :, dy:dy + 4, dx:dx + 6])]
        assert len(found) == 1
        offsets.add(found[0])
    assert offsets == {(dy, dx) for dy in range(3) for dx in range(3)}


def _loader(n=12, **kwargs):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    kwargs.setdefault("batch_size", 4)
    return TensorLoader(images, kwargs.pop("labels", torch.arange(n, dtype=torch.int32)), mean=(0.0,), std=(1 / 255,),
                        **kwargs)


def test_the_defaults_are_one_unshuffled_pass_with_int64_labels_and_seed_0():
    xs, ys = zip(*_loader())
    assert torch.cat(ys).tolist() == list(range(12)) and torch.cat(ys).dtype == torch.int64
    assert torch.cat(xs)[:, 0, 0, 0].tolist() == list(range(12))  # normalised back to the pixel values
    shuffled = torch.cat([y for _, y in _loader(shuffle=True)])
    assert torch.equal(shuffled, epoch_indices(12, seed=0, epoch=0, shuffle=True))
    assert len(list(_loader(batch_size=1))) == 12  # batch size 1 is allowed


@pytest.mark.parametrize("kwargs, message", [
    ({"images": torch.zeros(4, 1, 2, 2)}, r"images must be uint8 \(N, C, H, W\), got torch.float32 \(4, 1, 2, 2\)"),
    ({"images": torch.zeros(4, 2, 2, dtype=torch.uint8)}, r"images must be uint8 .*, got torch.uint8 \(4, 2, 2\)"),
    ({"labels": torch.zeros(3)}, r"need one label per image: \(3,\) labels, 4 images"),
    ({"mean": (0.0, 0.0)}, r"mean and std need 1 values \(one per channel\)"),
    ({"std": (1.0, 1.0)}, r"mean and std need 1 values"),
    ({"views": 0}, "4 images cannot be 0 equal views"),
    ({"views": 3}, "4 images cannot be 3 equal views"),
    ({"batch_size": 0}, "bad batch_size 0 or rank 0 of world_size 1"),
    ({"rank": 2, "world_size": 2}, "bad batch_size 4 or rank 2 of world_size 2"),
])
def test_each_bad_argument_is_refused_alone_with_what_was_wrong(kwargs, message):
    args = dict(images=torch.zeros(4, 1, 2, 2, dtype=torch.uint8), labels=torch.zeros(4), batch_size=4,
                mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match=f"^{message}"):
        TensorLoader(**{**args, **kwargs})


def test_views_each_sample_once_an_epoch_as_a_view_drawn_by_seed_and_epoch():
    n, views = 40, 2
    # row k * n + i is view k of sample i: pixel value k * 64 + i names both
    images = torch.tensor([k * 64 + i for k in range(views) for i in range(n)], dtype=torch.uint8)
    images = images.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    labels = torch.arange(n).repeat(views)

    def served(seed, epoch):
        loader = TensorLoader(images, labels, 8, (0.0,), (1 / 255,), shuffle=True, seed=seed, views=views,
                              with_indices=True)
        loader.set_epoch(epoch)
        rows = []
        for x, y, idx in loader:
            assert torch.equal(x[:, 0, 0, 0].long(), images[idx, 0, 0, 0].long())  # the index is the row served
            assert torch.equal(y, labels[idx])
            rows += idx.tolist()
        return rows

    rows = served(0, 0)
    # pinned (printed at commit fbf1846, torch 2.14.1): a resumed distillation run must be served the views it would have seen
    assert rows[:12] == [69, 24, 0, 60, 18, 14, 1, 9, 25, 39, 21, 7]
    assert sorted(r % n for r in rows) == list(range(n))  # every sample once
    assert {r // n for r in rows} == set(range(views))  # each view drawn
    assert rows == served(0, 0)
    picks = lambda rows: sorted(rows)  # noqa: E731  (which view of each sample, whatever the order)
    assert picks(served(1, 0)) != picks(rows) and picks(served(0, 1)) != picks(rows)


def test_augmentation_is_seeded_by_seed_epoch_rank_and_batch():
    """Identical images, so that batches differ only by their augmentation draws."""
    image = torch.randint(0, 255, (1, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images, labels = image.expand(16, 1, 8, 8).contiguous(), torch.zeros(16)

    def batches(seed=0, epoch=0, rank=0):
        loader = TensorLoader(images, labels, 4, (0.0,), (1.0,), augment=Augment(crop_padding=2, flip=True, cutout=3),
                              seed=seed, rank=rank, world_size=2)
        loader.set_epoch(epoch)
        return [x for x, _ in loader]

    first = batches()
    assert all(torch.equal(a, b) for a, b in zip(first, batches()))  # reproducible
    assert not torch.equal(first[0], first[1])  # batch index
    for other in (batches(seed=1), batches(epoch=1), batches(rank=1)):
        assert not torch.equal(first[0], other[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_loader_serves_the_cpu_loaders_batches_on_the_gpu():
    """Everything (images, labels, order, crop, flip, cutout, views) moves to the device; the draws stay the same."""
    images = torch.randint(0, 255, (24, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.arange(12, dtype=torch.int32).repeat(2)
    kwargs = dict(shuffle=True, augment=Augment(crop_padding=2, flip=True, cutout=3), views=2, with_indices=True)
    cpu = list(TensorLoader(images, labels, 4, (0.5,), (0.25,), **kwargs))
    gpu = list(TensorLoader(images, labels, 4, (0.5,), (0.25,), device="cuda", **kwargs))
    for (x, y, i), (gx, gy, gi) in zip(cpu, gpu, strict=True):
        assert gx.is_cuda and gy.is_cuda and gi.is_cuda and gy.dtype == torch.int64
        assert torch.equal(gy.cpu(), y) and torch.equal(gi.cpu(), i)
        torch.testing.assert_close(gx.cpu(), x, rtol=0, atol=1e-5)
