"""Fashion-MNIST: find the four IDX files, or download them once into the user cache.

Search order: the `data_dir` argument, $NONDEEP_DATA, Debian's `dataset-fashion-mnist` package, the user
cache; each folder may hold the files directly or in a `fashion-mnist/` subfolder, gzipped or not. Only then,
if allowed, the official files are downloaded, checked against their MD5 sums and written atomically.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.request
from pathlib import Path

import torch

from ..errors import DatasetError
from ..report import WriteError, atomic_write_bytes
from .idx import read_idx

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
         ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}
# MD5 of the official .gz files. Only downloads are checked: Debian recompresses them, so its sums differ.
MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
       "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
       "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
       "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
SIZES = {"train": 60000, "test": 10000}

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """~/.cache/nondeep/fashion-mnist (or under $XDG_CACHE_HOME when set)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nondeep" / "fashion-mnist"


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched, in order."""
    roots = [Path(d) for d in (data_dir, os.environ.get("NONDEEP_DATA")) if d]
    dirs = [d for root in roots for d in (root, root / "fashion-mnist")]
    return dirs + [SYSTEM_DIR, cache_dir()]


def _files_in(folder: Path) -> dict[str, Path] | None:
    """The four files in `folder` (each as .gz or raw), or None when any is missing."""
    found = {}
    for name in FILES.values():
        path = next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)
        if path is None:
            return None
        found[name] = path
    return found


def fetch_url(url: str, timeout: float = 60.0) -> bytes:
    """The network access, in one place so tests can replace it."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https/http URL)
        return response.read()


def download_files(dest: str | os.PathLike | None = None) -> Path:
    """Download the four official .gz files into `dest` (default: the cache), skipping those already there.

    Each file is checked against its MD5 before it is written (atomically), so a bad or partial download
    never lands on disk. Raises DatasetError on a network failure or a checksum mismatch.
    """
    dest = Path(dest) if dest else cache_dir()
    for gz, md5 in MD5.items():
        if (dest / gz).is_file():
            continue
        log.info("downloading %s%s", URL, gz)
        try:
            data = fetch_url(URL + gz)
        except (OSError, http.client.HTTPException) as err:  # URLError and timeouts are OSErrors
            raise DatasetError(f"downloading {URL + gz} failed: {err}") from None
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            raise DatasetError(f"downloaded {gz} has MD5 {got}, expected {md5}; refused it")
        try:
            atomic_write_bytes(dest / gz, data)
        except WriteError as err:  # a DatasetError, so that locate() still says the three ways to get the data
            raise DatasetError(str(err)) from None
    return dest


def locate(data_dir: str | os.PathLike | None = None, download: bool = True) -> dict[str, Path]:
    """Map each of the four file names (without .gz) to its path; download when allowed and needed."""
    dirs = candidate_dirs(data_dir)
    for folder in dirs:
        if (files := _files_in(folder)) is not None:
            return files
    failure = "downloading is turned off"
    if download:
        try:
            found = _files_in(download_files())
            if found is not None:
                return found
        except DatasetError as err:
            failure = str(err)
    looked = ", ".join(str(d) for d in dict.fromkeys(dirs))
    raise DatasetError(
        f"Fashion-MNIST not found (looked in {looked}; {failure}). Provide it one of three ways: "
        f"(1) `sudo apt-get install dataset-fashion-mnist` (installs it in {SYSTEM_DIR}); "
        "(2) pass --data-dir (data_dir=) or set NONDEEP_DATA to a folder holding the four IDX files "
        f"({', '.join(MD5)}); (3) go online with downloading allowed, so it downloads from {URL} into "
        f"{cache_dir()}")


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
                       download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 1, 28, 28) and labels as int64 (N,) for split "train" or "test"."""
    if split not in SIZES:
        raise DatasetError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}")
    files = locate(data_dir, download)
    img_path, lbl_path = files[FILES[split, "images"]], files[FILES[split, "labels"]]
    images, labels = read_idx(img_path, ndim=3), read_idx(lbl_path, ndim=1)
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (28, 28):
        raise DatasetError(f"{img_path} holds {images.dtype} images of {tuple(images.shape[1:])}, not uint8 "
                           "28x28: delete it and download it again")
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{lbl_path} has {labels.shape[0]} labels for {images.shape[0]} images in "
                           f"{img_path}: delete both and download them again")
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DatasetError(f"{lbl_path} has labels outside 0..9: delete it and download it again")
    return images.unsqueeze(1), labels.long()
