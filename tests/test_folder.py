"""ImageFolder trees (nondeep.data.folder) as units: the own size and colour read from headers, each
transform's steps and sizes, the seeded sampler and its resume offset, the loader's length and cleanup, the
held-out split and fixed training order, and each refusal as one line naming the file or folder."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from nondeep.data import folder
from nondeep.data.folder import (CROP_PCT, GREY_MEAN, GREY_STD, MEAN, STD, SMALL_IMAGE, FolderLoader,
                                 SeededSampler, _clean, build_folder_loaders, build_folder_test_loader,
                                 eval_transform, load_image, normalisation, own_size_and_channels, scan,
                                 train_transform)
from nondeep.data.sampling import epoch_indices
from nondeep.data.tensor_loader import Augment
from nondeep.errors import DatasetError

from conftest import make_image_tree as tree

CPU = torch.device("cpu")


def loaders(root: Path, **kwargs):
    options = dict(batch_size=4, eval_batch_size=4, augment=Augment.off(), val_split=0.0, max_train_samples=None,
                   device=CPU, seed=0, rank=0, world_size=1, num_workers=0, image_size=8, in_chans=3)
    return build_folder_loaders(root, **{**options, **kwargs})


def test_constants_and_normalisation():
    assert (MEAN, STD, CROP_PCT, SMALL_IMAGE) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875, 64)
    assert GREY_MEAN == pytest.approx((0.449,)) and GREY_STD == pytest.approx((0.226,))
    assert normalisation(1) == (GREY_MEAN, GREY_STD) and normalisation(3) == (MEAN, STD)
    assert (folder.DEFAULT_VAL_FRACTION, folder.SAMPLED_IMAGES) == (0.1, 256)


def test_load_image_converts_and_names_a_bad_file(tmp_path):
    Image.new("RGB", (3, 2), (200, 100, 0)).save(tmp_path / "c.png")
    assert load_image(str(tmp_path / "c.png")).mode == "RGB"
    grey = load_image(str(tmp_path / "c.png"), mode="L")
    assert grey.mode == "L" and grey.size == (3, 2)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError) as err:
        load_image(str(tmp_path / "bad.png"))
    assert str(err.value).startswith(f"cannot read image {tmp_path / 'bad.png'} (")
    assert str(err.value).endswith("): delete or replace the file")


def test_own_size_is_the_median_low_shorter_side_and_grey_only_if_all_are(tmp_path):
    tree(tmp_path / "a", classes=("x",), n=1, size=(10, 30))
    tree(tmp_path / "a", classes=("y",), n=1, size=(20, 12))
    tree(tmp_path / "a", classes=("z",), n=1, size=(40, 50), mode="L")
    assert own_size_and_channels(scan(tmp_path / "a")) == (12, 3)  # shorter sides 10, 12, 40; one colour image
    tree(tmp_path / "g", classes=("x", "y"), n=2, size=(16, 9), mode="L")
    assert own_size_and_channels(scan(tmp_path / "g")) == (9, 1)


def test_own_size_samples_evenly_spaced_images(tmp_path, monkeypatch):
    tree(tmp_path, classes=("a", "b"), n=6, size=(8, 8), mode="L")
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "5.png")  # the last image is colour
    monkeypatch.setattr(folder, "SAMPLED_IMAGES", 4)  # 12 images: every third, 0 3 6 9, so not the last
    assert own_size_and_channels(scan(tmp_path)) == (8, 1)
    monkeypatch.setattr(folder, "SAMPLED_IMAGES", 12)
    assert own_size_and_channels(scan(tmp_path)) == (8, 3)


def test_scan_refuses_trees_a_classifier_cannot_use(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:
        scan(tmp_path / "empty")
    assert str(err.value).startswith(f"{tmp_path / 'empty'} is not a usable image tree (")
    assert str(err.value).endswith(f"expected {tmp_path / 'empty'}/<class>/<image> with two or more class folders "
                                   "holding images")
    tree(tmp_path / "one", classes=("solo",))
    with pytest.raises(DatasetError) as err:
        scan(tmp_path / "one")
    assert str(err.value) == (f"{tmp_path / 'one'} has only one class folder (solo): a classifier needs two or "
                              "more. Point --data-dir at the folder holding the class folders")


def _steps(transform) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]


def test_small_images_are_padded_and_cropped_large_ones_resized_and_cropped():
    small = train_transform(32, Augment(crop_padding=4, flip=True))
    assert _steps(small) == ["Resize", "CenterCrop", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert small.transforms[2].padding == 4 and small.transforms[0].size == 32
    assert _steps(train_transform(SMALL_IMAGE, Augment.off())) == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    large = train_transform(SMALL_IMAGE + 1, Augment(crop_padding=4, flip=False))
    assert _steps(large) == ["RandomResizedCrop", "ToTensor", "Normalize"]
    unaugmented = train_transform(224, Augment.off())
    assert _steps(unaugmented) == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert unaugmented.transforms[0].size == 256 and unaugmented.transforms[1].size == (224, 224)
    grey = train_transform(224, Augment.off(), in_chans=1).transforms[-1]
    assert (tuple(grey.mean), tuple(grey.std)) == (GREY_MEAN, GREY_STD)


def test_cutout_erases_a_square_of_its_side():
    erase = train_transform(32, Augment(crop_padding=0, flip=False, cutout=8)).transforms[-1]
    assert type(erase).__name__ == "RandomErasing" and erase.p == 1.0 and erase.value == 0
    assert erase.scale == (64 / 1024, 64 / 1024) and erase.ratio == (1.0, 1.0)
    assert train_transform(4, Augment(cutout=8)).transforms[-1].scale == (1.0, 1.0)  # never more than the image


def test_eval_transform_resizes_then_centre_crops():
    small = eval_transform(SMALL_IMAGE)
    assert _steps(small) == ["Resize", "CenterCrop", "ToTensor", "Normalize"] and small.transforms[0].size == 64
    assert eval_transform(SMALL_IMAGE + 1).transforms[0].size == math.floor(65 / 0.875)
    assert eval_transform(224).transforms[0].size == 256
    assert tuple(eval_transform(8, in_chans=1).transforms[-1].mean) == GREY_MEAN


def test_the_sampler_is_the_shared_epoch_order_from_the_resume_batch():
    sampler = SeededSampler(20, 3, shuffle=True, seed=5, rank=1, world_size=2)
    sampler.set_epoch(4)
    order = epoch_indices(20, seed=5, epoch=4, shuffle=True, rank=1, world_size=2)
    assert list(sampler) == order.tolist() and len(sampler) == len(order)
    sampler.set_epoch(4, start_batch=2)
    assert list(sampler) == order[6:].tolist() and len(sampler) == len(order) - 6
    assert list(SeededSampler(5, 2, shuffle=False, seed=0, rank=0, world_size=1)) == [0, 1, 2, 3, 4]


def test_a_workers_error_keeps_its_one_line():
    plain = DatasetError("cannot read image x.png (bad): delete or replace the file")
    assert _clean(plain) is plain
    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File ...\nnondeep.errors.DatasetError: cannot read image x.png (bad): "
                           "delete or replace the file\n")
    assert str(_clean(wrapped)) == "cannot read image x.png (bad): delete or replace the file"
    nested = DatasetError("Original Traceback\nnondeep.errors.DatasetError: x.png: DatasetError: inner\n")
    assert str(_clean(nested)) == "x.png: DatasetError: inner"  # only the first prefix goes
    other = DatasetError("Original Traceback (most recent call last):\nOSError: disk gone\n")
    assert str(_clean(other)) == "OSError: disk gone"  # no DatasetError prefix: the last line whole


def test_the_loaders_length_drop_last_and_resume_offset(tmp_path):
    tree(tmp_path, n=5)  # 10 images
    dataset = folder._Subset(scan(tmp_path), range(10), eval_transform(8))
    kept = FolderLoader(dataset, 4, shuffle=False, drop_last=False, device=CPU, seed=0, rank=0, world_size=1,
                        num_workers=0)
    dropped = FolderLoader(dataset, 4, shuffle=False, drop_last=True, device=CPU, seed=0, rank=0, world_size=1,
                           num_workers=0)
    assert (len(kept), len(dropped)) == (3, 2)
    assert [len(y) for _, y in kept] == [4, 4, 2] and [len(y) for _, y in dropped] == [4, 4]
    kept.set_epoch(0, start_batch=2)
    assert [y.tolist() for _, y in kept] == [[1, 1]]         # the last batch: images 8 and 9 (class bee)
    assert [len(y) for _, y in kept] == [4, 4, 2]            # the offset held for one pass only
    kept.set_epoch(0, start_batch=3)  # at the end: an empty pass, allowed
    with pytest.raises(ValueError, match=r"^start_batch 4 is outside 0..3$"):
        kept.set_epoch(0, start_batch=4)
    with pytest.raises(ValueError, match=r"^start_batch -1 is outside 0..3$"):
        kept.set_epoch(0, start_batch=-1)
    sharded = FolderLoader(dataset, 4, shuffle=True, drop_last=False, device=CPU, seed=0, rank=1, world_size=3,
                           num_workers=0)
    assert len(sharded) == 1 and sharded.num_samples == 3  # 10 // 3 a rank (the same on every rank)


def test_train_val_trees_and_their_class_folders(tmp_path):
    tree(tmp_path / "train", n=5)
    tree(tmp_path / "val", n=2, size=(12, 12))
    train, evaluate, classes, side, chans = loaders(tmp_path, image_size=None, in_chans=None)
    assert (classes, side, chans) == (["ant", "bee"], 8, 3)  # the size read from train/
    assert len(train.dataset) == 10 and [y.tolist() for _, y in evaluate] == [[0, 0, 1, 1]]
    assert build_folder_test_loader(tmp_path, batch_size=2, device=CPU, image_size=8, in_chans=3,
                                    num_workers=0) is not None
    tree(tmp_path / "val", classes=("ant", "cat"), n=1)
    with pytest.raises(DatasetError) as err:
        loaders(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'train'} and {tmp_path / 'val'} have different class folders; they "
                              "must match")


def test_without_val_a_fixed_slice_of_train_is_held_out_in_a_fixed_order(tmp_path):
    tree(tmp_path, n=10)  # no train/: the root itself, and its val/ (none) is ignored
    train0, held0, *_ = loaders(tmp_path, seed=0)
    train1, held1, *_ = loaders(tmp_path, seed=1)
    assert len(held0.dataset) == 2 and held0.dataset.samples == held1.dataset.samples  # the same for every seed
    assert train0.dataset.samples == train1.dataset.samples  # the listed order too; the seed shuffles epochs
    assert {s for s in train0.dataset.samples}.isdisjoint(held0.dataset.samples)
    labels = [label for _, label in train0.dataset.samples]
    assert labels != sorted(labels)  # listed shuffled, so the first N are a mix of classes
    first = loaders(tmp_path, max_train_samples=5)[0].dataset.samples
    assert first == train0.dataset.samples[:5]
    quarter = loaders(tmp_path, val_split=0.25)[1]
    assert len(quarter.dataset) == 5
    assert build_folder_test_loader(tmp_path, batch_size=2, device=CPU, image_size=8, in_chans=3,
                                    num_workers=0) is None


def test_too_few_images_to_hold_out_is_one_line(tmp_path):
    tree(tmp_path, n=1)
    with pytest.raises(DatasetError) as err:
        loaders(tmp_path, val_split=0.1)
    assert str(err.value) == f"{tmp_path} has too few images (2) to hold out 10% for evaluation"


def test_fit_batches_is_asked_with_the_trees_classes_channels_and_side(tmp_path):
    tree(tmp_path / "train", classes=("a", "b", "c"), n=4, size=(16, 16), mode="L")
    tree(tmp_path / "val", classes=("a", "b", "c"), n=1, size=(16, 16), mode="L")
    asked = []
    train, evaluate, *_ = loaders(tmp_path, image_size=None, in_chans=None,
                                  fit_batches=lambda *a: asked.append(a) or (3, 2))
    assert asked == [(3, 1, (16, 16))]
    assert train.batch_size == 3 and evaluate.batch_size == 2
    x, _ = next(iter(train))
    assert x.shape == (3, 1, 16, 16)


def test_drop_last_only_when_a_rank_has_a_whole_batch(tmp_path):
    tree(tmp_path / "train", n=3)
    tree(tmp_path / "val", n=1)
    assert loaders(tmp_path, batch_size=6)[0].drop_last          # 6 images, a batch of 6
    assert not loaders(tmp_path, batch_size=7)[0].drop_last      # fewer images than a batch: keep them
    assert not loaders(tmp_path, batch_size=4, world_size=2)[0].drop_last  # 3 a rank


def test_grey_trees_are_read_grey_and_normalised_with_the_grey_statistics(tmp_path):
    tree(tmp_path / "train", n=2, mode="L")
    tree(tmp_path / "val", n=1, mode="L")  # grey levels 0 (ant) and 10 (bee)
    x, y = next(iter(loaders(tmp_path, in_chans=1)[1]))
    assert x.shape == (2, 1, 8, 8) and y.tolist() == [0, 1]
    expected = [(level / 255 - GREY_MEAN[0]) / GREY_STD[0] for level in (0, 10)]
    assert x[:, 0, 3, 5].tolist() == pytest.approx(expected, abs=1e-6)
    x3, _ = next(iter(loaders(tmp_path, in_chans=3)[1]))
    assert x3.shape == (2, 3, 8, 8)
    assert x3[1, :, 0, 0].tolist() == pytest.approx([(10 / 255 - m) / s for m, s in zip(MEAN, STD)], abs=1e-6)


def test_the_test_loader_serves_all_of_val_in_order_at_the_asked_size_and_channels(tmp_path):
    tree(tmp_path / "train", n=5)
    assert build_folder_test_loader(tmp_path, batch_size=4, device=CPU, image_size=8, in_chans=1,
                                    num_workers=0) is None  # train/ without val/: no test split
    tree(tmp_path / "val", n=3, size=(12, 12))  # 6 images of 12x12: batches of 4 and 2, none dropped
    test = build_folder_test_loader(tmp_path, batch_size=4, device=CPU, image_size=8, in_chans=1, num_workers=0)
    for _ in range(2):  # the same order every time: not shuffled
        batches = list(test)
        assert [tuple(x.shape) for x, _ in batches] == [(4, 1, 8, 8), (2, 1, 8, 8)]
        assert [y.tolist() for _, y in batches] == [[0, 0, 0, 1], [1, 1]]
        grey = torch.cat([x[:, 0, 0, 0] for x, _ in batches])  # image i of class c is filled with 10c + i
        levels = torch.tensor([0., 1, 2, 10, 11, 12]) / 255
        assert torch.allclose(grey, (levels - GREY_MEAN[0]) / GREY_STD[0], atol=1e-6)


def test_workers_ignore_ctrl_c_and_the_defaults_of_the_transform_and_the_epoch(tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    try:
        folder._ignore_ctrl_c(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    image = Image.new("RGB", (SMALL_IMAGE, SMALL_IMAGE), (10, 20, 30))
    plain = train_transform(SMALL_IMAGE, Augment(crop_padding=0, flip=False))  # 3 channels by default
    assert torch.allclose(plain(image)[:, 0, 0], (torch.tensor([10., 20, 30]) / 255 - torch.tensor(MEAN))
                          / torch.tensor(STD), atol=1e-6)
    # up to SMALL_IMAGE a side (included): pad-and-crop, never a resized crop
    names = [type(t).__name__ for t in train_transform(SMALL_IMAGE, Augment(crop_padding=4)).transforms]
    assert "RandomCrop" in names and "RandomResizedCrop" not in names
    tree(tmp_path, n=5)
    loader = FolderLoader(folder._Subset(scan(tmp_path), range(10), eval_transform(8)), 4, shuffle=False,
                          drop_last=False, device=CPU, seed=0, rank=0, world_size=1, num_workers=0)
    loader.set_epoch(0)  # from the first batch by default
    assert sum(len(y) for _, y in loader) == 10


def test_the_listed_training_order_is_pinned(tmp_path):
    """The fixed shuffled listing of train (max_train_samples keeps its head, a resumed run relies on it) is
    part of the format: these are today's positions for a 2 x 10 tree, with 10% held out."""
    tree(tmp_path, n=10)
    train, held, *_ = loaders(tmp_path)
    listed = [(Path(path).parent.name, int(Path(path).stem)) for path, _ in train.dataset.samples]
    assert listed == [("ant", 2), ("ant", 7), ("ant", 8), ("bee", 5), ("bee", 0), ("bee", 3), ("ant", 4),
                      ("ant", 3), ("bee", 1), ("bee", 6), ("bee", 7), ("bee", 8), ("ant", 6), ("ant", 1),
                      ("ant", 9), ("bee", 2), ("bee", 4), ("ant", 0)]
    assert [(Path(path).parent.name, int(Path(path).stem)) for path, _ in held.dataset.samples] == [
        ("ant", 5), ("bee", 9)]


def test_a_train_folder_without_val_holds_out_a_slice_of_train(tmp_path):
    tree(tmp_path / "train", n=5)
    train, held, classes, *_ = loaders(tmp_path)
    assert classes == ["ant", "bee"] and (len(train.dataset), len(held.dataset)) == (9, 1)
    assert all(Path(path).parent.parent == tmp_path / "train" for path, _ in held.dataset.samples)


def test_the_train_loader_is_shuffled_by_seed_and_epoch_and_the_eval_loader_is_not(tmp_path):
    tree(tmp_path / "train", n=6)
    tree(tmp_path / "val", n=3)
    train, evaluate, *_ = loaders(tmp_path, seed=3)
    labels = [label for _, label in train.dataset.samples]
    for epoch in (0, 1):
        train.set_epoch(epoch)
        order = epoch_indices(12, seed=3, epoch=epoch, shuffle=True, rank=0, world_size=1).tolist()
        assert list(train.sampler) == order
        assert sum((y.tolist() for _, y in train), []) == [labels[i] for i in order]
    assert order != list(range(12))
    assert list(evaluate.sampler) == list(range(6))
    assert sum((y.tolist() for _, y in evaluate), []) == [0, 0, 0, 1, 1, 1]


def test_the_data_loader_pins_memory_for_a_gpu_keeps_workers_and_their_ctrl_c_off(tmp_path):
    tree(tmp_path, n=5)
    dataset = folder._Subset(scan(tmp_path), range(10), eval_transform(8))

    def built(device, workers, world_size=1):
        return FolderLoader(dataset, 4, shuffle=True, drop_last=False, device=torch.device(device), seed=0, rank=0,
                            world_size=world_size, num_workers=workers)
    assert built("cpu", 0).loader.pin_memory is False and built("cuda", 0).loader.pin_memory is True
    one_worker = built("cpu", 1).loader
    assert one_worker.persistent_workers is True and one_worker.worker_init_fn is folder._ignore_ctrl_c
    assert built("cpu", 0).loader.persistent_workers is False
    assert built("cpu", 0, world_size=2).num_samples == 5 and built("cpu", 0).num_samples == 10


def test_a_loader_iterated_before_set_epoch_serves_epoch_0(tmp_path):
    tree(tmp_path, n=5)
    dataset = folder._Subset(scan(tmp_path), range(10), eval_transform(8))
    loader = FolderLoader(dataset, 4, shuffle=True, drop_last=False, device=CPU, seed=2, rank=0, world_size=1,
                          num_workers=0)
    assert list(loader.sampler) == epoch_indices(10, seed=2, epoch=0, shuffle=True, rank=0, world_size=1).tolist()
