import os

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


def write_idx(path, array) -> None:
    """Write a uint8 array as a gzipped IDX file (the MNIST format)."""
    import gzip

    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


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
