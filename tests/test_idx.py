"""The IDX reader (nondeep.data.idx) at the edges of its format: each header check on the byte where it
starts to fail, dimensions past one byte, empty arrays, and the exact one-line refusal of each bad file."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from nondeep.data.idx import read_idx, read_idx_bytes
from nondeep.errors import DatasetError
from conftest import write_idx

ADVICE = "it is probably truncated or corrupt: delete it and download it again"


def header(code: int, *dims: int) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def refusal(raw: bytes, ndim: int | None = None, path: str | None = None) -> str:
    with pytest.raises(DatasetError) as err:
        read_idx_bytes(raw, ndim=ndim) if path is None else read_idx_bytes(raw, path, ndim)
    return str(err.value)


@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_every_type_code_reads_big_endian_values(code, dtype):
    # multi-byte values (300) show the byte order; negative ones the sign
    values = np.array([{np.uint8: [1, 2, 200], np.int8: [1, -2, 100]}.get(dtype, [1, -2, 300])], dtype=dtype)
    tensor = read_idx_bytes(header(code, 1, 3) + values.astype(np.dtype(dtype).newbyteorder(">")).tobytes())
    assert tensor.shape == (1, 3) and tensor.tolist() == values.tolist()
    assert tensor.numpy().dtype == np.dtype(dtype)  # in the native byte order
    tensor += 1  # the tensor owns writable memory


@pytest.mark.parametrize("raw", [b"", b"\0\0\x08", b"\x01\0\x08\x01", b"\0\x01\x08\x01", b"\0\0\x07\x01",
                                 b"\0\0\x0a\x01"], ids=["empty", "3 bytes", "byte 0", "byte 1", "code 7", "code 10"])
def test_a_bad_magic_number_is_refused_on_each_of_its_bytes(raw):
    assert refusal(raw) == f"<bytes> is not a valid IDX file (bad magic number); {ADVICE}"


def test_the_path_names_the_file_in_every_refusal():
    assert refusal(b"", path="/data/x-idx3-ubyte") == (f"/data/x-idx3-ubyte is not a valid IDX file (bad magic "
                                                        f"number); {ADVICE}")


def test_zero_or_unexpected_dimensions_are_refused():
    assert refusal(b"\0\0\x08\0") == f"<bytes> is not a valid IDX file (0 dimensions, expected at least 1); {ADVICE}"
    assert refusal(b"\0\0\x08\0", ndim=3) == f"<bytes> is not a valid IDX file (0 dimensions, expected 3); {ADVICE}"
    assert refusal(header(8, 2) + b"ab", ndim=3) == (f"<bytes> is not a valid IDX file (1 dimensions, expected 3); "
                                                      f"{ADVICE}")
    assert read_idx_bytes(header(8, 2) + b"ab", ndim=1).tolist() == [97, 98]


def test_a_header_cut_short_is_refused_and_one_that_just_fits_is_read():
    full = header(8, 0, 5)  # 4 + 2 x 4 bytes, no data: an empty 0 x 5 array
    assert read_idx_bytes(full).shape == (0, 5)
    assert refusal(full[:-1]) == f"<bytes> is not a valid IDX file (header cut short); {ADVICE}"


def test_each_dimension_is_read_from_its_own_four_bytes():
    """Dimensions past 2**24 use the first byte of their field: a reader that skipped it would see 0."""
    big = 2 ** 24 + 3
    assert refusal(header(8, big)) == (f"<bytes> is not a valid IDX file (8 bytes where its header [{big}] needs "
                                       f"{8 + big}); {ADVICE}")
    assert refusal(header(8, 1, big)) == (f"<bytes> is not a valid IDX file (12 bytes where its header [1, {big}] "
                                          f"needs {12 + big}); {ADVICE}")
    assert read_idx_bytes(header(8, 2, 3, 1) + bytes(range(6))).shape == (2, 3, 1)


def test_the_data_must_fill_the_header_exactly():
    raw = header(0x0C, 2, 2) + np.arange(4, dtype=">i4").tobytes()
    assert read_idx_bytes(raw).tolist() == [[0, 1], [2, 3]]
    assert refusal(raw[:-1]) == f"<bytes> is not a valid IDX file (27 bytes where its header [2, 2] needs 28); {ADVICE}"
    assert refusal(raw + b"\0") == (f"<bytes> is not a valid IDX file (29 bytes where its header [2, 2] needs 28); "
                                   f"{ADVICE}")


def test_read_idx_decompresses_gz_by_name_or_by_magic(tmp_path):
    raw = header(8, 3) + b"\x01\x02\x03"
    (tmp_path / "plain").write_bytes(raw)
    (tmp_path / "renamed").write_bytes(gzip.compress(raw))  # gzip without the .gz name
    (tmp_path / "named.gz").write_bytes(gzip.compress(raw))
    for name in ("plain", "renamed", "named.gz"):
        assert read_idx(tmp_path / name, ndim=1).tolist() == [1, 2, 3]
    (tmp_path / "fake.gz").write_bytes(raw)  # called .gz, but not gzip: refused as gzip, not read as IDX
    with pytest.raises(DatasetError) as err:
        read_idx(tmp_path / "fake.gz")
    assert str(err.value).startswith(f"{tmp_path / 'fake.gz'} is not a valid IDX file (gzip: ")
    assert str(err.value).endswith(ADVICE)


def test_a_gzip_stream_cut_off_is_refused(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(header(8, 100) + bytes(100))[:-12])
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    assert str(err.value).startswith(f"{path} is not a valid IDX file (gzip: ") and "\n" not in str(err.value)


def test_a_file_that_cannot_be_read_says_why(tmp_path):
    with pytest.raises(DatasetError) as err:
        read_idx(tmp_path / "missing")
    assert str(err.value) == f"cannot read {tmp_path / 'missing'}: No such file or directory"
    with pytest.raises(DatasetError) as err:
        read_idx(tmp_path)
    assert str(err.value) == f"cannot read {tmp_path}: Is a directory"


def test_values_round_trip_through_a_file(tmp_path):
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    (tmp_path / "i.gz").write_bytes(gzip.compress(header(8, 4, 28, 28) + images.numpy().tobytes()))
    assert torch.equal(read_idx(tmp_path / "i.gz", ndim=3), images)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    a = np.random.default_rng(1).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    assert torch.equal(read_idx(write_idx(tmp_path / "a.idx", a, gz), ndim=3), torch.from_numpy(a))
    b = np.arange(-3, 4, dtype=np.int32)
    assert read_idx(write_idx(tmp_path / "b.idx", b, gz)).tolist() == b.tolist()
    f = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    assert torch.allclose(read_idx(write_idx(tmp_path / "f.idx", f, gz)), torch.from_numpy(f))


def test_idx_corrupt_and_truncated(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-1])  # one byte short
    with pytest.raises(DatasetError, match="x-idx3-ubyte.*delete it and download it again"):
        read_idx(path)
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DatasetError, match="magic"):
        read_idx(bad)
    gz = write_idx(tmp_path / "cut.gz", np.zeros((50, 28, 28), np.uint8))
    gz.write_bytes(gz.read_bytes()[:40])  # a cut-off download
    with pytest.raises(DatasetError, match="cut.gz"):
        read_idx(gz)
    with pytest.raises(DatasetError, match="dimensions"):
        read_idx(write_idx(tmp_path / "ok", np.zeros(3, np.uint8)), ndim=3)
