"""CIFAR-10 and CIFAR-100 from the "python version" folders of https://www.cs.toronto.edu/~kriz/cifar.html.

The files are pickles, and unpickling runs code, so each file is first walked opcode by opcode (which also
catches truncation) and then loaded with an unpickler that can build nothing but numpy arrays. Only a
plain dict with the expected keys and shapes is accepted.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
# name -> (folder, archive, train files, test file, meta file, labels key, label-names key, classes)
SPECS = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", [f"data_batch_{i}" for i in range(1, 6)],
                "test_batch", "batches.meta", "labels", "label_names", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], "test", "meta", "fine_labels",
                 "fine_label_names", 100),
}
MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}

# What numpy needs to rebuild an array from a pickle, whatever numpy version wrote it (numpy 2 renamed
# numpy.core to numpy._core); the functions are taken from numpy's own reductions, not imported by name.
_NUMPY_GLOBALS = {"_reconstruct": np.zeros(1).__reduce__()[0], "scalar": np.float64(0).__reduce__()[0],
                  "_frombuffer": np.zeros(1).__reduce_ex__(5)[0], "ndarray": np.ndarray, "dtype": np.dtype}
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric"}


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"); allow that only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refuses _codecs.encode other than str -> latin1")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _NUMPY_MODULES and name in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[name]
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if name == "bytes" and module in ("builtins", "__builtin__"):  # b"" in a protocol-2 pickle (Python 3
            return bytes                                               # writes Python 2's module name there)
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}")


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nondeep"


def _corrupt(path: Path, why: str) -> DatasetError:
    return DatasetError(f"{path} is not a valid CIFAR file ({why}); it is probably corrupt: delete the folder "
                        f"and extract the python version from {URL} again")


def load_pickle(path: Path, keys: set[str]) -> dict[str, Any]:
    """A CIFAR pickle as a dict with str keys, after checking it is a well-formed dict holding `keys`."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None
    try:  # walk the opcodes without running them: a cut-off or non-pickle file fails here
        ops = [op.name for op, _, _ in pickletools.genops(raw)]
    except Exception as err:  # genops raises ValueError, but a garbage stream can raise others
        raise _corrupt(path, f"not a pickle: {err}") from None
    first = [o for o in ops if o not in ("PROTO", "FRAME")][:2]
    if not (first[:1] == ["EMPTY_DICT"] or first == ["MARK", "DICT"]) or ops[-1] != "STOP":
        raise _corrupt(path, "the pickle is not a dict")
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:
        raise _corrupt(path, str(err)) from None
    if not isinstance(obj, dict) or not all(isinstance(k, (bytes, str)) for k in obj):
        raise _corrupt(path, "the pickle is not a dict with string keys")
    # Python 2 pickles give bytes keys under encoding="bytes"
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if missing := keys - obj.keys():
        raise _corrupt(path, f"missing keys {sorted(missing)}")
    return obj


def find_folder(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The dataset folder (e.g. cifar-10-batches-py) in data_dir, $NONDEEP_DATA or ~/.cache/nondeep."""
    folder, archive, *_, meta = SPECS[name][:5]
    roots = [Path(d) for d in (data_dir, os.environ.get("NONDEEP_DATA")) if d] + [_cache_root()]
    candidates = [p for r in roots for p in (r / folder, r)]  # the parent, or the folder itself
    for path in candidates:
        if (path / meta).is_file():
            return path
    looked = ", ".join(str(r / folder) for r in dict.fromkeys(roots))
    raise DatasetError(f"{name.upper().replace('CIFAR', 'CIFAR-')} not found: looked for {folder}/ in "
                       f"{looked}. Download the python version ({archive}) from {URL}, extract it, and pass "
                       f"--data-dir (or set NONDEEP_DATA) to the folder that holds {folder}/")


def _batch(path: Path, labels_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_pickle(path, {"data", labels_key})
    data, labels = d["data"], np.asarray(d[labels_key])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        raise _corrupt(path, "'data' is not a uint8 array of shape (N, 3072)")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise _corrupt(path, f"'{labels_key}' does not hold one integer label per image")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(path, f"labels outside 0..{num_classes - 1}")
    # rows are 1024 red, 1024 green, 1024 blue values: already channel-first
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def load_cifar(name: str, split: str = "train", data_dir: str | os.PathLike | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 images (N, 3, 32, 32), int64 labels (fine labels for CIFAR-100) and class names."""
    if name not in SPECS:
        raise DatasetError(f"unknown CIFAR dataset {name!r}; choose one of {', '.join(SPECS)}")
    if split not in ("train", "test"):
        raise DatasetError(f"CIFAR has splits 'train' and 'test', not {split!r}")
    _, _, train_files, test_file, meta, labels_key, names_key, num_classes = SPECS[name]
    folder = find_folder(name, data_dir)
    names = load_pickle(folder / meta, {names_key})[names_key]
    if not isinstance(names, list) or len(names) != num_classes or \
            not all(isinstance(n, (bytes, str)) for n in names):
        raise _corrupt(folder / meta, f"'{names_key}' is not a list of {num_classes} names")
    classes = [n.decode() if isinstance(n, bytes) else n for n in names]
    parts = [_batch(folder / f, labels_key, num_classes)
             for f in (train_files if split == "train" else [test_file])]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), classes
