"""The data entry point (nondeep.data): names and aliases, the default augmentation per dataset, the splits
build_loaders serves (validation held out of train, or the test split), its bounds and refusals, drop_last,
the DataInfo it returns, and the test loader. Fashion-MNIST here is the tests' own small copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nondeep.data import (Augment, DataInfo, build_loaders, build_test_loader, default_augment, load_arrays,
                          resize_images, resolve_data)
from nondeep.data import _stats, check_holdout, cifar, fashion_mnist
from nondeep.data.sampling import holdout_split
from nondeep.errors import DatasetError


@pytest.fixture
def fmnist(tmp_path_factory):
    from conftest import make_fashion_like
    return make_fashion_like(tmp_path_factory.mktemp("fm"), n_train=100, n_test=30)


@pytest.mark.parametrize("name,key", [
    ("fashion-mnist", "fashion-mnist"), ("Fashion_MNIST", "fashion-mnist"), ("fashionmnist", "fashion-mnist"),
    ("FMNIST", "fashion-mnist"), (" fmnist ", "fashion-mnist"), ("cifar10", "cifar10"), ("CIFAR-10", "cifar10"),
    ("cifar_10", "cifar10"), ("cifar100", "cifar100"), ("cifar-100", "cifar100"), ("cifar_100", "cifar100")])
def test_dataset_names_and_aliases(name, key):
    assert resolve_data(name) == (key, None)


def test_a_folder_is_found_as_given_or_under_data_dir(tmp_path):
    (tmp_path / "tree").mkdir()
    assert resolve_data(str(tmp_path / "tree")) == ("folder", tmp_path / "tree")
    assert resolve_data("tree", str(tmp_path)) == ("folder", tmp_path / "tree")
    with pytest.raises(DatasetError) as err:
        resolve_data("tree")
    assert str(err.value) == ("unknown dataset 'tree': choose fashion-mnist, cifar10, cifar100, or give the path of "
                              "an ImageFolder tree (root/train/<class>/*.jpg and root/val/<class>/*.jpg)")
    (tmp_path / "file").write_text("")
    with pytest.raises(DatasetError):
        resolve_data("file", str(tmp_path))


def test_default_augmentation_per_dataset():
    assert default_augment("fashion-mnist") == Augment(crop_padding=2, flip=True)
    assert default_augment("FMNIST") == Augment(crop_padding=2, flip=True)
    assert default_augment("cifar10") == Augment(crop_padding=4) == default_augment("CIFAR-100")
    assert default_augment("/some/tree") == Augment()
    assert Augment().flip and Augment().crop_padding == 4


def test_normalisation_statistics_per_dataset():
    assert _stats("fashion-mnist") == (fashion_mnist.MEAN, fashion_mnist.STD)
    assert _stats("cifar10") == (cifar.MEAN["cifar10"], cifar.STD["cifar10"])
    assert _stats("cifar100") == (cifar.MEAN["cifar100"], cifar.STD["cifar100"])


def test_load_arrays_serves_in_memory_sets_only(tmp_path, fmnist):
    images, labels, classes = load_arrays("fashion-mnist", "test", fmnist)
    assert images.shape == (30, 1, 28, 28) and classes == fashion_mnist.CLASSES
    assert load_arrays("fashion-mnist", "test", fmnist, image_size=14)[0].shape == (30, 1, 14, 14)
    (tmp_path / "tree").mkdir()
    with pytest.raises(DatasetError) as err:
        load_arrays(str(tmp_path / "tree"), "train")
    assert str(err.value) == (f"load_arrays serves the in-memory datasets (fashion-mnist, cifar10, cifar100), not "
                              f"the image tree {tmp_path / 'tree'}; use build_loaders for it")


def test_resize_images_rounds_and_works_in_chunks():
    images = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8)
    assert resize_images(images, None) is images and resize_images(images, 6) is images
    whole = resize_images(images, 9)
    assert whole.shape == (5, 1, 9, 9) and whole.dtype == torch.uint8
    assert torch.equal(resize_images(images, 9, chunk=2), whole)  # chunks change nothing
    expected = torch.nn.functional.interpolate(images.float(), size=(9, 9), mode="bilinear", align_corners=False,
                                               antialias=True).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(whole, expected)
    assert torch.equal(resize_images(torch.full((1, 1, 8, 8), 255, dtype=torch.uint8), 3),
                       torch.full((1, 1, 3, 3), 255, dtype=torch.uint8))  # no overflow past 255


def test_validation_is_held_out_of_train_and_test_is_the_other_split(fmnist):
    train, evaluate, info = build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=10, val_split=0.2)
    keep, held = holdout_split(100, 0.2)
    images, labels, _ = load_arrays("fashion-mnist", "train", fmnist)
    assert torch.equal(evaluate.labels, labels[held]) and torch.equal(train.labels, labels[keep])
    assert (info.num_train, info.num_eval) == (80, 20)
    _, test, info = build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=10)  # val_split 0: test
    assert torch.equal(test.labels, load_arrays("fashion-mnist", "test", fmnist)[1]) and info.num_eval == 30


def test_the_info_describes_what_is_served(fmnist):
    train, evaluate, info = build_loaders("fmnist", data_dir=str(fmnist), batch_size=16, eval_batch_size=7,
                                          max_train_samples=50, image_size=14)
    assert info == DataInfo("fashion-mnist", 10, 1, (14, 14), fashion_mnist.MEAN, fashion_mnist.STD,
                            fashion_mnist.CLASSES, 50, 30, path=str(Path(fmnist).resolve()))
    assert train.batch_size == 16 and evaluate.batch_size == 7 and len(train.labels) == 50
    assert build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=16)[1].batch_size == 16  # eval = train


def test_max_train_samples_keeps_the_first_images(fmnist):
    full = build_loaders("fashion-mnist", data_dir=str(fmnist), val_split=0.1)[0]
    first = build_loaders("fashion-mnist", data_dir=str(fmnist), val_split=0.1, max_train_samples=1)[0]
    assert torch.equal(first.labels, full.labels[:1])


def test_a_ragged_last_batch_is_dropped_unless_it_is_the_only_one(fmnist):
    assert build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=100)[0].drop_last
    assert not build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=101)[0].drop_last
    assert build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=50, world_size=2)[0].drop_last
    assert not build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=51, world_size=2)[0].drop_last


def test_fit_batches_gets_the_sets_classes_channels_and_size(fmnist):
    asked = []
    train, evaluate, _ = build_loaders("fashion-mnist", data_dir=str(fmnist), image_size=20,
                                       fit_batches=lambda *a: asked.append(a) or (12, 5))
    assert asked == [(10, 1, (20, 20))] and train.batch_size == 12 and evaluate.batch_size == 5


@pytest.mark.parametrize("kwargs,message", [
    ({"val_split": 1.0}, "val_split must be in [0, 1), got 1.0"),
    ({"val_split": -0.1}, "val_split must be in [0, 1), got -0.1"),
    ({"max_train_samples": 0}, "max_train_samples must be at least 1, got 0"),
    ({"in_chans": 3}, "fashion-mnist is 1-channel; a channel count of its own (--in-chans) is for ImageFolder trees: "
                      "drop that option"),
])
def test_bad_options_are_one_line(fmnist, kwargs, message):
    with pytest.raises(DatasetError) as err:
        build_loaders("fashion-mnist", data_dir=str(fmnist), **kwargs)
    assert str(err.value) == message


def test_options_at_their_edges_are_accepted(fmnist):
    build_loaders("fashion-mnist", data_dir=str(fmnist), val_split=0.0, max_train_samples=1, in_chans=1)


def test_a_validation_split_must_hold_out_an_image_and_leave_a_batch():
    check_holdout(100, 90, 10, 0.1, 90)     # exactly one batch left
    check_holdout(10, 5, 5, 0.5, 256)       # the whole set was less than a batch: nothing lost
    with pytest.raises(DatasetError) as err:
        check_holdout(100, 100, 0, 0.001, 10)
    assert str(err.value) == ("val_split 0.001 holds out no image of 100: raise --val-split, or pass --val-split 0 "
                              "to train on all images and select nothing")
    with pytest.raises(DatasetError) as err:
        check_holdout(100, 89, 11, 0.11, 90)
    assert str(err.value) == ("val_split 0.11 leaves 89 of 100 training images, fewer than one batch (90): lower "
                              "--val-split or --batch-size")
    check_holdout(100, 89, 11, 0.11, 101)   # the batch was more than the whole set


def test_with_indices_needs_an_in_memory_set(tmp_path, fmnist):
    train, _, _ = build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=10, with_indices=True)
    assert len(next(iter(train))) == 3
    (tmp_path / "tree").mkdir()
    with pytest.raises(DatasetError) as err:
        build_loaders(str(tmp_path / "tree"), with_indices=True)
    assert str(err.value) == ("with_indices (cached teacher logits) needs an in-memory dataset (fashion-mnist, "
                              "cifar10, cifar100); for an image tree run the teacher online")


def test_the_test_loader_is_the_test_split_resized(fmnist):
    loader = build_test_loader("fashion-mnist", data_dir=str(fmnist), batch_size=8, image_size=14)
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 14, 14) and loader.batch_size == 8
    assert torch.equal(loader.labels, load_arrays("fashion-mnist", "test", fmnist)[1])
    mean, std = fashion_mnist.MEAN, fashion_mnist.STD
    raw = resize_images(load_arrays("fashion-mnist", "test", fmnist)[0][:8], 14).float() / 255
    assert torch.allclose(x, (raw - mean[0]) / std[0], atol=1e-6)


def test_the_download_flag_reaches_fashion_mnist_and_is_on_by_default(fmnist, monkeypatch):
    asked = []
    real = fashion_mnist.load_fashion_mnist

    def recording(split, data_dir, download):
        asked.append((split, download))
        return real(split, data_dir, False)
    monkeypatch.setattr(fashion_mnist, "load_fashion_mnist", recording)
    load_arrays("fashion-mnist", "test", fmnist)
    load_arrays("fashion-mnist", "test", fmnist, download=False)
    build_loaders("fashion-mnist", data_dir=str(fmnist))                   # val_split 0: train and test
    build_loaders("fashion-mnist", data_dir=str(fmnist), download=False)
    assert build_test_loader("fashion-mnist", data_dir=str(fmnist)).batch_size == 1024  # the default
    build_test_loader("fashion-mnist", data_dir=str(fmnist), download=False)
    assert asked == [("test", True), ("test", False), ("train", True), ("test", True), ("train", False),
                     ("test", False), ("test", True), ("test", False)]


def test_a_tree_named_relative_to_data_dir_is_still_a_tree(tmp_path):
    (tmp_path / "tree").mkdir()
    with pytest.raises(DatasetError, match="not the image tree tree; use build_loaders for it"):
        load_arrays("tree", "train", tmp_path)


def test_resize_images_works_in_chunks_of_4096_images_and_keeps_black_black(monkeypatch):
    """The float copy of a whole set is 4x its bytes: the resize goes chunk by chunk (4096 images by default)."""
    sizes = []
    real = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate",
                        lambda part, **kw: sizes.append(len(part)) or real(part, **kw))
    resize_images(torch.zeros((4097, 1, 2, 2), dtype=torch.uint8), 3)
    resize_images(torch.zeros((5, 1, 2, 2), dtype=torch.uint8), 3, chunk=2)
    assert sizes == [4096, 1, 2, 2, 1]
    assert torch.equal(resize_images(torch.zeros((1, 1, 8, 8), dtype=torch.uint8), 3),
                       torch.zeros((1, 1, 3, 3), dtype=torch.uint8))  # no floor above 0


def test_the_train_loader_augments_as_asked_or_by_the_datasets_default(fmnist):
    assert build_loaders("fashion-mnist", data_dir=str(fmnist))[0].augment == Augment(crop_padding=2, flip=True)
    crop_only = Augment(crop_padding=1, flip=False)
    assert build_loaders("fashion-mnist", data_dir=str(fmnist), augment=crop_only)[0].augment == crop_only
    assert build_loaders("fashion-mnist", data_dir=str(fmnist), augment=Augment.off())[0].augment is None


def test_the_train_order_is_seeded_by_seed_0_by_default(fmnist):
    def order(**kwargs):
        train = build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=10, augment=Augment.off(),
                              **kwargs)[0]
        train.set_epoch(0)
        return torch.cat([y for _, y in train])
    assert torch.equal(order(), order(seed=0)) and not torch.equal(order(), order(seed=1))


def test_a_whole_set_of_exactly_one_batch_must_keep_a_batch_after_the_split():
    with pytest.raises(DatasetError, match="leaves 90 of 100 training images, fewer than one batch \\(100\\)"):
        check_holdout(100, 90, 10, 0.1, 100)


def test_a_trees_loaders_are_found_under_data_dir_with_their_defaults(tmp_path):
    from conftest import make_image_tree
    for split in ("train", "val"):
        make_image_tree(tmp_path / "tree" / split, n=2)
    train, _, info = build_loaders("tree", data_dir=str(tmp_path), batch_size=2)
    assert info.path == str((tmp_path / "tree").resolve()) and info.num_train == 4
    assert train.loader.num_workers == 2  # DataLoader workers by default
    test = build_test_loader("tree", data_dir=str(tmp_path))
    assert test.batch_size == 1024 and test.loader.num_workers == 2 and len(test.dataset) == 4
    image, _ = test.dataset[0]
    assert image.shape == (3, 224, 224)  # a tree's test split is read at 224 x 224, 3 channels, by default
    small = build_test_loader(str(tmp_path / "tree"), batch_size=3, image_size=16, in_chans=1, num_workers=0)
    assert small.batch_size == 3 and small.loader.num_workers == 0 and small.dataset[0][0].shape == (1, 16, 16)


def test_a_trees_info_names_it_and_describes_its_images_and_fit_batches_reaches_it(tmp_path, monkeypatch):
    from conftest import make_image_tree
    from nondeep.data.folder import GREY_MEAN, GREY_STD
    for split in ("train", "val"):
        make_image_tree(tmp_path / "leaves" / split, classes=("ash", "elm", "oak"), n=2, size=(12, 12), mode="L")
    asked = []
    train, evaluate, info = build_loaders(str(tmp_path / "leaves"), num_workers=0,
                                          fit_batches=lambda *a: asked.append(a) or (4, 3))
    assert asked == [(3, 1, (12, 12))] and (train.batch_size, evaluate.batch_size) == (4, 3)
    assert info == DataInfo("leaves", 3, 1, (12, 12), GREY_MEAN, GREY_STD, ["ash", "elm", "oak"], 6, 6,
                            path=str((tmp_path / "leaves").resolve()))
    monkeypatch.chdir(tmp_path / "leaves")  # a tree given as "." is named as given
    assert build_loaders(".", num_workers=0)[2].name == "."


def test_build_loaders_refuses_a_split_that_holds_out_no_image(fmnist):
    with pytest.raises(DatasetError) as err:
        build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=10, val_split=0.001)
    assert str(err.value) == ("val_split 0.001 holds out no image of 100: raise --val-split, or pass --val-split 0 "
                              "to train on all images and select nothing")


def test_the_test_split_served_for_evaluation_is_read_at_the_asked_size(fmnist):
    _, evaluate, _ = build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=10, image_size=14)
    assert evaluate.images.shape == (30, 1, 14, 14)
    test_images = load_arrays("fashion-mnist", "test", fmnist)[0]
    assert torch.equal(evaluate.images, resize_images(test_images, 14))


def test_the_train_loader_is_this_ranks_shard(fmnist):
    from nondeep.data.sampling import epoch_indices
    train = build_loaders("fashion-mnist", data_dir=str(fmnist), batch_size=10, augment=Augment.off(), seed=4,
                          rank=1, world_size=3)[0]
    assert (train.rank, train.world_size, len(train)) == (1, 3, 3)  # 33 a rank
    train.set_epoch(2)
    labels = load_arrays("fashion-mnist", "train", fmnist)[1]
    order = epoch_indices(100, seed=4, epoch=2, shuffle=True, rank=1, world_size=3)
    assert torch.equal(torch.cat([y for _, y in train]), labels[order][:30])


def test_the_info_names_no_path_when_the_data_was_found_by_the_search_order(fmnist, monkeypatch):
    monkeypatch.setenv("NONDEEP_DATA", str(fmnist))
    assert build_loaders("fashion-mnist", batch_size=10)[2].path is None
