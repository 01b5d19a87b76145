"""``imf preprocess``: token files -> a fairseq data-bin, following ``fairseq-preprocess`` (fairseq_cli/preprocess.py).

File naming mirrors fairseq exactly (``dataset_dest_prefix``):

* input ``{pref}.{lang}``, or ``{pref}`` when no language is given;
* output ``{split}.{src}-{tgt}.{lang}.bin/.idx`` for a language (with ``--only-source -s X`` that is
  ``{split}.X-None.X``, since fairseq formats the missing target as ``None``); with ``--only-source`` and
  no ``-s`` it is plain ``{split}.bin/.idx`` -- Museformer's LM data-bin;
* dictionaries ``dict.{lang}.txt`` (``dict.txt`` without a language); the valid prefix's split is
  named ``valid`` (``valid1``, ... for further comma-separated prefixes), the test prefix's ``test``.

EOS (2) is appended to every line. Differences from fairseq, all deliberate:

* Dictionaries are numeric (see :mod:`.dictionary`): line k is token id k. Built from the training
  data (no ``--srcdict``), a dictionary lists ids 0..max seen with their counts, *not* sorted by count
  (that would renumber the MidiTok ids the tokenizer and the model agree on); ``--padding-factor``
  appends unused ids (count 0) instead of ``madeupword`` symbols. ``--threshold*``/``--nwords*`` would
  drop ids and so are refused when a dictionary is built (fairseq ignores them with a given dict).
* A token that is not in the dictionary is an error naming file, line and token, not ``<unk>``.
* Only ``--dataset-impl mmap`` is written; alignments (``--align-suffix``, ``--alignfile``) are refused.
* Paired lines should have as many bar tokens (id 4, or ``--eob-token ID``, our flag): a warning says
  where they do not, since ``imf train`` refuses such pairs.
* Everything is staged in a hidden folder inside destdir and moved into place only when the whole run
  succeeded, so a failed run leaves destdir as it was.
* A ``tokenizer.json`` beside ``--srcdict`` (or ``--tgtdict``) is copied into destdir: training derives
  beat ids from it (:mod:`.vocabulary`: this project's tokenizer or any MidiTok REMI-family one); without
  one, training uses the bar structure alone.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..tokens.specials import BAR, EOS
from .dictionary import Dictionary, UnknownTokenError, build_numeric_dictionary, first_unknown, parse_ids
from .indexed import MMapIndexedDatasetBuilder, best_fitting_dtype

CHUNK_BYTES = 4 << 20  # work unit for the worker pool (and progress granularity)
MAX_BUILT_VOCAB = 1 << 24  # a built dictionary larger than this means the files are not token ids
TOKENIZER_FILE = "tokenizer.json"
LOG_FILE = "preprocess.log"


@dataclass
class PreprocessOptions:
    """fairseq-preprocess's options (same names as its argparse namespace)."""

    source_lang: str | None = None
    target_lang: str | None = None
    trainpref: str | None = None
    validpref: str | None = None
    testpref: str | None = None
    destdir: str = "data-bin"
    srcdict: str | None = None
    tgtdict: str | None = None
    thresholdsrc: int = 0
    thresholdtgt: int = 0
    nwordssrc: int = -1
    nwordstgt: int = -1
    joined_dictionary: bool = False
    only_source: bool = False
    padding_factor: int = 8
    workers: int = 1
    dataset_impl: str = "mmap"
    dict_only: bool = False
    align_suffix: str | None = None
    alignfile: str | None = None
    eob_token: int = BAR  # the bar token, for the check that paired lines have as many bars (imf train --eob-token)


@dataclass
class SplitReport:
    """What one binarized file holds (logged, and returned for callers and tests)."""

    lang: str | None
    input: str
    output_prefix: str
    sequences: int
    tokens: int  # including the appended EOS, as fairseq counts them
    seconds: float


@dataclass
class PreprocessReport:
    destdir: Path
    files: list[str] = field(default_factory=list)
    splits: list[SplitReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- naming (fairseq_cli/preprocess.py) ---------------------------------------------------------------
def input_path(prefix: str, lang: str | None) -> Path:
    return Path(f"{prefix}.{lang}" if lang is not None else prefix)


def dest_prefix(opts: PreprocessOptions, split: str, lang: str | None) -> str:
    """fairseq's ``dataset_dest_prefix`` (without the destdir)."""
    if lang is not None:
        return f"{split}.{opts.source_lang}-{opts.target_lang}.{lang}"
    if opts.only_source:
        return split
    return f"{split}.{opts.source_lang}-{opts.target_lang}"


def dict_name(lang: str | None) -> str:
    return f"dict.{lang}.txt" if lang is not None else "dict.txt"


def split_prefixes(opts: PreprocessOptions) -> list[tuple[str, str]]:
    """(output split name, input prefix) pairs: train, valid, valid1, ..., test, test1, ..."""
    pairs: list[tuple[str, str]] = []
    if opts.trainpref:
        pairs.append(("train", opts.trainpref))
    for name, prefs in (("valid", opts.validpref), ("test", opts.testpref)):
        if prefs:
            for k, pref in enumerate(prefs.split(",")):
                pairs.append((f"{name}{k}" if k > 0 else name, pref))
    return pairs


# -- chunked, parallel reading -------------------------------------------------------------------------
def find_offsets(path: Path, chunk_bytes: int = CHUNK_BYTES, min_chunks: int = 1) -> list[int]:
    """Byte offsets cutting ``path`` into about-equal chunks that start at line starts."""
    size = path.stat().st_size
    n = max(min_chunks, -(-size // chunk_bytes), 1)
    offsets = [0]
    with open(path, "rb") as f:
        for i in range(1, n):
            f.seek(size * i // n)
            f.readline()
            position = f.tell()
            if offsets[-1] < position < size:
                offsets.append(position)
    offsets.append(size)
    return offsets


@dataclass
class _ChunkResult:
    lines: int
    nbytes: int
    sizes: np.ndarray | None = None
    tokens: np.ndarray | None = None
    bars: np.ndarray | None = None  # Bar tokens per line (translation pairs must agree)
    counts: np.ndarray | None = None
    error: UnknownTokenError | None = None


def _read_lines(path: Path, start: int, end: int) -> list[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _binarize_chunk(task: tuple[str, int, int, int, str | None, str, int]) -> _ChunkResult:
    """Encode the lines of one chunk (+ EOS each); worker side. ``mode`` 'count' only counts ids."""
    path_text, start, end, vocab_size, dict_path, mode, bar_token = task
    path = Path(path_text)
    lines = _read_lines(path, start, end)
    sizes = np.empty(len(lines), dtype=np.int32)
    arrays: list[np.ndarray] = []
    eos = np.array([EOS], dtype=np.int64)
    for i, raw in enumerate(lines):
        ids = parse_ids(raw, vocab_size)
        if ids is None:
            position, symbol = first_unknown(raw, vocab_size)
            error = UnknownTokenError(path_text, i + 1, position, symbol, vocab_size, dict_path)
            return _ChunkResult(lines=i, nbytes=end - start, error=error)
        arrays.append(ids)
        arrays.append(eos)
        sizes[i] = ids.size + 1
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    if mode == "count":  # vocab_size is MAX_BUILT_VOCAB here, so larger ids were already refused
        return _ChunkResult(lines=len(lines), nbytes=end - start, counts=np.bincount(flat))
    line_of = np.repeat(np.arange(len(lines)), sizes)
    bars = np.bincount(line_of[flat == bar_token], minlength=len(lines)).astype(np.int32)
    tokens = flat.astype(best_fitting_dtype(vocab_size))
    return _ChunkResult(lines=len(lines), nbytes=end - start, sizes=sizes, tokens=tokens, bars=bars)


def _start_method() -> str:
    """'fork' (instant, nothing re-imported) unless torch is loaded: forking its thread pools is unsafe."""
    if "torch" in sys.modules or "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    return "fork"


class _Runner:
    """Maps chunk tasks in order, over a process pool when workers > 1."""

    def __init__(self, workers: int, progress: Callable[[int], None] | None = None):
        self.workers = workers
        self.progress = progress
        self._pool = multiprocessing.get_context(_start_method()).Pool(workers) if workers > 1 else None

    def map(self, tasks: list[tuple]) -> Iterator[_ChunkResult]:
        results = self._pool.imap(_binarize_chunk, tasks) if self._pool else map(_binarize_chunk, tasks)
        for result in results:
            if self.progress is not None:
                self.progress(result.nbytes)
            yield result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


# -- the run ------------------------------------------------------------------------------------------
def _check_options(opts: PreprocessOptions) -> None:
    if opts.dataset_impl != "mmap":
        raise UserError(
            f"--dataset-impl {opts.dataset_impl}: only 'mmap' is supported (the format training reads)"
        )
    if opts.align_suffix or opts.alignfile:
        raise UserError("--align-suffix/--alignfile: alignment datasets are not supported")
    if opts.workers < 1:
        raise UserError(f"--workers {opts.workers}: must be at least 1")
    if opts.eob_token < 4:
        raise UserError(f"--eob-token {opts.eob_token}: the bar token cannot be a special id (0-3)")
    if opts.padding_factor < 1:
        raise UserError(f"--padding-factor {opts.padding_factor}: must be at least 1")
    if not opts.only_source and (opts.source_lang is None or opts.target_lang is None):
        raise UserError("--source-lang and --target-lang are both required unless --only-source is given")
    if opts.joined_dictionary and opts.srcdict and opts.tgtdict:
        raise UserError("cannot use both --srcdict and --tgtdict with --joined-dictionary")
    if not opts.trainpref and not opts.srcdict and not (opts.joined_dictionary and opts.tgtdict):
        raise UserError("--trainpref must be set if --srcdict is not specified")
    if not opts.only_source and not opts.joined_dictionary and not opts.tgtdict and not opts.trainpref:
        raise UserError("--trainpref must be set if --tgtdict is not specified")
    for flag, value in (("--srcdict", opts.srcdict), ("--tgtdict", opts.tgtdict)):
        if value and not Path(value).is_file():
            raise UserError(f"{flag} {value}: dictionary file not found")


def _languages(opts: PreprocessOptions) -> list[str | None]:
    return [opts.source_lang] if opts.only_source else [opts.source_lang, opts.target_lang]


def _build_dictionary(
    files: list[Path], opts: PreprocessOptions, runner: _Runner, thresholds: tuple[int, int]
) -> Dictionary:
    threshold, nwords = thresholds
    if threshold > 0 or nwords >= 0:
        raise UserError(
            "--thresholdsrc/--thresholdtgt/--nwordssrc/--nwordstgt: dropping rare ids would renumber or unk "
            "MidiTok tokens; pass --srcdict/--tgtdict (imf tokenize writes data/meta/our_dict.txt)"
        )
    counts = np.zeros(0, dtype=np.int64)
    for path in files:
        tasks = [(str(path), a, b, MAX_BUILT_VOCAB, None, "count", BAR) for a, b in _pairs(path, opts.workers)]
        lines_before = 0
        for result in runner.map(tasks):
            if result.error is not None:
                raise result.error.at_line(lines_before + result.error.line_no)
            lines_before += result.lines
            chunk = result.counts
            if chunk.size > counts.size:
                chunk, counts = counts, chunk
            counts[: chunk.size] += chunk
    return build_numeric_dictionary(counts, opts.padding_factor)


def _pairs(path: Path, workers: int) -> list[tuple[int, int]]:
    offsets = find_offsets(path, CHUNK_BYTES, min_chunks=workers)
    return list(zip(offsets[:-1], offsets[1:], strict=True))


def _binarize(
    path: Path, dictionary: Dictionary, out_prefix: Path, runner: _Runner, workers: int, bar_token: int = BAR
) -> tuple[int, int, np.ndarray]:
    """Binarize one token file into ``out_prefix.bin/.idx``.

    Returns (sequences, tokens incl. EOS, Bar tokens per line).
    """
    dict_path = None if dictionary.path is None else str(dictionary.path)
    tasks = [(str(path), a, b, len(dictionary), dict_path, "encode", bar_token) for a, b in _pairs(path, workers)]
    sequences = tokens = 0
    bars: list[np.ndarray] = []
    with MMapIndexedDatasetBuilder(out_prefix, vocab_size=len(dictionary)) as builder:
        for result in runner.map(tasks):
            if result.error is not None:
                raise result.error.at_line(sequences + result.error.line_no)
            builder.add_items(result.tokens, result.sizes)
            sequences += result.lines
            tokens += int(result.tokens.size)
            bars.append(result.bars)
        builder.finalize()
    return sequences, tokens, np.concatenate(bars) if bars else np.zeros(0, dtype=np.int32)


def _bar_mismatch_warning(split: str, sides: dict[str | None, tuple[int, Path, np.ndarray]]) -> str | None:
    """A warning if paired lines differ in Bar count (training refuses such pairs: bar k must pair with bar k)."""
    (_, src_path, src_bars), (_, tgt_path, tgt_bars) = sides.values()
    bad = np.flatnonzero(src_bars != tgt_bars)
    if not bad.size:
        return None
    i = int(bad[0])
    return (
        f"warning: split '{split}': {bad.size} pairs differ in their number of Bar tokens, first at line {i + 1} "
        f"({src_path}: {int(src_bars[i])}, {tgt_path}: {int(tgt_bars[i])}); imf train refuses such pairs"
    )


def _make_destdir(destdir: Path) -> Path | None:
    """Create destdir if needed; returns the top-most folder created here (a failed run removes it)."""
    if destdir.exists() and not destdir.is_dir():
        raise UserError(f"--destdir {destdir}: exists and is not a folder")
    top = None
    for folder in [destdir, *destdir.parents]:
        if folder.exists():
            break
        top = folder
    try:
        destdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--destdir {destdir}: cannot create it ({error.strerror or error})") from None
    return top


def _tokenizer_beside(opts: PreprocessOptions) -> Path | None:
    for dict_file in (opts.srcdict, opts.tgtdict):
        if dict_file:
            candidate = Path(dict_file).parent / TOKENIZER_FILE
            if candidate.is_file():
                return candidate
    return None


def preprocess(opts: PreprocessOptions, *, progress: bool | None = None) -> PreprocessReport:
    """Run fairseq-preprocess's job with our formats; see the module docstring for the exact outputs.

    ``progress``: show a progress bar (default: when stderr is a terminal).
    """
    started = time.perf_counter()
    _check_options(opts)
    destdir = Path(opts.destdir)
    languages = _languages(opts)
    splits = split_prefixes(opts)
    inputs = [(split, pref, lang, input_path(pref, lang)) for split, pref in splits for lang in languages]
    for _, _, _, path in inputs:
        if not path.is_file():
            raise UserError(f"{path}: input token file not found")
    for lang, given in zip(languages, (opts.srcdict, opts.tgtdict), strict=False):
        if not given and not (opts.joined_dictionary and (opts.srcdict or opts.tgtdict)):
            if (destdir / dict_name(lang)).exists():
                raise UserError(
                    f"{destdir / dict_name(lang)} already exists: pass --srcdict/--tgtdict to reuse it, or "
                    "remove it to build a new dictionary"
                )

    created = _make_destdir(destdir)
    try:
        staging = Path(tempfile.mkdtemp(prefix=".imf-preprocess-", dir=destdir))
    except OSError as error:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise UserError(f"--destdir {destdir}: not writable ({error.strerror or error})") from None

    total_bytes = sum(path.stat().st_size for *_, path in inputs)
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm

    runner = _Runner(opts.workers)  # before tqdm starts its monitor thread: a fork must see no threads
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="imf preprocess", disable=not show)
    runner.progress = bar.update
    log: list[str] = [f"imf preprocess {asdict(opts)}"]
    report = PreprocessReport(destdir=destdir)
    try:
        dicts = _dictionaries(opts, runner, log)
        for lang, dictionary in dicts.items():
            dictionary.save(staging / dict_name(lang))
            log.append(f"[{lang}] Dictionary: {len(dictionary)} types")
        if not opts.dict_only:
            counts: dict[str, dict[str | None, tuple[int, Path, np.ndarray]]] = {}
            for split, _, lang, path in inputs:
                t0 = time.perf_counter()
                out_name = dest_prefix(opts, split, lang)
                n_seq, n_tok, bars = _binarize(path, dicts[lang], staging / out_name, runner, opts.workers,
                                               opts.eob_token)
                seconds = time.perf_counter() - t0
                report.splits.append(SplitReport(lang, str(path), out_name, n_seq, n_tok, seconds))
                counts.setdefault(split, {})[lang] = (n_seq, path, bars)
                log.append(
                    f"[{lang}] {path}: {n_seq} sents, {n_tok} tokens, 0.0% replaced (unknown ids are errors), "
                    f"{seconds:.2f}s"
                )
            for split, by_lang in counts.items():
                if len({n for n, _, _ in by_lang.values()}) > 1:
                    detail = ", ".join(f"{path}: {n} lines" for n, path, _ in by_lang.values())
                    raise UserError(f"split '{split}': source and target differ in length ({detail})")
                warning = _bar_mismatch_warning(split, by_lang) if len(by_lang) == 2 else None
                if warning:
                    log.append(warning)
                    report.warnings.append(warning)
                    print(f"imf preprocess: {warning}", file=sys.stderr)
        tokenizer = _tokenizer_beside(opts)
        if tokenizer is not None:
            shutil.copyfile(tokenizer, staging / TOKENIZER_FILE)
            log.append(f"copied {tokenizer} -> {destdir / TOKENIZER_FILE}")
        else:
            log.append(f"no {TOKENIZER_FILE} beside the dictionaries: training will have bars but no beats")
        report.seconds = time.perf_counter() - started
        log.append(f"Wrote preprocessed data to {destdir} in {report.seconds:.2f}s")
        previous = destdir / LOG_FILE
        old_log = previous.read_text(encoding="utf-8") if previous.is_file() else ""
        (staging / LOG_FILE).write_text(old_log + "\n".join(log) + "\n", encoding="utf-8")
        for item in sorted(staging.iterdir()):
            os.replace(item, destdir / item.name)
            report.files.append(item.name)
    except BaseException as error:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(error, OSError):  # unreadable input, disk full, ...: a one-line error, not a traceback
            raise UserError(f"{error.filename or destdir}: {error.strerror or error}") from None
        raise
    finally:
        runner.close()
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _dictionaries(opts: PreprocessOptions, runner: _Runner, log: list[str]) -> dict[str | None, Dictionary]:
    """Load or build the source (and target) dictionary, as fairseq-preprocess decides between them."""
    src, tgt = opts.source_lang, opts.target_lang
    if opts.joined_dictionary:
        given = opts.srcdict or opts.tgtdict
        if given:
            joined = Dictionary.load(given)
        else:
            files = list(dict.fromkeys(input_path(opts.trainpref, lang) for lang in _languages(opts)))
            joined = _build_dictionary(files, opts, runner, (opts.thresholdsrc, opts.nwordssrc))
            log.append(f"built a joined dictionary from {', '.join(map(str, files))}")
        return {lang: joined for lang in _languages(opts)}
    if opts.srcdict:
        src_dict = Dictionary.load(opts.srcdict)
    else:
        src_dict = _build_dictionary(
            [input_path(opts.trainpref, src)], opts, runner, (opts.thresholdsrc, opts.nwordssrc)
        )
        log.append(f"built the [{src}] dictionary from {input_path(opts.trainpref, src)}")
    dicts: dict[str | None, Dictionary] = {src: src_dict}
    if not opts.only_source:
        if opts.tgtdict:
            dicts[tgt] = Dictionary.load(opts.tgtdict)
        else:
            dicts[tgt] = _build_dictionary(
                [input_path(opts.trainpref, tgt)], opts, runner, (opts.thresholdtgt, opts.nwordstgt)
            )
            log.append(f"built the [{tgt}] dictionary from {input_path(opts.trainpref, tgt)}")
    return dicts
