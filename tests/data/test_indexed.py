"""The mmap format against an independent reader (plain struct + numpy), byte for byte."""

import pickle
import struct

import numpy as np
import pytest

from instruct_museformer.data.indexed import MMapIndexedDataset, MMapIndexedDatasetBuilder, write_dataset
from instruct_museformer.errors import UserError


def _independent_read(prefix):
    """Parse .idx/.bin following fairseq's layout, sharing no code with the package."""
    raw = open(f"{prefix}.idx", "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, count = struct.unpack("<QBQ", raw[9:26])
    sizes = np.frombuffer(raw[26 : 26 + 4 * count], dtype="<i4")
    pointers = np.frombuffer(raw[26 + 4 * count :], dtype="<i8")
    assert len(raw) == 26 + 12 * count
    dtype = {8: "<u2", 4: "<i4"}[code]
    data = open(f"{prefix}.bin", "rb").read()
    seqs = [
        np.frombuffer(data, dtype=dtype, count=int(n), offset=int(p)).tolist()
        for n, p in zip(sizes, pointers, strict=True)
    ]
    return version, code, seqs


LINES = [[4, 17, 19, 11, 5, 9, 13, 12, 11], [], [300, 4], [7]]


def test_write_then_read_back_with_an_independent_reader(tmp_path):
    prefix = tmp_path / "train.score-perf.score"
    write_dataset(prefix, [line + [2] for line in LINES], vocab_size=400)
    version, code, seqs = _independent_read(prefix)
    assert (version, code) == (1, 8)  # uint16 for a small vocabulary
    assert seqs == [line + [2] for line in LINES]
    raw = (tmp_path / "train.score-perf.score.idx").read_bytes()
    assert raw[:26] == b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + b"\x08" + struct.pack("<Q", 4)
    assert struct.unpack("<4q", raw[26 + 16 :]) == (0, 20, 22, 28)  # byte offsets: 10, 1, 3 tokens of 2 bytes

    ds = MMapIndexedDataset(prefix)
    assert len(ds) == 4 and ds.sizes.tolist() == [10, 1, 3, 2]
    assert [ds[i].tolist() for i in range(4)] == seqs and ds[-1].dtype.is_floating_point is False
    assert str(ds[0].dtype) == "torch.int64"
    clone = pickle.loads(pickle.dumps(ds))  # by path, not by value
    assert len(pickle.dumps(ds)) < 200 and clone[0].tolist() == seqs[0]


def test_large_vocabulary_uses_int32(tmp_path):
    write_dataset(tmp_path / "big", [[70000, 4, 2]], vocab_size=70001)
    version, code, seqs = _independent_read(tmp_path / "big")
    assert code == 4 and seqs == [[70000, 4, 2]]
    assert MMapIndexedDataset(tmp_path / "big")[0].tolist() == [70000, 4, 2]


def test_empty_dataset_and_failed_build_leave_nothing(tmp_path):
    write_dataset(tmp_path / "empty", [], vocab_size=10)
    assert len(MMapIndexedDataset(tmp_path / "empty")) == 0
    with pytest.raises(ValueError):
        with MMapIndexedDatasetBuilder(tmp_path / "bad", vocab_size=10) as builder:
            builder.add_item([1, 2])
            builder.add_item([10])  # out of the vocabulary: a bug upstream
            builder.finalize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.bin", "empty.idx"]


def test_corrupt_files_are_user_errors(tmp_path):
    write_dataset(tmp_path / "d", [[4, 2], [5, 6, 2]], vocab_size=10)
    (tmp_path / "d.bin").write_bytes((tmp_path / "d.bin").read_bytes()[:-2])
    with pytest.raises(UserError, match="does not match"):
        MMapIndexedDataset(tmp_path / "d")
    (tmp_path / "d.idx").write_bytes(b"NOTANIDX" + bytes(30))
    with pytest.raises(UserError, match="bad magic"):
        MMapIndexedDataset(tmp_path / "d")
    with pytest.raises(UserError, match="no such file"):
        MMapIndexedDataset(tmp_path / "missing")
