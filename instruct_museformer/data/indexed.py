"""fairseq's memory-mapped indexed dataset (``--dataset-impl mmap``), written and read without fairseq.

A dataset is a pair of files sharing a prefix (layout identical in fairseq 0.10.2, 0.12.2 and main):

``{prefix}.idx``::

    b"MMIDIDX\\x00\\x00"   magic (9 bytes)
    <Q  version = 1
    <B  dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16, 9 uint32, 10 uint64;
        6/7 are floats, which token data never is)
    <Q  N, the number of sequences
    int32[N]  sizes: tokens per sequence (including the EOS appended at binarization)
    int64[N]  pointers: *byte* offsets of each sequence into the .bin file

``{prefix}.bin``: the sequences' token ids concatenated, C order, in that dtype (little-endian, as
fairseq writes on the machines it runs on).

The writer picks uint16 while the vocabulary has fewer than 65,500 entries and int32 otherwise, as
fairseq 0.10.2 does. Both files are written to temporary names and renamed into place, so a reader
never sees a half-written dataset.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 8 + 1 + 8  # 26 bytes, then 12 bytes per sequence

DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    8: np.dtype(np.uint16),
    9: np.dtype(np.uint32),
    10: np.dtype(np.uint64),
}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}
_FLOAT_CODES = {6, 7}

UINT16_VOCAB_LIMIT = 65500  # fairseq's best_fitting_dtype threshold


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's files are 0600


def best_fitting_dtype(vocab_size: int | None) -> np.dtype:
    """The dtype fairseq uses for a vocabulary of this size (uint16 below 65,500 entries, else int32)."""
    if vocab_size is not None and vocab_size < UINT16_VOCAB_LIMIT:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def data_file_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


def index_file_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


def dataset_exists(prefix: str | Path) -> bool:
    return data_file_path(prefix).is_file() and index_file_path(prefix).is_file()


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same folder so the final rename is atomic; on failure it is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _FILE_MODE)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_index(path: str | Path, dtype: np.dtype, sizes: np.ndarray) -> None:
    """Write a ``.idx`` file for sequences of ``sizes`` tokens stored back to back in ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype not in _CODE_OF:
        raise ValueError(f"dtype {dtype} has no fairseq mmap code")
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size and (sizes.min() < 0 or sizes.max() > np.iinfo(np.int32).max):
        raise ValueError("sequence sizes must fit in int32")
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1] * dtype.itemsize, out=pointers[1:])
    with open(path, "wb") as out:
        out.write(MAGIC)
        out.write(struct.pack("<Q", VERSION))
        out.write(struct.pack("<B", _CODE_OF[dtype]))
        out.write(struct.pack("<Q", len(sizes)))
        out.write(sizes.astype("<i4").tobytes(order="C"))
        out.write(pointers.astype("<i8").tobytes(order="C"))


class MMapIndexedDatasetBuilder:
    """Streams sequences into ``{prefix}.bin`` and writes ``{prefix}.idx`` on :meth:`finalize`.

    Nothing appears under the final names until ``finalize`` succeeds; use it as a context manager so
    that an exception discards the temporary files.
    """

    def __init__(self, prefix: str | Path, vocab_size: int | None = None, dtype: np.dtype | None = None):
        self.prefix = Path(prefix)
        self.vocab_size = vocab_size
        self.dtype = np.dtype(dtype) if dtype is not None else best_fitting_dtype(vocab_size)
        if self.dtype not in _CODE_OF:
            raise ValueError(f"dtype {self.dtype} has no fairseq mmap code")
        self._limit = vocab_size if vocab_size is not None else int(np.iinfo(self.dtype).max) + 1
        self._sizes: list[np.ndarray] = []
        fd, name = tempfile.mkstemp(prefix=f".{self.prefix.name}.", suffix=".bin.tmp", dir=self.prefix.parent)
        self._bin_tmp = Path(name)
        os.chmod(self._bin_tmp, _FILE_MODE)
        self._bin = os.fdopen(fd, "wb")
        self._closed = False

    def add_item(self, tokens: Sequence[int] | np.ndarray) -> None:
        """Append one sequence (already including its EOS, if any)."""
        array = np.asarray(tokens)
        self.add_items(array.reshape(-1), np.array([array.size], dtype=np.int64))

    def add_items(self, flat: np.ndarray, sizes: np.ndarray) -> None:
        """Append many sequences at once: ``flat`` holds them back to back, ``sizes`` their lengths."""
        if self._closed:
            raise RuntimeError("builder already finalized or discarded")
        flat = np.asarray(flat)
        sizes = np.asarray(sizes, dtype=np.int64)
        if int(sizes.sum()) != flat.size:
            raise ValueError(f"sizes sum to {int(sizes.sum())} but {flat.size} tokens were given")
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= self._limit):
            raise ValueError(f"token ids must lie in [0, {self._limit}); got {int(flat.min())}..{int(flat.max())}")
        self._bin.write(flat.astype(self.dtype.newbyteorder("<"), copy=False).tobytes(order="C"))
        self._sizes.append(sizes)

    def __len__(self) -> int:
        return sum(len(s) for s in self._sizes)

    def finalize(self) -> None:
        """Write the index, then rename ``.bin`` and ``.idx`` into place (bin first)."""
        if self._closed:
            raise RuntimeError("builder already finalized or discarded")
        self._bin.close()
        self._closed = True
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, dtype=np.int64)
        try:
            with atomic_output(index_file_path(self.prefix)) as idx_tmp:
                write_index(idx_tmp, self.dtype, sizes)
                os.replace(self._bin_tmp, data_file_path(self.prefix))
        except BaseException:
            self._bin_tmp.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        """Drop everything written so far (the final names are never touched)."""
        if not self._closed:
            self._bin.close()
            self._closed = True
        self._bin_tmp.unlink(missing_ok=True)

    def __enter__(self) -> MMapIndexedDatasetBuilder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._closed:
            self.discard()


def write_dataset(prefix: str | Path, sequences: Sequence[Sequence[int]], vocab_size: int | None) -> None:
    """Write whole sequences (each already ending with EOS if wanted) as ``{prefix}.bin/.idx``."""
    with MMapIndexedDatasetBuilder(prefix, vocab_size) as builder:
        for seq in sequences:
            builder.add_item(seq)
        builder.finalize()


class MMapIndexedDataset:
    """Read-only view of a ``{prefix}.bin/.idx`` pair; the token data stays memory-mapped.

    ``sizes`` (int32, tokens per sequence including EOS) and ``pointers`` (int64 byte offsets) come from
    the index; ``data`` is the whole ``.bin`` as a flat array and ``offsets`` the element offset of each
    sequence in it, which lets callers scan all tokens at once (e.g. for Bar positions).
    """

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        idx_path, bin_path = index_file_path(prefix), data_file_path(prefix)
        for path in (idx_path, bin_path):
            if not path.is_file():
                raise UserError(f"{path}: no such file (expected a fairseq mmap dataset {prefix}.bin/.idx)")
        raw = idx_path.read_bytes()
        if len(raw) < HEADER_SIZE or raw[: len(MAGIC)] != MAGIC:
            raise UserError(f"{idx_path}: not a fairseq mmap index (bad magic; was it built with --dataset-impl mmap?)")
        (version,) = struct.unpack_from("<Q", raw, len(MAGIC))
        (code,) = struct.unpack_from("<B", raw, len(MAGIC) + 8)
        (count,) = struct.unpack_from("<Q", raw, len(MAGIC) + 9)
        if version != VERSION:
            raise UserError(f"{idx_path}: unsupported index version {version} (expected {VERSION})")
        if code in _FLOAT_CODES or code not in DTYPE_CODES:
            raise UserError(f"{idx_path}: dtype code {code} is not an integer token type")
        if len(raw) != HEADER_SIZE + 12 * count:
            raise UserError(
                f"{idx_path}: truncated or corrupt index ({len(raw)} bytes for {count} sequences, "
                f"expected {HEADER_SIZE + 12 * count})"
            )
        self.dtype = DTYPE_CODES[code]
        self.sizes = np.frombuffer(raw, dtype="<i4", count=count, offset=HEADER_SIZE).astype(np.int32)
        self.pointers = np.frombuffer(raw, dtype="<i8", count=count, offset=HEADER_SIZE + 4 * count).astype(
            np.int64
        )
        itemsize = self.dtype.itemsize
        total = int(self.sizes.astype(np.int64).sum())
        bin_bytes = bin_path.stat().st_size
        expected = np.zeros(count, dtype=np.int64)
        if count > 1:
            np.cumsum(self.sizes[:-1].astype(np.int64) * itemsize, out=expected[1:])
        if (self.sizes < 0).any() or not np.array_equal(expected, self.pointers) or bin_bytes != total * itemsize:
            raise UserError(
                f"{idx_path}: index does not match {bin_path} ({bin_bytes} bytes of data, index describes "
                f"{total} tokens of {itemsize} bytes); rebuild with imf preprocess"
            )
        self.offsets = self.pointers // itemsize
        if total == 0:
            self.data: np.ndarray = np.zeros(0, dtype=self.dtype)
        else:
            self.data = np.memmap(bin_path, dtype=self.dtype.newbyteorder("<"), mode="r", shape=(total,))

    def __getstate__(self) -> dict:  # reopen by path (e.g. in spawned DataLoader workers), never copy the data
        return {"prefix": str(self.prefix)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefix"])

    def __len__(self) -> int:
        return len(self.sizes)

    def tokens(self, index: int) -> np.ndarray:
        """Sequence ``index`` as a read-only numpy view (in the file's dtype)."""
        n = len(self.sizes)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} sequences")
        index %= n
        start = int(self.offsets[index])
        return self.data[start : start + int(self.sizes[index])]

    def __getitem__(self, index: int):
        import torch  # imported here so binarization workers need not load torch

        return torch.from_numpy(self.tokens(index).astype(np.int64))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
