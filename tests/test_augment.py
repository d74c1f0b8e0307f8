"""data/tensor_loader.py's augmentation settings, the cutout square's geometry and the resume bounds of an epoch
(the cases mutation testing found unchecked; crop and flip are in test_data.py)."""

import pytest
import torch

from nondeep.data.tensor_loader import Augment, TensorLoader, cutout_mask


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
