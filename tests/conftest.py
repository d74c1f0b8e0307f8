import os
from pathlib import Path

import pytest
import torch

from reference_cases import randomize_bn  # noqa: F401 - shared with the reference-output script


# pytest-xdist runs the suite in one process per core (pyproject's addopts): each gets its share of the cores,
# so that two workers' thread pools do not fight over the same two.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
TEST_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture
def two_threads():
    """For tests whose subject is the thread count (forms timed on 2 and on 1 threads, streams splitting 2)."""
    torch.set_num_threads(2)


def load_script(name: str, folder: str = "benchmarks"):
    """<folder>/<name>.py of the repository (benchmarks/ or scripts/) as a module (the benchmarks import their
    `_common` beside them, so the folder is on sys.path while it loads)."""
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / folder
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"{folder.name}_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


_IDX_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}


def write_idx(path, array, gz: bool = True):
    """Write an array as an IDX file (the MNIST format), gzipped unless gz=False; returns the path. Integer
    arrays of another type are written as uint8 (pixels and labels)."""
    import gzip

    import numpy as np

    array = np.asarray(array)
    if array.dtype.name not in _IDX_CODES:
        array = array.astype(np.uint8)
    header = bytes([0, 0, _IDX_CODES[array.dtype.name], array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array).astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.fixture
def no_fashion_mnist_anywhere(tmp_path, monkeypatch):
    """No system dataset, no NONDEEP_DATA, an empty cache, and a network that fails the test if touched."""
    from nondeep.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dir")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NONDEEP_DATA", raising=False)

    def no_network(url, timeout=60.0):
        raise AssertionError(f"test tried the network: {url}")
    monkeypatch.setattr(fashion_mnist, "fetch_url", no_network)


def make_fashion_like(folder, n_train: int = 512, n_test: int = 256, seed: int = 0):
    """A learnable 10-class, 28x28 grey dataset in Fashion-MNIST's four IDX files: class c is a bright 6x6
    square at one of 10 places, on noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 90, (n, 28, 28))
        for i, c in enumerate(labels):
            r, col = 3 + 12 * (c // 5), 1 + 5 * (c % 5)
            images[i, r:r + 6, col:col + 6] = 230
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def tiny_fashion(tmp_path_factory):
    return make_fashion_like(tmp_path_factory.mktemp("fashion"))


def make_image_tree(root, classes=("ant", "bee"), n: int = 5, size=(8, 8), mode: str = "RGB") -> Path:
    """An image tree under root: n images a class; image i of class c is filled with 10 * c + i (grey level or
    every colour)."""
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new(mode, size, 10 * c + i if mode == "L" else (10 * c + i,) * 3).save(root / name / f"{i}.png")
    return root
