"""Finding, downloading and checking Fashion-MNIST (nondeep.data.fashion_mnist): the search order, the cache,
the download's checks, and each refusal of files that are not what they claim. The datasets are written by
the tests; the network is a stub that fails the test if touched, or a local file:// URL."""

from __future__ import annotations

import hashlib
import http.client
from pathlib import Path

import numpy as np
import pytest
import torch

from nondeep.data import fashion_mnist, load_arrays
from nondeep.errors import DatasetError
from conftest import write_idx

REAL = Path("/usr/share/datasets/fashion-mnist")
SHIPPED_SYSTEM_DIR, SHIPPED_FETCH_URL = fashion_mnist.SYSTEM_DIR, fashion_mnist.fetch_url  # before any patch
NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def fake(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True, fill: int = 0) -> Path:
    """The four files; image i of a split is filled with fill + i, its label is i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (fill + np.arange(n, dtype=np.uint8))[:, None, None] * np.ones((1, 28, 28), np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8), gz)
    return folder


pytestmark = pytest.mark.usefixtures("no_fashion_mnist_anywhere")


def test_the_constants_are_the_datasets():
    """Zalando's class names in label order, the official file names and their MD5 sums (from the dataset's
    README), and the split sizes."""
    assert fashion_mnist.CLASSES == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                     "Sneaker", "Bag", "Ankle boot"]
    assert fashion_mnist.FILES == {("train", "images"): NAMES[0], ("train", "labels"): NAMES[1],
                                   ("test", "images"): NAMES[2], ("test", "labels"): NAMES[3]}
    assert fashion_mnist.MD5 == {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                 "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                                 "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                                 "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
    assert fashion_mnist.SIZES == {"train": 60000, "test": 10000}
    assert fashion_mnist.URL == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert SHIPPED_SYSTEM_DIR == REAL  # where Debian's dataset-fashion-mnist puts the files


@pytest.mark.skipif(not REAL.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_mean_and_std_are_the_real_training_sets(monkeypatch):
    images, labels = fashion_mnist.load_fashion_mnist("train", data_dir=REAL, download=False)
    pixels = images.double() / 255
    assert abs(pixels.mean().item() - fashion_mnist.MEAN[0]) < 5e-5
    assert abs(pixels.std().item() - fashion_mnist.STD[0]) < 5e-5
    assert images.shape == (60000, 1, 28, 28) and torch.bincount(labels).tolist() == [6000] * 10


def test_cache_dir_follows_xdg_or_the_home_folder(tmp_path, monkeypatch):
    assert fashion_mnist.cache_dir() == tmp_path / "cache" / "nondeep" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fashion_mnist.cache_dir() == tmp_path / "home" / ".cache" / "nondeep" / "fashion-mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # set but empty: as unset
    assert fashion_mnist.cache_dir() == tmp_path / "home" / ".cache" / "nondeep" / "fashion-mnist"


def test_the_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("NONDEEP_DATA", str(tmp_path / "env"))
    assert fashion_mnist.candidate_dirs(tmp_path / "arg") == [
        tmp_path / "arg", tmp_path / "arg" / "fashion-mnist", tmp_path / "env", tmp_path / "env" / "fashion-mnist",
        fashion_mnist.SYSTEM_DIR, fashion_mnist.cache_dir()]
    monkeypatch.delenv("NONDEEP_DATA")
    assert fashion_mnist.candidate_dirs() == [fashion_mnist.SYSTEM_DIR, fashion_mnist.cache_dir()]
    assert fashion_mnist.candidate_dirs("") == [fashion_mnist.SYSTEM_DIR, fashion_mnist.cache_dir()]


def test_the_first_folder_holding_all_four_files_wins(tmp_path, monkeypatch):
    fake(tmp_path / "arg", fill=10)
    fake(tmp_path / "env" / "fashion-mnist", fill=100)
    monkeypatch.setenv("NONDEEP_DATA", str(tmp_path / "env"))
    assert fashion_mnist.load_fashion_mnist("train", data_dir=tmp_path / "arg")[0][0, 0, 0, 0] == 10
    assert fashion_mnist.load_fashion_mnist("train")[0][0, 0, 0, 0] == 100  # no argument: the env's subfolder
    (tmp_path / "arg" / "t10k-labels-idx1-ubyte.gz").unlink()  # three of four files: not this folder
    assert fashion_mnist.load_fashion_mnist("train", data_dir=tmp_path / "arg")[0][0, 0, 0, 0] == 100


def test_raw_and_gzipped_files_are_found_and_gz_is_preferred(tmp_path):
    raw = fake(tmp_path / "raw", gz=False, fill=5)
    files = fashion_mnist.locate(raw, download=False)
    assert files == {name: raw / name for name in NAMES}
    images, labels = fashion_mnist.load_fashion_mnist("test", data_dir=raw, download=False)
    assert images[:, 0, 0, 0].tolist() == list(range(5, 15)) and labels.tolist() == list(range(10))
    fake(raw, gz=True, fill=50)  # both forms present: the .gz
    assert fashion_mnist.locate(raw, download=False) == {name: raw / f"{name}.gz" for name in NAMES}
    assert fashion_mnist.load_fashion_mnist("test", data_dir=raw)[0][0, 0, 0, 0] == 50


def test_a_folder_named_like_a_file_is_not_a_file(tmp_path):
    folder = fake(tmp_path / "d")
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    (folder / "train-labels-idx1-ubyte.gz").mkdir()
    with pytest.raises(DatasetError, match="not found"):
        fashion_mnist.locate(folder, download=False)


def test_splits_shapes_and_dtypes(tmp_path):
    folder = fake(tmp_path / "d", n_train=20, n_test=10)
    for split, n in (("train", 20), ("test", 10)):
        images, labels = fashion_mnist.load_fashion_mnist(split, data_dir=folder)
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64 and labels.tolist() == [i % 10 for i in range(n)]
    with pytest.raises(DatasetError) as err:
        fashion_mnist.load_fashion_mnist("val", data_dir=folder)
    assert str(err.value) == "Fashion-MNIST has splits 'train' and 'test', not 'val'"


def test_not_found_lists_each_folder_once_and_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("NONDEEP_DATA", str(tmp_path / "same"))
    with pytest.raises(DatasetError) as err:
        fashion_mnist.locate(tmp_path / "same", download=False)
    message = str(err.value)
    looked = (f"{tmp_path / 'same'}, {tmp_path / 'same' / 'fashion-mnist'}, {fashion_mnist.SYSTEM_DIR}, "
              f"{fashion_mnist.cache_dir()}")
    assert message.startswith(f"Fashion-MNIST not found (looked in {looked}; downloading is turned off). ")
    assert "(1) `sudo apt-get install dataset-fashion-mnist`" in message and "(2) pass --data-dir" in message
    assert "(3) go online" in message and "\n" not in message


def _refused(tmp_path, name: str, array: np.ndarray, match: str) -> None:
    folder = fake(tmp_path / "bad")
    write_idx(folder / f"{name}.gz", array)
    with pytest.raises(DatasetError, match=match):
        fashion_mnist.load_fashion_mnist("train", data_dir=folder)


def test_images_that_are_not_uint8_28x28_are_refused(tmp_path):
    _refused(tmp_path, NAMES[0], np.zeros((20, 28, 28), np.float32), r"holds torch.float32 images of \(28, 28\)")
    _refused(tmp_path, NAMES[0], np.zeros((20, 28, 27), np.uint8), r"holds torch.uint8 images of \(28, 27\)")
    _refused(tmp_path, NAMES[0], np.zeros((20, 27, 28), np.uint8), r"\(27, 28\), not uint8 28x28: delete it")


def test_labels_that_do_not_fit_the_images_are_refused(tmp_path):
    _refused(tmp_path, NAMES[1], np.zeros(19, np.uint8), "has 19 labels for 20 images .*: delete both")
    _refused(tmp_path, NAMES[1], np.full(20, 10, np.uint8), "labels outside 0..9")
    _refused(tmp_path, NAMES[1], np.full(20, -1, np.int8), "labels outside 0..9")
    ok = np.full(20, 9, np.uint8)  # the largest label is fine
    folder = fake(tmp_path / "ok")
    write_idx(folder / f"{NAMES[1]}.gz", ok)
    assert fashion_mnist.load_fashion_mnist("train", data_dir=folder)[1].tolist() == [9] * 20


def test_an_empty_split_loads_as_empty(tmp_path):
    folder = fake(tmp_path / "d", n_test=0)
    images, labels = fashion_mnist.load_fashion_mnist("test", data_dir=folder)
    assert images.shape == (0, 1, 28, 28) and labels.shape == (0,)


def test_fetch_url_reads_a_url(tmp_path):
    (tmp_path / "blob").write_bytes(b"\x00payload")
    assert SHIPPED_FETCH_URL((tmp_path / "blob").as_uri(), timeout=5) == b"\x00payload"


def _serve(monkeypatch, blobs: dict[str, bytes]) -> list[str]:
    monkeypatch.setattr(fashion_mnist, "MD5", {k: hashlib.md5(v).hexdigest() for k, v in blobs.items()})
    fetched: list[str] = []

    def fetch(url, timeout=60.0):
        fetched.append(url)
        return blobs[url.rsplit("/", 1)[1]]
    monkeypatch.setattr(fashion_mnist, "fetch_url", fetch)
    return fetched


def test_download_fetches_only_missing_files_from_the_official_url(tmp_path, monkeypatch):
    blobs = {p.name: p.read_bytes() for p in fake(tmp_path / "server").iterdir()}
    fetched = _serve(monkeypatch, blobs)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "t10k-images-idx3-ubyte.gz").write_bytes(blobs["t10k-images-idx3-ubyte.gz"])
    assert fashion_mnist.download_files(dest) == dest
    assert sorted(fetched) == sorted(fashion_mnist.URL + name for name in blobs if not name.startswith("t10k-im"))
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == blobs
    assert fashion_mnist.download_files() == fashion_mnist.cache_dir()  # no dest: the cache


def test_download_failures_are_one_line_and_write_nothing(tmp_path, monkeypatch):
    for error in (OSError("Network is unreachable"), http.client.IncompleteRead(b"")):
        def fail(url, timeout=60.0, error=error):
            raise error
        monkeypatch.setattr(fashion_mnist, "fetch_url", fail)
        with pytest.raises(DatasetError, match=rf"^downloading {fashion_mnist.URL}train-images-idx3-ubyte.gz failed"):
            fashion_mnist.download_files(tmp_path / "dest")
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_a_download_that_cannot_be_written_says_where(tmp_path, monkeypatch):
    blobs = {p.name: p.read_bytes() for p in fake(tmp_path / "server").iterdir()}
    _serve(monkeypatch, blobs)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DatasetError, match=f"^could not write {blocker}/.*-ubyte.gz .*nothing was written"):
        fashion_mnist.download_files(blocker)
    monkeypatch.setattr(fashion_mnist, "cache_dir", lambda: blocker)
    with pytest.raises(DatasetError, match=r"^Fashion-MNIST not found .*could not write .*\(3\) go online"):
        fashion_mnist.locate()  # the reason, inside the message that says the three ways


def test_locate_downloads_only_when_allowed_and_reports_why_it_failed(tmp_path, monkeypatch):
    blobs = {p.name: p.read_bytes() for p in fake(tmp_path / "server").iterdir()}
    fetched = _serve(monkeypatch, blobs)
    with pytest.raises(DatasetError, match="downloading is turned off"):
        fashion_mnist.locate(download=False)
    assert fetched == []
    assert fashion_mnist.locate() == {name: fashion_mnist.cache_dir() / f"{name}.gz" for name in NAMES}
    assert len(fetched) == 4

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))
    monkeypatch.setattr(fashion_mnist, "MD5", {**fashion_mnist.MD5, "t10k-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(DatasetError, match=r"not found \(looked in .*; downloaded t10k-labels-idx1-ubyte.gz has "
                                           r"MD5 [0-9a-f]{32}, expected 0{32}; refused it\)"):
        fashion_mnist.locate()


def test_fetch_url_waits_60_seconds_by_default(monkeypatch):
    asked = []

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return b"body"
    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen",
                        lambda url, timeout: asked.append((url, timeout)) or Response())
    assert SHIPPED_FETCH_URL("http://x/f.gz") == b"body" and SHIPPED_FETCH_URL("http://x/g.gz", timeout=3) == b"body"
    assert asked == [("http://x/f.gz", 60.0), ("http://x/g.gz", 3)]


def test_each_download_is_logged_with_its_url(tmp_path, monkeypatch, caplog):
    _serve(monkeypatch, {p.name: p.read_bytes() for p in fake(tmp_path / "server").iterdir()})
    with caplog.at_level("INFO", logger="nondeep.data.fashion_mnist"):
        fashion_mnist.download_files(tmp_path / "dest")
    assert sorted(r.getMessage() for r in caplog.records) == sorted(
        f"downloading {fashion_mnist.URL}{name}.gz" for name in NAMES)


def test_the_not_found_message_in_full(tmp_path):
    system, cache = fashion_mnist.SYSTEM_DIR, fashion_mnist.cache_dir()
    with pytest.raises(DatasetError) as err:
        fashion_mnist.locate(download=False)
    assert str(err.value) == (
        f"Fashion-MNIST not found (looked in {system}, {cache}; downloading is turned off). Provide it one of three "
        f"ways: (1) `sudo apt-get install dataset-fashion-mnist` (installs it in {system}); (2) pass --data-dir "
        "(data_dir=) or set NONDEEP_DATA to a folder holding the four IDX files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); (3) go online with "
        f"downloading allowed, so it downloads from {fashion_mnist.URL} into {cache}")


def test_the_default_split_is_train(tmp_path):
    assert fashion_mnist.load_fashion_mnist(data_dir=fake(tmp_path / "d", n_train=20, n_test=10))[1].shape == (20,)


def test_images_and_labels_must_have_their_dimensions(tmp_path):
    _refused(tmp_path, NAMES[0], np.zeros((20, 784), np.uint8), r"\(2 dimensions, expected 3\)")
    (tmp_path / "bad").rename(tmp_path / "bad-images")
    _refused(tmp_path, NAMES[1], np.zeros((20, 1), np.uint8), r"\(2 dimensions, expected 1\)")


def test_fashion_mnist_found_in_data_dir_and_env(tmp_path, monkeypatch):
    fake(tmp_path / "root" / "fashion-mnist", n_train=40)
    images, labels = fashion_mnist.load_fashion_mnist("train", data_dir=tmp_path / "root")
    assert images.shape == (40, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 10 for i in range(40)]
    monkeypatch.setenv("NONDEEP_DATA", str(tmp_path / "root" / "fashion-mnist"))  # files directly in it
    images, labels, classes = load_arrays("fashion-mnist", "test", download=False)
    assert images.shape == (10, 1, 28, 28) and classes[0] == "T-shirt/top" and len(classes) == 10


def test_fashion_mnist_missing_names_the_three_ways(monkeypatch):
    with pytest.raises(DatasetError) as info:
        load_arrays("fashion-mnist", "train", download=False)
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg and "NONDEEP_DATA" in msg
    assert "go online" in msg and "downloading is turned off" in msg and "\n" not in msg

    def offline(url, timeout=60.0):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(fashion_mnist, "fetch_url", offline)
    with pytest.raises(DatasetError, match="Network is unreachable.*apt-get install dataset-fashion-mnist"):
        fashion_mnist.load_fashion_mnist("train")


def test_download_refuses_a_bad_checksum_and_leaves_no_file(monkeypatch):
    monkeypatch.setattr(fashion_mnist, "fetch_url", lambda url, timeout=60.0: b"not the real file")
    with pytest.raises(DatasetError, match="MD5.*refused"):
        fashion_mnist.load_fashion_mnist("train")
    cache = fashion_mnist.cache_dir()
    assert not cache.exists() or not any(cache.iterdir())


def test_download_verifies_and_writes_into_the_cache(tmp_path, monkeypatch):
    blobs = {p.name: p.read_bytes() for p in fake(tmp_path / "server", n_train=40).iterdir()}
    fetched = _serve(monkeypatch, blobs)
    images, labels = fashion_mnist.load_fashion_mnist("test")
    assert images.shape == (10, 1, 28, 28) and len(fetched) == 4
    assert sorted(p.name for p in fashion_mnist.cache_dir().iterdir()) == sorted(blobs)  # no temp files
    fashion_mnist.load_fashion_mnist("train")
    assert len(fetched) == 4  # the second load reads the cache
