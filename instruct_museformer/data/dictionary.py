"""fairseq's dictionary file format, for our *numeric* dictionaries (line k = token id k).

A fairseq dictionary file holds one ``<symbol> <count>`` pair per line, optionally followed by the flag
``#fairseq:overwrite``. Our token files hold MidiTok ids, so our dictionaries are ``{id} {count}`` for
ids 0..V-1 in order (``imf tokenize`` writes every count as 1, as Museformer's dict.txt does).

Unlike fairseq's ``Dictionary`` we do **not** prepend ``<s> <pad> </s> <unk>``: MidiTok's own specials
keep their ids (pad=0, bos=1, eos=2, and id 3, MidiTok's MASK, doubles as unk), so a token id in a text
file, in the binarized data and in the model's vocabulary are one and the same number and no
``fairseq_index - 4`` shift is ever needed. This is why a file that is not exactly ``0..V-1`` in order
is rejected: a count-sorted dictionary (what fairseq builds by default) would silently renumber tokens.

An unknown token is an error, not ``<unk>``: an id outside the vocabulary means the token files and the
dictionary do not belong together, and mapping it to unk would corrupt the music silently.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..tokens.specials import BOS, EOS, MASK, NUM_SPECIALS, PAD
from .indexed import atomic_output

OVERWRITE_FLAG = "#fairseq:overwrite"
UNK = MASK  # MidiTok has no unk token; id 3 (MASK) stands in for fairseq's unk slot

_ALLOWED_BYTES = b"0123456789 \t\r\n\v\f"
_LEADING_ZERO = re.compile(rb"(?<![0-9])0[0-9]")
_SPACE_ZERO = tuple(bytes([c]) + b"0" for c in b" \t\r\n\v\f")


class UnknownTokenError(UserError):
    """A token of a token file that the dictionary does not hold; names file, line and token."""

    def __init__(
        self, source: str, line_no: int, position: int, symbol: str, vocab_size: int, dict_path: str | None
    ):
        self.source, self.line_no, self.position, self.symbol = source, line_no, position, symbol
        self.vocab_size, self.dict_path = vocab_size, dict_path
        where = f" (dictionary {dict_path})" if dict_path else ""
        super().__init__(
            f"{source}:{line_no}: token {position} {symbol!r} is not in the dictionary{where}: "
            f"token files hold ids 0..{vocab_size - 1} separated by spaces"
        )

    def __reduce__(self):  # picklable across worker processes despite the custom signature
        fields = (self.source, self.line_no, self.position, self.symbol, self.vocab_size, self.dict_path)
        return (type(self), fields)

    def at_line(self, line_no: int) -> UnknownTokenError:
        """The same error, re-numbered (workers count lines from the start of their chunk)."""
        return UnknownTokenError(self.source, line_no, self.position, self.symbol, self.vocab_size, self.dict_path)


def parse_ids(raw: bytes, vocab_size: int) -> np.ndarray | None:
    """Ids of a whitespace-separated line of decimal ids (int64), or None if any token is not in 0..V-1.

    Only canonical decimals count ('7', not '07' or '+7'): the dictionary's symbols are ``str(id)``.
    A blank line gives an empty array (fairseq binarizes it as a lone EOS).
    """
    if not raw.strip():
        return np.zeros(0, dtype=np.int64)
    if raw.translate(None, _ALLOWED_BYTES):
        return None
    # a leading zero can only follow whitespace or the line start: look for it only if a '0' does so
    if (raw.lstrip()[:1] == b"0" or any(w in raw for w in _SPACE_ZERO)) and _LEADING_ZERO.search(raw):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            # only digit runs and whitespace are left, so this yields exactly one value per token
            # (a value too large for int64 saturates and fails the range check below)
            ids = np.fromstring(raw, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    if int(ids.max()) >= vocab_size or int(ids.min()) < 0:
        return None
    return ids


def first_unknown(raw: bytes, vocab_size: int) -> tuple[int, str]:
    """(1-based position, symbol) of the first token of ``raw`` that is not an id in 0..V-1."""
    for position, token in enumerate(raw.split(), start=1):
        if parse_ids(token, vocab_size) is None:
            return position, token.decode("utf-8", errors="replace")
    raise ValueError("every token of the line is known")


class Dictionary:
    """A numeric fairseq dictionary: symbol of index k is ``str(k)``; counts are kept for round trips."""

    def __init__(self, counts: Sequence[int], path: str | Path | None = None):
        if len(counts) < NUM_SPECIALS:
            raise ValueError(f"a dictionary needs at least the {NUM_SPECIALS} special ids, got {len(counts)}")
        self.counts: list[int] = [int(c) for c in counts]
        self.path = None if path is None else Path(path)
        self.pad_index, self.bos_index, self.eos_index, self.unk_index = PAD, BOS, EOS, UNK

    @classmethod
    def numeric(cls, size: int, counts: Sequence[int] | None = None) -> Dictionary:
        """The dictionary of ids 0..size-1 (every count 1 unless given), as ``imf tokenize`` writes it."""
        return cls([1] * size if counts is None else list(counts)[:size])

    # -- fairseq-style accessors -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(f"token id {index} out of range for a dictionary of {len(self)}")
        return str(index)

    def __contains__(self, symbol: object) -> bool:
        return self._id_of(symbol) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dictionary) and self.counts == other.counts

    @property
    def symbols(self) -> list[str]:
        return [str(i) for i in range(len(self))]

    def index(self, symbol: str) -> int:
        """Id of ``symbol``; unknown symbols raise KeyError (see the module docstring for why not unk)."""
        found = self._id_of(symbol)
        if found is None:
            raise KeyError(symbol)
        return found

    def pad(self) -> int:
        return self.pad_index

    def bos(self) -> int:
        return self.bos_index

    def eos(self) -> int:
        return self.eos_index

    def unk(self) -> int:
        return self.unk_index

    def _id_of(self, symbol: object) -> int | None:
        if not isinstance(symbol, str) or not symbol.isascii() or not symbol.isdigit():
            return None
        if len(symbol) > 1 and symbol[0] == "0":
            return None
        value = int(symbol)
        return value if value < len(self) else None

    # -- encoding ----------------------------------------------------------------------------------
    def encode_array(
        self, line: str | bytes, *, append_eos: bool = True, source: str | Path = "<string>", line_no: int = 1
    ) -> np.ndarray:
        """Token ids of one whitespace-separated line as int64 (fast path used by binarization).

        Raises UserError naming ``source``, ``line_no`` and the first token that is not in the dictionary.
        """
        raw = line.encode() if isinstance(line, str) else line
        ids = parse_ids(raw, len(self))
        if ids is None:
            position, symbol = first_unknown(raw, len(self))
            path = None if self.path is None else str(self.path)
            raise UnknownTokenError(str(source), line_no, position, symbol, len(self), path)
        if append_eos:
            ids = np.append(ids, np.int64(self.eos_index))
        return ids

    def encode_line(
        self, line: str, *, append_eos: bool = True, source: str | Path = "<string>", line_no: int = 1
    ) -> list[int]:
        """Token ids of one line, plus EOS (as fairseq's ``encode_line``) unless ``append_eos=False``."""
        return self.encode_array(line, append_eos=append_eos, source=source, line_no=line_no).tolist()

    # -- files ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Dictionary:
        """Read a fairseq dictionary file whose symbols are 0..V-1 in order; errors name file and line."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{path}: dictionary file not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"{path}: cannot read dictionary ({error})") from None
        counts: list[int] = []
        seen: dict[str, int] = {}
        for line_no, line in enumerate(text.splitlines(), start=1):
            fields = line.rstrip().rsplit(" ", 1)
            overwrite = False
            if len(fields) == 2 and fields[1] == OVERWRITE_FLAG:
                overwrite = True
                fields = fields[0].rsplit(" ", 1)
            if len(fields) != 2 or not fields[0]:
                raise UserError(f"{path}:{line_no}: expected '<symbol> <count>', got {line!r}")
            symbol, count_text = fields
            try:
                count = int(count_text)
            except ValueError:
                raise UserError(f"{path}:{line_no}: count {count_text!r} is not an integer") from None
            if symbol in seen:
                hint = " (#fairseq:overwrite cannot renumber a numeric dictionary)" if overwrite else ""
                raise UserError(
                    f"{path}:{line_no}: duplicate symbol {symbol!r} (first on line {seen[symbol]}){hint}"
                )
            seen[symbol] = line_no
            expected = str(len(counts))
            if symbol != expected:
                raise UserError(
                    f"{path}:{line_no}: symbol {symbol!r} where token id {expected} was expected: our "
                    "dictionaries list the MidiTok ids 0..V-1 in order (line k = id k); a count-sorted or "
                    "word-symbol dictionary (fairseq's default) would renumber the tokens"
                )
            counts.append(count)
        if len(counts) < NUM_SPECIALS:
            raise UserError(
                f"{path}: {len(counts)} entries; a dictionary needs at least the special ids 0..{NUM_SPECIALS - 1}"
            )
        return cls(counts, path)

    def save(self, path: str | Path) -> None:
        """Write ``{id} {count}`` lines atomically (temp file + rename)."""
        path = Path(path)
        text = "".join(f"{i} {c}\n" for i, c in enumerate(self.counts))
        with atomic_output(path) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def __repr__(self) -> str:
        return f"Dictionary(size={len(self)}, path={str(self.path) if self.path else None!r})"


def build_numeric_dictionary(counts: np.ndarray, padding_factor: int = 1) -> Dictionary:
    """A dictionary over ids 0..max seen (at least the specials and Bar), padded to a multiple.

    fairseq sorts a built dictionary by count; that would renumber MidiTok ids, so we keep line k = id k
    and carry the observed counts instead. Padding (fairseq's ``--padding-factor``) appends further,
    unused ids with count 0 rather than ``madeupword`` symbols, for the same reason.
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    size = max(int(used[-1]) + 1 if used.size else 0, NUM_SPECIALS + 1)
    if padding_factor > 1 and size % padding_factor:
        size += padding_factor - size % padding_factor
    full = np.zeros(size, dtype=np.int64)
    full[: min(size, counts.size)] = counts[:size]
    return Dictionary(full.tolist())


def write_token_dictionary(vocab_size: int, path: str | Path) -> Dictionary:
    """Write the dictionary of a tokenizer's ids 0..vocab_size-1 (every count 1), as ``imf tokenize`` does."""
    dictionary = Dictionary.numeric(vocab_size)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    dictionary.save(path)
    return dictionary
