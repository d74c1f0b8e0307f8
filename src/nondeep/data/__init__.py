"""Datasets and loaders: the one entry point the trainer uses is `build_loaders`.

Small datasets (Fashion-MNIST, CIFAR-10/100) are held in memory and served by TensorLoader, which augments
whole batches as tensors; an ImageFolder tree goes through torchvision and DataLoader workers. Both kinds
of loader yield (float32 normalised images, int64 labels) on `device` and have
`set_epoch(epoch, start_batch=0)` for deterministic shuffling and exact mid-epoch resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

from ..errors import DatasetError
from . import cifar, fashion_mnist
from .folder import FitBatches, build_folder_loaders, build_folder_test_loader, normalisation
from .sampling import holdout_split
from .tensor_loader import Augment, TensorLoader

SMALL = ("fashion-mnist", "cifar10", "cifar100")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10", "cifar-100": "cifar100", "cifar_100": "cifar100"}
# Standard light augmentation: the 28x28 images get a 2 px shift, the 32x32 ones 4 px (as in ResNet/WRN
# papers); flip helps on Fashion-MNIST too (its classes are left/right symmetric or nearly).
_DEFAULT_AUGMENT = {"fashion-mnist": Augment(crop_padding=2, flip=True), "cifar10": Augment(crop_padding=4),
                    "cifar100": Augment(crop_padding=4), "folder": Augment()}

__all__ = ["DataInfo", "build_loaders", "build_test_loader", "load_arrays", "resize_images", "default_augment",
           "resolve_data", "Augment", "TensorLoader", "DatasetError", "SMALL"]


@dataclass
class DataInfo:
    name: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    num_train: int
    num_eval: int
    path: str | None = None  # absolute: the ImageFolder tree, or the folder a small dataset was read from


def resolve_data(data: str, data_dir: str | os.PathLike | None = None) -> tuple[str, Path | None]:
    """("fashion-mnist" | "cifar10" | "cifar100", None) or ("folder", path of the ImageFolder tree)."""
    key = str(data).strip().lower()
    key = _ALIASES.get(key, key)
    if key in SMALL:
        return key, None
    for path in (Path(data), *([Path(data_dir) / data] if data_dir else [])):
        if path.is_dir():
            return "folder", path
    raise DatasetError(f"unknown dataset {data!r}: choose fashion-mnist, cifar10, cifar100, or give the path "
                       "of an ImageFolder tree (root/train/<class>/*.jpg and root/val/<class>/*.jpg)")


def default_augment(data: str) -> Augment:
    """The training augmentation used when build_loaders gets augment=None."""
    key = _ALIASES.get(str(data).lower(), str(data).lower())
    return _DEFAULT_AUGMENT.get(key, _DEFAULT_AUGMENT["folder"])


def _stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if name == "fashion-mnist":
        return fashion_mnist.MEAN, fashion_mnist.STD
    return cifar.MEAN[name], cifar.STD[name]


def load_arrays(data: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = True,
                image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A small dataset's split ("train" or "test") as uint8 (N, C, H, W) images, int64 labels, class names;
    with `image_size`, the images resized to image_size x image_size (None: their own size, untouched)."""
    name, _ = resolve_data(data, data_dir)
    if name == "fashion-mnist":
        images, labels = fashion_mnist.load_fashion_mnist(split, data_dir, download)
        classes = list(fashion_mnist.CLASSES)
    elif name in cifar.SPECS:
        images, labels, classes = cifar.load_cifar(name, split, data_dir)
    else:
        raise DatasetError(f"load_arrays serves the in-memory datasets ({', '.join(SMALL)}), not the image tree "
                           f"{data}; use build_loaders for it")
    return resize_images(images, image_size), labels, classes


def resize_images(images: torch.Tensor, image_size: int | None, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, C, H, W) images resized to image_size x image_size once, on load (bilinear, antialiased when
    shrinking, rounded back to uint8), so that training, validation and test all see the same size; the
    augmentation's padding stays in pixels. None or the images' own size: the same tensor, untouched."""
    if image_size is None or tuple(images.shape[2:]) == (image_size, image_size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):  # in chunks: the float copy of a whole set is 4x its bytes
        part = images[start:start + chunk].float()
        resized = F.interpolate(part, size=(image_size, image_size), mode="bilinear", align_corners=False,
                                antialias=True)
        out[start:start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def build_loaders(data: str, *, data_dir: str | None = None, batch_size: int = 256,
                  eval_batch_size: int | None = None, augment: Augment | None = None, val_split: float = 0.0,
                  max_train_samples: int | None = None, device: str | torch.device = "cpu", seed: int = 0,
                  rank: int = 0, world_size: int = 1, num_workers: int = 2, download: bool = True,
                  image_size: int | None = None, in_chans: int | None = None, with_indices: bool = False,
                  fit_batches: FitBatches | None = None) -> tuple[Iterable, Iterable, DataInfo]:
    """(train loader, eval loader, DataInfo) for `data`.

    The train loader shuffles by (seed, epoch), shards across `world_size` ranks and augments with
    `augment` (None: `default_augment(data)`; `Augment.off()`: none). The eval loader is the validation
    split when val_split > 0: a fixed held-out fraction of train (the same images for every seed), which the
    train loader then leaves out; with val_split 0 it is the test split (an ImageFolder's val/). It is
    neither shuffled nor sharded. `build_test_loader` gives the test split itself. max_train_samples keeps
    the first N training images. image_size (None: the images' own) is the side every split is read at: an
    in-memory set is resized once on load (resize_images). in_chans (None: the tree's own) and num_workers
    apply to ImageFolder trees only (a small dataset refuses a channel count other than its own); download
    to Fashion-MNIST only.
    with_indices: the train loader also yields each sample's index in the (kept) training set.
    fit_batches(num_classes, in_chans, (height, width)), when given, returns the (train, eval) batch sizes to
    use instead (the trainer's memory check); the loaders' batch_size attributes say what was used.
    """
    if not 0.0 <= val_split < 1.0:
        raise DatasetError(f"val_split must be in [0, 1), got {val_split}")
    if max_train_samples is not None and max_train_samples < 1:
        raise DatasetError(f"max_train_samples must be at least 1, got {max_train_samples}")
    name, path = resolve_data(data, data_dir)
    augment = default_augment(name) if augment is None else augment
    eval_batch_size = eval_batch_size or batch_size
    device = torch.device(device)

    if path is not None:
        if with_indices:
            raise DatasetError("with_indices (cached teacher logits) needs an in-memory dataset "
                               f"({', '.join(SMALL)}); for an image tree run the teacher online")
        train, evaluate, classes, side, chans = build_folder_loaders(
            path, batch_size=batch_size, eval_batch_size=eval_batch_size, augment=augment,
            val_split=val_split, max_train_samples=max_train_samples, device=device, seed=seed, rank=rank,
            world_size=world_size, num_workers=num_workers, image_size=image_size, in_chans=in_chans,
            fit_batches=fit_batches)
        info = DataInfo(path.name or str(path), len(classes), chans, (side, side), *normalisation(chans), classes,
                        len(train.dataset), len(evaluate.dataset), path=str(path.resolve()))
        return train, evaluate, info

    images, labels, classes = load_arrays(name, "train", data_dir, download, image_size)
    if val_split > 0:
        keep, held = holdout_split(len(labels), val_split)
        check_holdout(len(labels), len(keep), len(held), val_split, batch_size)
        eval_images, eval_labels = images[held], labels[held]
        images, labels = images[keep], labels[keep]
    else:
        eval_images, eval_labels, _ = load_arrays(name, "test", data_dir, download, image_size)
    if max_train_samples is not None:
        images, labels = images[:max_train_samples], labels[:max_train_samples]
    if (in_chans or images.shape[1]) != images.shape[1]:
        raise DatasetError(f"{name} is {images.shape[1]}-channel; a channel count of its own (--in-chans) is for "
                           "ImageFolder trees: drop that option")
    if fit_batches is not None:
        batch_size, eval_batch_size = fit_batches(len(classes), images.shape[1], tuple(images.shape[2:]))
    mean, std = _stats(name)
    # drop a ragged last batch in training (a batch of one breaks BatchNorm), unless it is the only one
    per_rank = len(labels) // world_size
    train = TensorLoader(images, labels, batch_size, mean, std, shuffle=True, augment=augment,
                         drop_last=per_rank >= batch_size, device=device, seed=seed, rank=rank,
                         world_size=world_size, with_indices=with_indices)
    evaluate = TensorLoader(eval_images, eval_labels, eval_batch_size, mean, std, device=device)
    info = DataInfo(name, len(classes), images.shape[1], tuple(images.shape[2:]), mean, std, classes,
                    len(labels), len(eval_labels), path=str(Path(data_dir).resolve()) if data_dir else None)
    return train, evaluate, info


def check_holdout(n: int, n_train: int, n_val: int, val_split: float, batch_size: int) -> None:
    """A validation split must hold out at least one image and leave at least one batch to train on (when
    the whole set had one)."""
    if n_val == 0:
        raise DatasetError(f"val_split {val_split} holds out no image of {n}: raise --val-split, or pass "
                           "--val-split 0 to train on all images and select nothing")
    if n_train < batch_size <= n:
        raise DatasetError(f"val_split {val_split} leaves {n_train} of {n} training images, fewer than one batch "
                           f"({batch_size}): lower --val-split or --batch-size")


def build_test_loader(data: str, *, data_dir: str | None = None, batch_size: int = 1024,
                      device: str | torch.device = "cpu", download: bool = True, image_size: int | None = None,
                      in_chans: int = 3, num_workers: int = 2) -> Iterable | None:
    """The test split of `data`, touched once at the end of a run: the in-memory datasets' test set (resized
    to image_size when given), or an ImageFolder tree's val/ folder read at image_size (default 224) and
    in_chans (None for a tree without one: it has no test split)."""
    name, path = resolve_data(data, data_dir)
    device = torch.device(device)
    if path is not None:
        return build_folder_test_loader(path, batch_size=batch_size, device=device, image_size=image_size or 224,
                                        in_chans=in_chans, num_workers=num_workers)
    images, labels, _ = load_arrays(name, "test", data_dir, download, image_size)
    mean, std = _stats(name)
    return TensorLoader(images, labels, batch_size, mean, std, device=device)
