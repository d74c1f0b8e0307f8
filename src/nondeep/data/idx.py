"""IDX files (the MNIST family's format), gzipped or raw, checked before they are trusted.

Layout: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian int32,
then the data, big-endian. A file whose size does not match its header is truncated or corrupt.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError

# type code -> big-endian numpy dtype
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _corrupt(path: Path, why: str) -> DatasetError:
    return DatasetError(f"{path} is not a valid IDX file ({why}); it is probably truncated or corrupt: "
                        "delete it and download it again")


def read_idx_bytes(raw: bytes, path: str | os.PathLike = "<bytes>", ndim: int | None = None) -> torch.Tensor:
    """Decode the (already decompressed) bytes of an IDX file; `path` only names it in errors."""
    path = Path(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise _corrupt(path, "bad magic number")
    dtype, nd = np.dtype(_DTYPES[raw[2]]), raw[3]
    if nd == 0 or (ndim is not None and nd != ndim):
        raise _corrupt(path, f"{nd} dimensions, expected {ndim if ndim is not None else 'at least 1'}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise _corrupt(path, "header cut short")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise _corrupt(path, f"{len(raw)} bytes where its header {dims} needs {expected}")
    # astype to the native byte order also copies, so the tensor owns writable memory
    data = np.frombuffer(raw, dtype=dtype, offset=header).astype(dtype.newbyteorder("="))
    return torch.from_numpy(data.reshape(dims))


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> torch.Tensor:
    """Read an IDX file (`.gz` is decompressed); `ndim` checks the number of dimensions.

    Raises DatasetError naming the file when it is missing, truncated or not IDX at all.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":  # gzip magic: also catches a renamed .gz
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:  # bad gzip data or a cut-off stream
            raise _corrupt(path, f"gzip: {err}") from None
    return read_idx_bytes(raw, path, ndim)
