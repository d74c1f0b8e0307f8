"""CIFAR-10/100 (nondeep.data.cifar) as units: the safe unpickler (numpy arrays and bytes only, nothing that
runs code), each check of a batch file with its exact one-line refusal, the search for the folder, and the
datasets' constants."""

from __future__ import annotations

import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch

from nondeep.data import cifar
from nondeep.errors import DatasetError

ADVICE = ("it is probably corrupt: delete the folder and extract the python version from "
          "https://www.cs.toronto.edu/~kriz/cifar.html again")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NONDEEP_DATA", raising=False)


def dump(path: Path, obj, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def batch(n: int = 3, labels_key: str = "labels", seed: int = 0, **changes) -> dict:
    rng = np.random.default_rng(seed)
    d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), labels_key.encode(): [i % 10 for i in range(n)]}
    d.update({k.encode(): v for k, v in changes.items()})
    return d


def cifar10(root: Path, n: int = 3) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        dump(folder / f"data_batch_{i}", batch(n, seed=i))
    dump(folder / "test_batch", batch(n, seed=9))
    dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return folder


def refusal(path: Path, keys=frozenset({"data"})) -> str:
    with pytest.raises(DatasetError) as err:
        cifar.load_pickle(path, set(keys))
    return str(err.value)


def test_the_constants():
    assert cifar.SPECS["cifar10"] == ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                                      ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
                                      "test_batch", "batches.meta", "labels", "label_names", 10)
    assert cifar.SPECS["cifar100"] == ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], "test", "meta",
                                       "fine_labels", "fine_label_names", 100)
    assert cifar.MEAN == {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
    assert cifar.STD == {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_arrays_bytes_and_str_keys_load_at_every_protocol(tmp_path, protocol):
    obj = {"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"name": b"\x00\xff", "x": np.float64(2.5),
           "labels": [1, 2], "empty": b"", "none": np.zeros((0, 4), np.uint8)}
    loaded = cifar.load_pickle(dump(tmp_path / "p", obj, protocol), {"data", "name", "labels"})
    assert set(loaded) == {"data", "name", "x", "labels", "empty", "none"}  # bytes keys decoded
    assert loaded["empty"] == b"" and loaded["none"].shape == (0, 4)
    assert loaded["data"].tolist() == [[0, 1, 2], [3, 4, 5]] and loaded["name"] == b"\x00\xff"
    assert loaded["x"] == 2.5 and loaded["labels"] == [1, 2]


def python2_pickle(obj: dict) -> bytes:
    """obj pickled as Python 2's cPickle writes the real CIFAR files: byte strings as str (BINSTRING opcodes).

    Protocol 3 writes bytes as BINBYTES, whose layout is BINSTRING's (a length, then the raw bytes), so changing
    each such opcode byte (and the protocol) gives the Python 2 form without touching a payload byte."""
    raw = bytearray(pickle.dumps(obj, protocol=3))
    as_str = {"SHORT_BINBYTES": b"U", "BINBYTES": b"T"}
    for op, _, pos in pickletools.genops(bytes(raw)):
        if op.name == "PROTO":
            raw[pos + 1] = 2
        elif op.name in as_str:
            raw[pos:pos + 1] = as_str[op.name]
    assert "BINSTRING" in {op.name for op, _, _ in pickletools.genops(bytes(raw))}
    return bytes(raw)


def test_a_python2_pickle_with_non_ascii_byte_strings_loads(tmp_path):
    # Python 3 reads Python 2 str as ASCII unless told otherwise: the pixel bytes (>= 128) must come back as bytes
    obj = batch(4, batch_label=b"training batch 1 of 5 \xe9")
    (tmp_path / "p").write_bytes(python2_pickle(obj))
    loaded = cifar.load_pickle(tmp_path / "p", {"data", "labels"})
    assert set(loaded) == {"data", "labels", "batch_label"} and loaded["batch_label"] == b"training batch 1 of 5 \xe9"
    assert loaded["data"].max() >= 128 and np.array_equal(loaded["data"], obj[b"data"])
    assert loaded["labels"] == [0, 1, 2, 3]


class _Runs:
    def __reduce__(self):
        return (print, ("code ran",))


def test_nothing_but_numpy_and_bytes_is_built(tmp_path, capsys):
    message = refusal(dump(tmp_path / "p", {"data": _Runs()}))
    # protocol 2 names Python 2's module (__builtin__): the refusal names what the file asked for
    assert message == f"{tmp_path / 'p'} is not a valid CIFAR file (refuses to load __builtin__.print); {ADVICE}"
    message = refusal(dump(tmp_path / "p4", {"data": _Runs()}, protocol=4))
    assert message == f"{tmp_path / 'p4'} is not a valid CIFAR file (refuses to load builtins.print); {ADVICE}"
    assert "code ran" not in capsys.readouterr().out
    message = refusal(dump(tmp_path / "q", {"data": Path("x")}))
    assert "(refuses to load pathlib." in message


def test_only_the_named_numpy_globals_and_bytes_are_resolved():
    """The allow-list is (module, name) pairs: another name in a numpy module, or an allowed name from another
    module, is refused; bytes comes from either name Python gives its builtins."""
    import io
    unpickler = cifar._ArrayUnpickler(io.BytesIO(b""), encoding="bytes")
    assert unpickler.find_class("numpy", "ndarray") is np.ndarray
    for module, name in (("numpy", "load"), ("numpy.core.multiarray", "fromfile"), ("os", "dtype")):
        with pytest.raises(pickle.UnpicklingError, match=f"^refuses to load {module}.{name}$"):
            unpickler.find_class(module, name)
    assert unpickler.find_class("builtins", "bytes") is bytes and unpickler.find_class("__builtin__", "bytes") is bytes


def test_codecs_encode_is_allowed_only_as_latin1(tmp_path):
    assert cifar._latin1_bytes("\xff") == b"\xff" and cifar._latin1_bytes("a", "latin-1") == b"a"
    for args in (("a", "utf-8"), (b"a", "latin1")):
        with pytest.raises(pickle.UnpicklingError, match=r"^refuses _codecs.encode other than str -> latin1$"):
            cifar._latin1_bytes(*args)


def test_a_file_that_is_not_a_pickle_or_is_cut_is_refused(tmp_path):
    (tmp_path / "text").write_bytes(b"hello")
    assert refusal(tmp_path / "text").startswith(f"{tmp_path / 'text'} is not a valid CIFAR file (not a pickle: ")
    whole = pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}, protocol=2)
    (tmp_path / "cut").write_bytes(whole[:-1])  # no STOP
    assert refusal(tmp_path / "cut").startswith(f"{tmp_path / 'cut'} is not a valid CIFAR file (not a pickle: ")
    with pytest.raises(DatasetError) as err:
        cifar.load_pickle(tmp_path / "missing", {"data"})
    assert str(err.value) == f"cannot read {tmp_path / 'missing'}: No such file or directory"


@pytest.mark.parametrize("obj", [[1, 2], (1,), 3, "data"], ids=["list", "tuple", "int", "str"])
def test_a_pickle_that_is_not_a_dict_is_refused(tmp_path, obj):
    assert refusal(dump(tmp_path / "p", obj)) == (f"{tmp_path / 'p'} is not a valid CIFAR file (the pickle is not a "
                                                  f"dict); {ADVICE}")


def test_a_dict_built_with_mark_dict_is_a_dict(tmp_path):
    # protocol 0 writes (MARK, DICT) for a dict: accepted as a dict, then checked like any other
    assert cifar.load_pickle(dump(tmp_path / "p", {"data": 1}, protocol=0), {"data"}) == {"data": 1}


def test_keys_must_be_strings_and_present(tmp_path):
    assert refusal(dump(tmp_path / "p", {1: 2, "data": 3})) == (
        f"{tmp_path / 'p'} is not a valid CIFAR file (the pickle is not a dict with string keys); {ADVICE}")
    assert refusal(dump(tmp_path / "q", {"data": 1}), {"data", "labels", "a"}) == (
        f"{tmp_path / 'q'} is not a valid CIFAR file (missing keys ['a', 'labels']); {ADVICE}")


@pytest.mark.parametrize("data,why", [
    (np.zeros((2, 3072), np.int16), "'data' is not a uint8 array of shape (N, 3072)"),
    (np.zeros((2, 3071), np.uint8), "'data' is not a uint8 array of shape (N, 3072)"),
    (np.zeros(3072, np.uint8), "'data' is not a uint8 array of shape (N, 3072)"),
    ([[0] * 3072] * 2, "'data' is not a uint8 array of shape (N, 3072)"),
])
def test_data_must_be_uint8_rows_of_3072(tmp_path, data, why):
    with pytest.raises(DatasetError) as err:
        cifar._batch(dump(tmp_path / "b", {"data": data, "labels": [0, 1]}), "labels", 10)
    assert str(err.value) == f"{tmp_path / 'b'} is not a valid CIFAR file ({why}); {ADVICE}"


@pytest.mark.parametrize("labels,why", [
    ([0], "'labels' does not hold one integer label per image"),
    ([0, 1, 2], "'labels' does not hold one integer label per image"),
    ([0.0, 1.0], "'labels' does not hold one integer label per image"),
    ([[0], [1]], "'labels' does not hold one integer label per image"),
    ([0, 10], "labels outside 0..9"),
    ([-1, 0], "labels outside 0..9"),
])
def test_labels_must_be_one_integer_in_range_per_image(tmp_path, labels, why):
    with pytest.raises(DatasetError) as err:
        cifar._batch(dump(tmp_path / "b", {"data": np.zeros((2, 3072), np.uint8), "labels": labels}), "labels", 10)
    assert str(err.value) == f"{tmp_path / 'b'} is not a valid CIFAR file ({why}); {ADVICE}"


def test_a_batch_is_channel_first_and_owns_its_memory(tmp_path):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    images, labels = cifar._batch(dump(tmp_path / "b", {"data": data, "labels": np.array([9, 0], np.uint8)}),
                                  "labels", 10)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[1, 2].flatten(), torch.from_numpy(data[1, 2048:]))  # blue plane last
    assert labels.tolist() == [9, 0] and labels.dtype == torch.int64
    images += 1  # writable
    empty, none = cifar._batch(dump(tmp_path / "e", {"data": np.zeros((0, 3072), np.uint8),
                                                        "labels": np.zeros(0, np.int64)}),
                               "labels", 10)
    assert empty.shape == (0, 3, 32, 32) and none.shape == (0,)


def test_the_folder_is_found_in_order_as_the_parent_or_itself(tmp_path, monkeypatch):
    arg, env = cifar10(tmp_path / "arg"), cifar10(tmp_path / "env")
    monkeypatch.setenv("NONDEEP_DATA", str(tmp_path / "env"))
    assert cifar.find_folder("cifar10", tmp_path / "arg") == arg
    assert cifar.find_folder("cifar10", arg) == arg          # the folder itself
    assert cifar.find_folder("cifar10") == env
    cache = cifar10(tmp_path / "cache" / "nondeep")
    monkeypatch.delenv("NONDEEP_DATA")
    assert cifar.find_folder("cifar10") == cache
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cifar._cache_root() == tmp_path / "home" / ".cache" / "nondeep"


def test_not_found_names_each_place_once_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NONDEEP_DATA", str(tmp_path / "d"))
    with pytest.raises(DatasetError) as err:
        cifar.find_folder("cifar100", tmp_path / "d")
    assert str(err.value) == (
        f"CIFAR-100 not found: looked for cifar-100-python/ in {tmp_path / 'd' / 'cifar-100-python'}, "
        f"{tmp_path / 'cache' / 'nondeep' / 'cifar-100-python'}. Download the python version "
        "(cifar-100-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and pass "
        "--data-dir (or set NONDEEP_DATA) to the folder that holds cifar-100-python/")


def test_load_cifar_concatenates_the_training_batches_in_order(tmp_path):
    folder = cifar10(tmp_path)
    images, labels, classes = cifar.load_cifar("cifar10", data_dir=tmp_path)  # the default split: train
    assert images.shape == (15, 3, 32, 32) and classes == [f"c{i}" for i in range(10)]
    for i in range(5):
        first = pickle.loads((folder / f"data_batch_{i + 1}").read_bytes())[b"data"][0]
        assert torch.equal(images[3 * i].flatten(), torch.from_numpy(first))
    test_images, _, _ = cifar.load_cifar("cifar10", "test", tmp_path)
    assert torch.equal(test_images[0].flatten(), torch.from_numpy(batch(3, seed=9)[b"data"][0]))


def test_bad_names_splits_and_class_lists_are_one_line(tmp_path):
    with pytest.raises(DatasetError) as err:
        cifar.load_cifar("cifar20")
    assert str(err.value) == "unknown CIFAR dataset 'cifar20'; choose one of cifar10, cifar100"
    with pytest.raises(DatasetError) as err:
        cifar.load_cifar("cifar10", "val")
    assert str(err.value) == "CIFAR has splits 'train' and 'test', not 'val'"
    folder = cifar10(tmp_path)
    for names in ([b"a"] * 9, "abc", [b"a"] * 9 + [3]):
        dump(folder / "batches.meta", {b"label_names": names})
        with pytest.raises(DatasetError) as err:
            cifar.load_cifar("cifar10", data_dir=tmp_path)
        assert str(err.value) == (f"{folder / 'batches.meta'} is not a valid CIFAR file ('label_names' is not a "
                                  f"list of 10 names); {ADVICE}")
    dump(folder / "batches.meta", {b"label_names": ["a"] * 5 + [b"b"] * 5})  # str or bytes names
    assert cifar.load_cifar("cifar10", data_dir=tmp_path)[2] == ["a"] * 5 + ["b"] * 5
