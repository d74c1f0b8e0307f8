"""ImageFolder trees (the ImageNet layout): root/train/<class>/*.jpg and root/val/<class>/*.jpg.

Without a val/ folder, a fixed fraction of train (or of root itself, when there is no train/ either) is
held out for evaluation. Images are decoded by DataLoader workers through torchvision's ImageFolder; the
loader is wrapped so a bad file stops the run with its name instead of a PIL traceback.

By default a tree is used at its own size (the median shorter side of a sample of its images) and in grey
when every sampled image is grey, else in colour; image_size and in_chans override both. Small images
(<= SMALL_IMAGE px) are augmented like CIFAR (pad and crop) and evaluated as they are; larger ones like
ImageNet (random resized crop; resize to size / 0.875 and centre-crop for evaluation).
"""

from __future__ import annotations

import functools
import math
import os
import signal
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DatasetError
from .sampling import epoch_indices, holdout_split, mix_seed, shard_size
from .tensor_loader import Augment

if TYPE_CHECKING:  # torchvision is imported where a folder is read: ~2.5 s that the other datasets never need
    from torchvision import datasets

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's
GREY_MEAN, GREY_STD = (sum(MEAN) / 3,), (sum(STD) / 3,)  # for grey trees: the average of the colour ones
CROP_PCT = 0.875  # eval: resize to size / 0.875, then centre-crop size (256 -> 224)
SMALL_IMAGE = 64  # up to this side: CIFAR-style pad-and-crop augmentation, no resize for evaluation
# (num_classes, in_chans, (height, width)) -> the (train, eval) batch sizes to use: a memory check
FitBatches = Callable[[int, int, "tuple[int, int]"], "tuple[int, int]"]
DEFAULT_VAL_FRACTION = 0.1  # held out when the tree has no val/ folder and val_split is 0
SAMPLED_IMAGES = 256  # images whose headers decide a tree's own size and channels
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_BAD_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """PIL loader that names the file it cannot read (module level, so workers can pickle it); mode is "RGB"
    or "L" (grey)."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert(mode)  # convert() forces the decode, so errors surface here
    except _BAD_IMAGE as err:
        raise DatasetError(f"cannot read image {path} ({err}): delete or replace the file") from None


def own_size_and_channels(folder: datasets.ImageFolder) -> tuple[int, int]:
    """(side, channels) a tree is used at by default: the median shorter side of up to SAMPLED_IMAGES evenly
    spaced images (headers only, no decode), and 1 channel when all of them are grey, else 3."""
    paths = [path for path, _ in folder.samples]
    sides, grey = [], True
    for path in paths[::max(1, len(paths) // SAMPLED_IMAGES)][:SAMPLED_IMAGES]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
                grey = grey and image.mode in _GREY_MODES
        except _BAD_IMAGE as err:
            raise DatasetError(f"cannot read image {path} ({err}): delete or replace the file") from None
    return int(statistics.median_low(sides)), 1 if grey else 3


def normalisation(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's mean and std, averaged over the colours for grey images."""
    return (GREY_MEAN, GREY_STD) if in_chans == 1 else (MEAN, STD)


def scan(root: Path) -> datasets.ImageFolder:
    """The ImageFolder of `root` (no transform); DatasetError unless it has images in two classes or more."""
    from torchvision import datasets

    try:
        folder = datasets.ImageFolder(str(root))  # for its classes and samples: _Subset loads the images
    except (FileNotFoundError, ValueError) as err:  # no class folders, or a class folder without images
        raise DatasetError(f"{root} is not a usable image tree ({err}); expected {root}/<class>/<image> "
                           "with two or more class folders holding images") from None
    if len(folder.classes) < 2:
        raise DatasetError(f"{root} has only one class folder ({folder.classes[0]}): a classifier needs two "
                           "or more. Point --data-dir at the folder holding the class folders")
    return folder


def train_transform(image_size: int, augment: Augment, in_chans: int = 3) -> Callable:
    """Crop (small images: pad by augment.crop_padding and crop; large: RandomResizedCrop; none when
    crop_padding is 0) + flip, tensor, normalise, optional random erasing."""
    from torchvision import transforms

    if image_size <= SMALL_IMAGE:
        steps: list[Any] = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
        if augment.crop_padding:
            steps.append(transforms.RandomCrop(image_size, padding=augment.crop_padding))
    elif not augment.crop_padding:
        steps = [transforms.Resize(math.floor(image_size / CROP_PCT)), transforms.CenterCrop(image_size)]
    else:
        steps = [transforms.RandomResizedCrop(image_size)]
    if augment.flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(*normalisation(in_chans))]
    if augment.cutout:  # cutout as a fixed-size square random erasing, filled with 0 (the mean)
        area = min(1.0, augment.cutout ** 2 / image_size ** 2)
        steps.append(transforms.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0))
    return transforms.Compose(steps)


def eval_transform(image_size: int, in_chans: int = 3) -> Callable:
    from torchvision import transforms

    resize = image_size if image_size <= SMALL_IMAGE else math.floor(image_size / CROP_PCT)
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(image_size), transforms.ToTensor(),
                               transforms.Normalize(*normalisation(in_chans))])


class _Subset(Dataset):
    """Some samples of an ImageFolder, with their own transform (train and held-out share one scan)."""

    def __init__(self, folder: datasets.ImageFolder, indices: Sequence[int], transform: Callable,
                 in_chans: int = 3) -> None:
        self.samples = [folder.samples[i] for i in indices]
        self.loader = functools.partial(load_image, mode="L" if in_chans == 1 else "RGB")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[i]
        return self.transform(self.loader(path)), target


class SeededSampler(Sampler[int]):
    """The same (seed, epoch) permutation and rank shards as TensorLoader, with a batch offset to resume."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, rank: int, world_size: int) -> None:
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> torch.Tensor:
        idx = epoch_indices(self.n, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle, rank=self.rank,
                            world_size=self.world_size)
        return idx[self.start_batch * self.batch_size:]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        return len(self._indices())


def _clean(err: DatasetError) -> DatasetError:
    """A DatasetError re-raised from a worker carries the worker's traceback in its message; keep the
    original one-line message, which the CLI prints."""
    text = str(err)
    if "Original Traceback" not in text:
        return err
    return DatasetError(text.strip().splitlines()[-1].split("DatasetError: ", 1)[-1])


def _ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl-C in a terminal reaches the workers too; the trainer alone decides (it checkpoints and stops)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class FolderLoader:
    """A DataLoader yielding (normalised float images, int64 labels) on `device`, with set_epoch."""

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, drop_last: bool,
                 device: torch.device, seed: int, rank: int, world_size: int, num_workers: int) -> None:
        self.device, self.batch_size, self.drop_last = device, batch_size, drop_last
        self.sampler = SeededSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                                     world_size=world_size)
        self.num_samples = len(dataset) if world_size == 1 else shard_size(len(dataset), world_size)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, drop_last=drop_last,
                                 num_workers=num_workers, pin_memory=device.type == "cuda",
                                 persistent_workers=num_workers > 0, worker_init_fn=_ignore_ctrl_c)
        self.dataset = dataset

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use epoch `epoch`'s order, starting the next pass at batch `start_batch` (exact resume)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is outside 0..{len(self)}")
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except DatasetError as err:
            raise _clean(err) from None
        finally:
            self.sampler.start_batch = 0  # a resume offset applies to one pass only


def build_folder_loaders(root: str | os.PathLike, *, batch_size: int, eval_batch_size: int,
                         augment: Augment, val_split: float, max_train_samples: int | None,
                         device: torch.device, seed: int, rank: int, world_size: int, num_workers: int,
                         image_size: int | None, in_chans: int | None,
                         fit_batches: "FitBatches | None" = None,
                         ) -> tuple[FolderLoader, FolderLoader, list[str], int, int]:
    """(train loader, eval loader, class names, image side, channels) for an ImageFolder tree; see the module
    docstring. fit_batches(classes, channels, (side, side)), when given, returns the (train, eval) batch sizes."""
    root = Path(root)
    train_root = root / "train" if (root / "train").is_dir() else root
    val_root = root / "val" if (root / "val").is_dir() and train_root != root else None
    train_tree = scan(train_root)
    if val_root is not None and val_split == 0:
        val_tree = scan(val_root)
        if val_tree.classes != train_tree.classes:
            raise DatasetError(f"{train_root} and {val_root} have different class folders; they must match")
        keep, eval_idx = torch.arange(len(train_tree)), list(range(len(val_tree)))
    else:  # hold out a fixed slice of train for evaluation
        val_tree = train_tree
        fraction = val_split or DEFAULT_VAL_FRACTION
        keep, held = holdout_split(len(train_tree), fraction)
        eval_idx = held.tolist()
        if not eval_idx:
            raise DatasetError(f"{train_root} has too few images ({len(train_tree)}) to hold out "
                               f"{fraction:.0%} for evaluation")
    # the tree is sorted by class, so list train in a fixed shuffled order (the same for every seed):
    # then max_train_samples keeps a mix of classes, not the first few
    g = torch.Generator().manual_seed(mix_seed(0x0DE7, len(keep)))
    train_idx = keep[torch.randperm(len(keep), generator=g)].tolist()
    if max_train_samples is not None:
        train_idx = train_idx[:max_train_samples]
    if image_size is None or in_chans is None:
        own_size, own_chans = own_size_and_channels(train_tree)
        image_size, in_chans = image_size or own_size, in_chans or own_chans
    if fit_batches is not None:
        batch_size, eval_batch_size = fit_batches(len(train_tree.classes), in_chans, (image_size, image_size))
    train_set = _Subset(train_tree, train_idx, train_transform(image_size, augment, in_chans), in_chans)
    eval_set = _Subset(val_tree, eval_idx, eval_transform(image_size, in_chans), in_chans)
    per_rank = len(train_set) if world_size == 1 else shard_size(len(train_set), world_size)
    common = dict(device=device, seed=seed, num_workers=num_workers)
    train = FolderLoader(train_set, batch_size, shuffle=True, drop_last=per_rank >= batch_size, rank=rank,
                         world_size=world_size, **common)
    evaluate = FolderLoader(eval_set, eval_batch_size, shuffle=False, drop_last=False, rank=0, world_size=1,
                            **common)
    return train, evaluate, train_tree.classes, image_size, in_chans


def build_folder_test_loader(root: str | os.PathLike, *, batch_size: int, device: torch.device, image_size: int,
                             in_chans: int, num_workers: int) -> FolderLoader | None:
    """The tree's val/ folder as the test split (ImageNet's habit), or None when the tree has none."""
    root = Path(root)
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        return None
    tree = scan(root / "val")
    return FolderLoader(_Subset(tree, range(len(tree)), eval_transform(image_size, in_chans), in_chans), batch_size,
                        shuffle=False, drop_last=False, device=device, seed=0, rank=0, world_size=1,
                        num_workers=num_workers)
