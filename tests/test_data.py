"""The data layer: every dataset here is written by the test itself; nothing touches the network."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nondeep.data import Augment, DataInfo, TensorLoader, build_loaders, build_test_loader, load_arrays, resize_images
from nondeep.data import cifar
from nondeep.errors import DatasetError, NondeepError
from conftest import write_idx

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def fake_fashion_mnist(folder: Path, n_train: int = 40, n_test: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return folder


pytestmark = pytest.mark.usefixtures("no_fashion_mnist_anywhere")


# ---------------------------------------------------------------- CIFAR

def _cifar_batch(n: int, labels_key: str, num_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            labels_key.encode(): [int(i) for i in rng.integers(0, num_classes, n)],
            b"filenames": [b"f.png"] * n}


def fake_cifar(root: Path, name: str) -> Path:
    folder = root / cifar.SPECS[name][0]
    folder.mkdir(parents=True)
    dump = lambda obj, fname: (folder / fname).write_bytes(pickle.dumps(obj, protocol=2))  # noqa: E731
    if name == "cifar10":
        for i in range(1, 6):
            dump(_cifar_batch(4, "labels", 10, i), f"data_batch_{i}")
        dump(_cifar_batch(6, "labels", 10, 0), "test_batch")
        dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, "batches.meta")
    else:
        for fname, n in (("train", 12), ("test", 5)):
            batch = _cifar_batch(n, "fine_labels", 100, n)
            batch[b"coarse_labels"] = [0] * n
            dump(batch, fname)
        dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
              b"coarse_label_names": [b"c"] * 20}, "meta")
    return folder


def test_cifar10_and_100_load(tmp_path):
    folder = fake_cifar(tmp_path, "cifar10")
    images, labels, classes = load_arrays("cifar10", "train", data_dir=tmp_path)
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8 and classes[3] == "c3"
    first = pickle.loads((folder / "data_batch_1").read_bytes())
    assert labels[:4].tolist() == first[b"labels"] and labels.dtype == torch.int64
    assert torch.equal(images[0, 0].flatten(), torch.from_numpy(first[b"data"][0, :1024]))  # red plane first
    images, labels, _ = load_arrays("cifar10", "test", data_dir=folder)  # the folder itself works too
    assert images.shape == (6, 3, 32, 32)

    fake_cifar(tmp_path, "cifar100")
    images, labels, classes = load_arrays("cifar-100", "train", data_dir=tmp_path)
    assert images.shape == (12, 3, 32, 32) and len(classes) == 100 and labels.max() < 100
    raw = pickle.loads((tmp_path / "cifar-100-python" / "test").read_bytes())
    assert load_arrays("cifar100", "test", data_dir=tmp_path)[1].tolist() == raw[b"fine_labels"]


def test_cifar_python2_pickle_loads(tmp_path):
    """The real files were written by Python 2's cPickle: str opcodes and numpy.core globals."""
    array = (b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03"
             b"(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x04U\x02u1K\x00K\x01\x87Rq\x05(K\x03U\x01|NNNJ\xff\xff"
             b"\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06\x01\x02\x03\x04\x05\x06tb")
    path = tmp_path / "py2"
    path.write_bytes(b"\x80\x02}q\x00(U\x04dataq\x06" + array + b"U\x06labelsq\x07]q\x08(K\x01K\x02eu.")
    d = cifar.load_pickle(path, {"data", "labels"})
    assert d["data"].tolist() == [[1, 2, 3], [4, 5, 6]] and d["data"].dtype == np.uint8 and d["labels"] == [1, 2]


class _Boom:
    def __reduce__(self):
        return (print, ("pickle code ran",))


@pytest.mark.parametrize("payload", ["truncated", "list", "code", "keys"])
def test_cifar_corrupt_pickle(tmp_path, payload, capsys):
    folder = fake_cifar(tmp_path, "cifar10")
    target = folder / "data_batch_2"
    if payload == "truncated":
        target.write_bytes(target.read_bytes()[:1000])
    elif payload == "list":
        target.write_bytes(pickle.dumps([1, 2, 3]))
    elif payload == "code":
        target.write_bytes(pickle.dumps({b"data": _Boom(), b"labels": []}))
    else:
        target.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_arrays("cifar10", "train", data_dir=tmp_path)
    assert "pickle code ran" not in capsys.readouterr().out


def test_cifar_missing_says_where_and_how(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py.*cifar-10-python.tar.gz.*--data-dir"):
        load_arrays("cifar10", "train", data_dir=tmp_path)


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DatasetError, match="fashion-mnist, cifar10, cifar100"):
        build_loaders("mnist-of-doom")


# ---------------------------------------------------------------- ImageFolder

def image_tree(root: Path, classes=("ant", "bee"), n: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder_with_train_val(tmp_path):
    image_tree(tmp_path / "train")
    image_tree(tmp_path / "val", n=2)
    train, evaluate, info = build_loaders(str(tmp_path), batch_size=4, image_size=8, num_workers=0)
    assert info.classes == ["ant", "bee"] and info.num_train == 10 and info.num_eval == 4
    assert info.in_chans == 3 and info.image_size == (8, 8) and len(train) == 2
    train.set_epoch(1)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sum(len(y) for _, y in evaluate) == 4
    train.set_epoch(1, start_batch=1)
    assert len(list(train)) == 1


def test_image_folder_without_split_holds_out(tmp_path):
    image_tree(tmp_path, n=10)
    train, evaluate, info = build_loaders(str(tmp_path), batch_size=4, image_size=8, num_workers=0,
                                          max_train_samples=8)
    assert info.num_eval == 2 and info.num_train == 8
    assert {int(v) for _, y in train for v in y} == {0, 1}  # a mix of classes, not the first folder only


def test_image_folder_empty_or_one_class(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a usable image tree"):
        build_loaders(str(tmp_path / "empty"), num_workers=0)
    image_tree(tmp_path / "one", classes=("solo",))
    with pytest.raises(DatasetError, match="only one class"):
        build_loaders(str(tmp_path / "one"), num_workers=0)


def test_image_folder_corrupt_image_names_the_file(tmp_path):
    image_tree(tmp_path / "train", n=2)
    image_tree(tmp_path / "val", n=1)
    (tmp_path / "train" / "bee" / "broken.png").write_bytes(b"\x89PNG not really")
    # size and channels given: no image is opened up front, so the worker that decodes it names it
    train, _, _ = build_loaders(str(tmp_path), batch_size=8, image_size=8, in_chans=3, num_workers=1)
    with pytest.raises(DatasetError) as info:
        list(train)
    assert "broken.png" in str(info.value) and "\n" not in str(info.value)
    # otherwise the headers read to find the tree's own size name it before anything runs
    with pytest.raises(DatasetError, match="cannot read image .*broken.png"):
        build_loaders(str(tmp_path), batch_size=8, num_workers=0)


# ---------------------------------------------------------------- TensorLoader

def _ids(n=40, c=1, h=6, w=6):
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    return images, torch.arange(n)  # labels double as sample ids


def test_tensor_loader_shapes_and_normalisation():
    images, labels = _ids(64, 3, 8, 8)
    mean = tuple((images.float() / 255).mean(dim=(0, 2, 3)).tolist())
    std = tuple((images.float() / 255).std(dim=(0, 2, 3)).tolist())
    loader = TensorLoader(images, labels, 16, mean, std)
    batches = list(loader)
    assert len(loader) == len(batches) == 4
    x, y = batches[0]
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    allx = torch.cat([b[0] for b in batches])
    assert allx.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (allx.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    assert len(TensorLoader(images, labels, 10, mean, std, drop_last=True)) == 6
    assert len(TensorLoader(images, labels, 10, mean, std)) == 7


def test_tensor_loader_epochs_are_deterministic():
    images, labels = _ids()
    def make():
        return TensorLoader(images, labels, 8, (0.5,), (0.25,), shuffle=True, augment=Augment(2, True, 2), seed=7)
    a, b = make(), make()
    a.set_epoch(1)
    b.set_epoch(1)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(2)
    order1, order2 = torch.cat([y for _, y in a]), torch.cat([y for _, y in b])
    assert not torch.equal(order1, order2) and sorted(order1.tolist()) == sorted(order2.tolist()) == list(range(40))


def test_tensor_loader_start_batch_skips_exactly():
    images, labels = _ids()
    loader = TensorLoader(images, labels, 8, (0.5,), (0.25,), shuffle=True, augment=Augment(2, True), seed=1)
    loader.set_epoch(4)
    full = list(loader)
    loader.set_epoch(4, start_batch=2)
    resumed = list(loader)
    assert len(resumed) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(list(loader)) == len(full)  # the offset applied to one pass only


def test_tensor_loader_ddp_shards_are_disjoint_and_cover():
    images, labels = _ids(40)
    shards = []
    for rank in range(2):
        loader = TensorLoader(images, labels, 5, (0.5,), (0.25,), shuffle=True, seed=3, rank=rank, world_size=2)
        loader.set_epoch(5)
        shards.append(torch.cat([y for _, y in loader]).tolist())
        assert len(loader) == 4
    assert len(shards[0]) == len(shards[1]) == 20 and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(40))
    odd = TensorLoader(torch.cat([images, images[:1]]), torch.arange(41), 5, (0.5,), (0.25,), shuffle=True,
                       rank=1, world_size=2)
    assert odd.num_samples == 20  # equal on every rank: the odd sample out is skipped this epoch


def test_crop_keeps_shape_and_moves_content():
    images, labels = _ids(32, 2, 6, 6)
    x0 = torch.cat([x for x, _ in TensorLoader(images, labels, 32, (0.0, 0.0), (1 / 255, 1 / 255))])
    loader = TensorLoader(images, labels, 32, (0.0, 0.0), (1 / 255, 1 / 255), augment=Augment(2, False))
    x1 = torch.cat([x for x, _ in loader])
    assert x1.shape == x0.shape
    padded = torch.nn.functional.pad(x0, (2, 2, 2, 2))
    moved = 0
    for i in range(32):  # every sample is some 6x6 window of its zero-padded original
        windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(x1[i], w) for w in windows)
        moved += not torch.equal(x1[i], x0[i])
    assert moved > 16


def test_flip_flips_only_some_and_cutout_zeroes_a_square():
    images, labels = _ids(64, 1, 6, 6)
    x0 = torch.cat([x for x, _ in TensorLoader(images, labels, 64, (0.0,), (1 / 255,))])
    x1 = torch.cat([x for x, _ in TensorLoader(images, labels, 64, (0.0,), (1 / 255,), augment=Augment(0, True))])
    flipped = [torch.equal(x1[i], x0[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(x1[i], x0[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54
    x2 = torch.cat([x for x, _ in TensorLoader(images // 2 + 1, labels, 64, (0.0,), (1 / 255,),
                                                augment=Augment(0, False, 3))])
    zeros = (x2 == 0).flatten(1).sum(1)
    assert zeros.max() <= 9 and zeros.float().mean() > 2


# ---------------------------------------------------------------- build_loaders on a small dataset

def test_build_loaders_sizes(tmp_path):
    fake_fashion_mnist(tmp_path, n_train=100, n_test=30)
    train, evaluate, info = build_loaders("fashion-mnist", data_dir=str(tmp_path), batch_size=16)
    assert isinstance(info, DataInfo) and info.num_classes == 10 and info.in_chans == 1
    assert info.image_size == (28, 28) and info.mean == (0.2860,) and (info.num_train, info.num_eval) == (100, 30)
    assert len(train) == 6 and hasattr(train, "set_epoch")  # drop_last in training
    train, evaluate, info = build_loaders("fashion-mnist", data_dir=str(tmp_path), val_split=0.2)
    assert (info.num_train, info.num_eval) == (80, 20)
    held = torch.cat([y for _, y in evaluate])
    assert len(held) == 20
    train, _, info = build_loaders("fashion-mnist", data_dir=str(tmp_path), max_train_samples=24, batch_size=8)
    assert info.num_train == 24 and len(train) == 3 and info.num_eval == 30
    with pytest.raises(NondeepError, match="val_split"):
        build_loaders("fashion-mnist", data_dir=str(tmp_path), val_split=1.0)


def test_image_size_none_or_own_leaves_the_set_bit_identical(tmp_path):
    fake_fashion_mnist(tmp_path, n_train=20, n_test=10)
    own, labels, _ = load_arrays("fashion-mnist", "train", tmp_path)
    for size in (None, 28):
        same, same_labels, _ = load_arrays("fashion-mnist", "train", tmp_path, image_size=size)
        assert torch.equal(same, own) and torch.equal(same_labels, labels)


def test_image_size_resizes_every_split_of_an_in_memory_set(tmp_path):
    """Train, validation and test all come at the asked size, with the labels in the same order; a constant
    image stays that constant (bilinear interpolation of a flat field) and an upsampled image keeps its mean
    brightness (to within a level: no shift, no gain)."""
    fake_fashion_mnist(tmp_path, n_train=40, n_test=10)
    train, evaluate, info = build_loaders("fashion-mnist", data_dir=str(tmp_path), batch_size=8, val_split=0.25,
                                          image_size=56, augment=Augment.off())
    assert info.image_size == (56, 56) and info.in_chans == 1 and (info.num_train, info.num_eval) == (30, 10)
    assert train.images.shape == (30, 1, 56, 56) and train.images.dtype == torch.uint8
    assert evaluate.images.shape == (10, 1, 56, 56)
    test = build_test_loader("fashion-mnist", data_dir=str(tmp_path), image_size=info.image_size[0])
    assert test.images.shape == (10, 1, 56, 56)
    _, plain, _ = build_loaders("fashion-mnist", data_dir=str(tmp_path), batch_size=8, val_split=0.25)
    assert torch.equal(evaluate.labels, plain.labels)  # the same held-out images, in the same order
    x, _ = next(iter(train))
    assert x.shape == (8, 1, 56, 56)

    flat = torch.full((2, 3, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(resize_images(flat, 40), torch.full((2, 3, 40, 40), 77, dtype=torch.uint8))
    original = load_arrays("fashion-mnist", "test", tmp_path)[0].float()
    upsampled = resize_images(original.to(torch.uint8), 56).float()
    assert torch.allclose(upsampled.mean(dim=(1, 2, 3)), original.mean(dim=(1, 2, 3)), atol=1.0)  # no shift or gain


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_shapes():
    train, evaluate, info = build_loaders("fashion-mnist", data_dir=str(REAL_FMNIST), download=False)
    assert (info.num_train, info.num_eval, info.num_classes, info.image_size) == (60000, 10000, 10, (28, 28))
    x, y = next(iter(train))
    assert x.shape == (256, 1, 28, 28) and int(y.max()) <= 9
