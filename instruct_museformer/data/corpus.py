"""Corpora of score/performance pairs -> the seed's token files ``{split}.score`` / ``{split}.perf``.

Two sources of pairs: the (n)ASAP dataset (a directory or the shipped ``.tar.xz``, unpacked once into a
cache) with its piece-disjoint ``acpas_split``, and a user manifest CSV. Every pair is tokenized in a
worker process; each result (tokens, or the reason the pair was skipped) is cached on disk under a key
made of the input files and the tokenizer configuration, so an interrupted run resumes where it stopped.
Output files are written whole at the end, through a temporary file and a rename.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import statistics
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..files import write_text_atomic
from ..tokens.autoalign import MIN_MATCHED
from ..tokens.errors import TokenizationError
from ..tokens.specials import BAR

if TYPE_CHECKING:
    from ..tokens.pair import PairTokens

SPLITS = ("train", "val", "test")
# (n)ASAP's acpas_split says "validation"; the seed's file names say "val".
_SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}
SHIPPED_METADATA = "nasap_metadata_shipped.csv"


@dataclass(frozen=True)
class Pair:
    """One performance of one score, with whatever links the performance to the score."""

    split: str
    score: Path
    performance: Path
    alignment: Path | None = None  # (n)ASAP note_alignment.tsv
    annotations: Path | None = None  # ASAP beat annotations of the performance
    score_annotations: Path | None = None  # ASAP beat annotations of the score MIDI
    match: Path | None = None  # a match file (score + performance + alignment)
    auto_align: bool = False  # where the above cannot place the pair (or there are none): parangonar (tokens.autoalign)
    # a note alignment (n)ASAP does not vouch for (robust_note_alignment 0): used, checked, where the
    # beat annotations cannot place the performance (tokens.pair.tokenize_pair, tokens.trust)
    unverified_alignment: Path | None = None

    @property
    def name(self) -> str:
        return str(self.performance)


@dataclass
class PairResult:
    pair: Pair
    score_ids: list[int] | None = None
    perf_ids: list[int] | None = None
    reason: str | None = None  # why the pair was skipped
    message: str = ""
    seconds: float = 0.0
    matched: float | None = None  # auto-aligned pairs: share of score notes parangonar matched
    markings: dict[str, dict[str, int]] = field(default_factory=dict)  # the score's, by type: parsed/tokenized

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass
class CorpusReport:
    pairs: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    tokens_per_score: dict[str, float] = field(default_factory=dict)
    tokens_per_performance: dict[str, float] = field(default_factory=dict)
    bars: dict[str, float] = field(default_factory=dict)
    auto_aligned: dict[str, float] = field(default_factory=dict)  # performance -> share of score notes matched
    # per marking type, summed over the distinct scores of the tokenized pairs: parsed by partitura / tokens
    markings: dict[str, dict[str, int]] = field(default_factory=dict)
    marking_scores: int = 0
    cached: int = 0
    wall_seconds: float = 0.0


# --------------------------------------------------------------------------------------------- sources


def unpack_archive(archive: Path, cache_root: Path | None = None) -> Path:
    """Unpack a ``.tar.xz`` corpus once into a cache directory and return the unpacked root.

    Keyed by the archive's content, not its path or mtime: a shared archive that is mounted anew (a new
    mtime) or copied keeps its unpacked folder, and with it the paths that the token and alignment caches
    name -- keyed by mtime, every session re-unpacked it, and re-tokenized and re-aligned every pair."""
    cache_root = cache_root or Path(os.environ.get("IMF_CACHE", Path.home() / ".cache" / "instruct_museformer"))
    try:
        key = _file_digest(archive)[:12]
    except OSError as error:
        raise UserError(f"{archive}: cannot read the archive ({error.strerror or error})") from error
    target = cache_root / f"{archive.name.split('.')[0]}-{key}"
    done = target / ".unpacked"
    if not done.exists():
        partial = target.with_name(target.name + ".partial")
        if partial.exists():
            _remove_tree(partial)
        partial.mkdir(parents=True)
        print(f"unpacking {archive} into {target} (once)", file=sys.stderr)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(partial, filter="data")
        except (tarfile.TarError, OSError, EOFError) as error:
            _remove_tree(partial)
            raise UserError(f"{archive}: cannot unpack: {error}") from error
        if target.exists():
            _remove_tree(target)
        partial.rename(target)
        done.touch()
    # The archive holds one top folder (nasap/); use it when it is the only entry.
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


def _file_digest(path: Path) -> str:
    """SHA-1 of a file's bytes (about 0.2 s for the 70 MB (n)ASAP archive)."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _find_metadata(root: Path, archive: Path | None, metadata: Path | None) -> Path:
    if metadata is not None:
        if not metadata.is_file():
            raise UserError(f"{metadata}: metadata file not found")
        return metadata
    candidates = [root / SHIPPED_METADATA]
    if archive is not None:
        candidates.append(archive.parent / SHIPPED_METADATA)
    candidates += [root.parent / SHIPPED_METADATA, root / "metadata.csv"]
    for candidate in candidates:
        if candidate.is_file() and "acpas_split" in _header(candidate):
            return candidate
    raise UserError(
        f"{root}: no (n)ASAP metadata with an 'acpas_split' column found "
        f"(looked for {SHIPPED_METADATA} beside the corpus); pass --metadata FILE"
    )


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


def nasap_pairs(root: Path, metadata: Path | None = None, cache_root: Path | None = None) -> list[Pair]:
    """Pairs of an (n)ASAP directory or ``.tar.xz``, split by the piece-disjoint ``acpas_split`` column.

    Note alignments are used only where ``robust_note_alignment == 1`` (data.md); the other performances
    are linked to their score through the beat annotations; where these do not fit the score, through
    their note alignment, and then through parangonar's, each only if it passes the checks of
    :mod:`..tokens.trust`.
    """
    archive = None
    if not root.exists():
        raise UserError(f"{root}: no such file or directory")
    if root.is_file():
        if not root.name.endswith((".tar.xz", ".tar.gz", ".tar", ".tgz")):
            raise UserError(f"{root}: expected an (n)ASAP directory or a .tar.xz archive")
        archive, root = root, unpack_archive(root, cache_root)
    table = _find_metadata(root, archive, metadata)
    pairs = []
    with open(table, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            split = _SPLIT_NAMES.get((row.get("acpas_split") or "").strip())
            if split is None:
                continue

            def path(column: str, row: dict[str, str] = row) -> Path | None:
                value = (row.get(column) or "").strip()
                return root / value if value else None

            robust = (row.get("robust_note_alignment") or "").strip() in ("1", "1.0", "True")
            score = _score_of(path("xml_score") or root / row["folder"] / "xml_score.musicxml", path("midi_score"),
                              split)
            # Note alignments name MusicXML notes: a MIDI score is paired through the beat annotations.
            alignment = None if score.suffix.lower() in (".mid", ".midi") else (
                path("note_alignments_fixed") or path("note_alignments"))
            pairs.append(
                Pair(
                    split=split,
                    score=score,
                    performance=path("midi_performance") or root / "missing",
                    alignment=alignment if robust else None,
                    annotations=path("performance_annotations"),
                    score_annotations=path("midi_score_annotations"),
                    unverified_alignment=None if robust else alignment,
                    auto_align=not robust and score.suffix.lower() not in (".mid", ".midi"),
                )
            )
    return pairs


def _score_of(xml: Path, midi: Path | None, split: str) -> Path:
    """The MusicXML score; in the training split, where (n)ASAP could not ship it (three files over 4 MiB:
    Liszt's sonata and Mephisto waltz, Schubert's Wanderer fantasy), the MIDI score, paired with the
    performance beat by beat through the annotations of both. It has no markings. Validation and test keep
    to MusicXML scores: they measure what the model renders from, and keep the pieces they had."""
    if split == "train" and not xml.is_file() and midi is not None and midi.is_file():
        return midi
    return xml


def manifest_pairs(manifest: Path) -> list[Pair]:
    """Pairs from a CSV with columns ``score,performance,alignment,split``.

    ``alignment`` may be a note_alignment ``.tsv``, a ``.match`` file or ASAP beat annotations (``.txt``),
    or empty when the optional ``annotations`` / ``match`` columns are given. Relative paths are read
    relative to the manifest's folder.
    """
    if not manifest.is_file():
        raise UserError(f"{manifest}: manifest not found")
    base = manifest.parent
    pairs = []
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"score", "performance", "split"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            split = _SPLIT_NAMES.get((row.get("split") or "").strip().lower())
            if split is None:
                raise UserError(f"{manifest}:{line}: split must be train, val or test, not {row.get('split')!r}")

            def path(column: str, row: dict[str, str] = row) -> Path | None:
                value = (row.get(column) or "").strip()
                return (base / value) if value else None

            alignment, annotations, match = path("alignment"), path("annotations"), path("match")
            if alignment is not None and alignment.suffix == ".match":
                alignment, match = None, alignment
            elif alignment is not None and alignment.suffix == ".txt":
                alignment, annotations = None, alignment
            pairs.append(
                Pair(
                    split=split,
                    score=path("score") or base,
                    performance=path("performance") or base,
                    alignment=alignment,
                    annotations=annotations,
                    score_annotations=path("score_annotations"),
                    match=match,
                    auto_align=alignment is None and annotations is None and match is None,
                )
            )
    return pairs


# ------------------------------------------------------------------------------------------ tokenizing

_worker_tokenizer = None


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    from ..tokens.tokenizer import load_tokenizer

    _worker_tokenizer = load_tokenizer(Path(tokenizer_path))


def _tokenize_one(pair: Pair, auto_alignment: Path | None = None) -> PairResult:
    """Tokenize one pair from its own alignment sources; a pair they cannot place (or that has none) and that
    may be auto-aligned is then aligned by parangonar into ``auto_alignment`` (a cache file)."""
    from ..tokens.pair import FALLBACK_REASONS

    start = time.perf_counter()
    missing = [p for p in (pair.score, pair.performance) if not p.is_file()]
    if missing:
        return PairResult(pair, reason="missing file", message=f"{missing[0]}: not found")
    matched = None
    try:
        try:
            tokens = _tokenize_own_sources(pair)
        except TokenizationError as error:
            if not (pair.auto_align and auto_alignment is not None and error.reason in FALLBACK_REASONS):
                raise
            refused = error if _has_own_source(pair) else None
            try:
                alignment, matched = _auto_align(pair, auto_alignment)
            except TokenizationError as failed:
                raise _keep_reason(refused, failed) from None
            tokens = _tokenize_auto_aligned(pair, alignment, matched, refused)
    except TokenizationError as error:
        return PairResult(pair, reason=error.reason, message=str(error), seconds=time.perf_counter() - start,
                          matched=matched)
    except Exception as error:  # a corrupt file must never abort a corpus run
        return PairResult(
            pair, reason="parse error", message=f"{type(error).__name__}: {error}",
            seconds=time.perf_counter() - start, matched=matched,
        )
    return PairResult(
        pair, score_ids=list(tokens.score_ids), perf_ids=list(tokens.perf_ids), seconds=time.perf_counter() - start,
        matched=matched,
        markings=tokens.info.get("markings", {}),
    )


def _existing(path: Path | None) -> Path | None:
    return path if path is not None and path.is_file() else None


def _has_own_source(pair: Pair) -> bool:
    return any(_existing(p) for p in (pair.alignment, pair.annotations, pair.match, pair.unverified_alignment))


def _tokenize_own_sources(pair: Pair) -> PairTokens:
    """``tokenize_pair`` with the alignment sources the pair comes with (those whose files exist)."""
    from ..tokens.pair import tokenize_pair

    return tokenize_pair(pair.score, pair.performance, _worker_tokenizer, alignment=_existing(pair.alignment),
                         annotations=_existing(pair.annotations), score_annotations=_existing(pair.score_annotations),
                         match=_existing(pair.match), unverified_alignment=_existing(pair.unverified_alignment))


def _tokenize_auto_aligned(pair: Pair, alignment: Path, matched: float,
                           refused: TokenizationError | None) -> PairTokens:
    """Tokens through parangonar's alignment, checked as any unverified alignment (``tokens.trust``). A pair
    its own sources refused (``refused``) keeps their reason, with what parangonar found added."""
    from ..tokens.pair import tokenize_pair

    try:
        if matched < MIN_MATCHED:
            raise TokenizationError("alignment below threshold", f"{pair.performance}: parangonar matched "
                                    f"{matched:.1%} of the score's notes (< {MIN_MATCHED:.0%}); not tokenized")
        # The pair's own sources again (they refuse it as before): its annotations check parangonar's alignment.
        return tokenize_pair(pair.score, pair.performance, _worker_tokenizer, annotations=_existing(pair.annotations),
                             score_annotations=_existing(pair.score_annotations), unverified_alignment=alignment)
    except TokenizationError as error:
        raise _keep_reason(refused, error) from None


def _keep_reason(refused: TokenizationError | None, error: TokenizationError) -> TokenizationError:
    """``error``, or where the pair's own sources refused it first, their refusal with ``error`` appended
    (said once: an ``error`` that already starts with the sources' refusal loses that part)."""
    if refused is None:
        return error
    said = str(error).removeprefix(f"{refused}; ")
    return TokenizationError(refused.reason, f"{refused}; parangonar: {said}")


def _auto_align(pair: Pair, path: Path) -> tuple[Path, float]:
    """(alignment file, share of score notes matched) from parangonar (cached in ``path``)."""
    from ..tokens.autoalign import align_pair
    from ..tokens.score import MIDI_SUFFIXES

    if pair.score.suffix.lower() in MIDI_SUFFIXES:
        raise TokenizationError("no alignment", f"{pair.performance}: no alignment given, and a MIDI score "
                                f"({pair.score}) has no note ids to align to: give beat annotations")
    aligned = align_pair(pair.score, pair.performance, path)
    return aligned.path, aligned.fraction


def _alignment_cache(pair: Pair, cache_dir: Path) -> Path | None:
    """Where a pair without alignment keeps its parangonar alignment: keyed by the two input files only, so
    that it outlives a change of the tokenizer (which re-tokenizes every pair)."""
    if not pair.auto_align:
        return None
    parts = []
    for path in (pair.score, pair.performance):
        stat = path.stat() if path.is_file() else None
        parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}" if stat else f"{path}:missing")
    return cache_dir / f"{hashlib.sha1(chr(10).join(parts).encode()).hexdigest()}.alignment.tsv"


def _tokenization_fingerprint(tokenizer_path: Path) -> str:
    """The tokenizer configuration and the code of ``tokens``: a change to either invalidates the cache."""
    digest = hashlib.sha1(tokenizer_path.read_bytes())
    for source in sorted((Path(__file__).parents[1] / "tokens").glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _cache_key(pair: Pair, tokenizer_fingerprint: str) -> str:
    parts = [tokenizer_fingerprint]
    for path in (pair.score, pair.performance, pair.alignment, pair.annotations, pair.score_annotations, pair.match,
                 pair.unverified_alignment):
        if path is None:
            parts.append("-")
        elif path.is_file():
            stat = path.stat()
            parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        else:
            parts.append(f"{path}:missing")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def _read_cache(path: Path, pair: Pair) -> PairResult | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return PairResult(pair, data.get("score_ids"), data.get("perf_ids"), data.get("reason"), data.get("message", ""),
                      matched=data.get("matched"), markings=data.get("markings") or {})


def tokenize_corpus(
    pairs: Sequence[Pair],
    out_dir: Path,
    meta_dir: Path,
    *,
    workers: int | None = None,
    cache_dir: Path | None = None,
    progress: bool | None = None,
) -> CorpusReport:
    """Tokenize every pair; write ``{out}/{split}.{score,perf}``, the dictionary and a report.

    Line i of ``{split}.score`` pairs with line i of ``{split}.perf``; pairs keep the input order.
    """
    from ..tokens.tokenizer import build_tokenizer, save_tokenizer
    from .dictionary import write_token_dictionary

    started = time.perf_counter()
    for folder in (out_dir, meta_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".imf-write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise UserError(f"{folder}: cannot write there ({error.strerror or error})") from error
    tokenizer = build_tokenizer()
    tokenizer_path = meta_dir / "tokenizer.json"
    save_tokenizer(tokenizer, tokenizer_path)
    fingerprint = _tokenization_fingerprint(tokenizer_path)
    cache_dir = cache_dir or meta_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    results: list[PairResult | None] = [None] * len(pairs)
    todo: list[int] = []
    report = CorpusReport()
    for index, pair in enumerate(pairs):
        cached = _read_cache(cache_dir / f"{_cache_key(pair, fingerprint)}.json", pair)
        if cached is not None:
            results[index] = cached
            report.cached += 1
        else:
            todo.append(index)

    workers = max(1, workers or os.cpu_count() or 1)
    show = sys.stderr.isatty() if progress is None else progress
    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="tokenize", unit="pair", disable=not show)
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(tokenizer_path),)) as pool:
            futures = {pool.submit(_tokenize_one, pairs[i], _alignment_cache(pairs[i], cache_dir)): i for i in todo}
            for future in as_completed(futures):
                index = futures[future]
                result = future.result()
                results[index] = result
                record = {k: v for k, v in asdict(result).items() if k != "pair"}
                write_text_atomic(cache_dir / f"{_cache_key(pairs[index], fingerprint)}.json", json.dumps(record))
                bar.update()
        bar.close()

    _write_outputs([r for r in results if r is not None], out_dir, meta_dir, report)
    write_token_dictionary(len(tokenizer), meta_dir / "our_dict.txt")
    report.wall_seconds = round(time.perf_counter() - started, 2)
    write_text_atomic(meta_dir / "tokenize_report.json", json.dumps(asdict(report), indent=2))
    return report


def _write_outputs(results: Iterable[PairResult], out_dir: Path, meta_dir: Path, report: CorpusReport) -> None:
    lines: dict[str, tuple[list[str], list[str]]] = {split: ([], []) for split in SPLITS}
    skipped_rows = []
    score_lengths: dict[str, list[int]] = {s: [] for s in SPLITS}
    perf_lengths: dict[str, list[int]] = {s: [] for s in SPLITS}
    bar_counts: list[int] = []
    reasons: dict[str, Counter] = {s: Counter() for s in SPLITS}
    score_markings: dict[str, dict[str, dict[str, int]]] = {}
    for result in results:
        split = result.pair.split
        if result.matched is not None:
            report.auto_aligned[str(result.pair.performance)] = round(result.matched, 4)
        if not result.ok:
            reasons[split][result.reason or "unknown"] += 1
            skipped_rows.append((split, result.pair.score, result.pair.performance, result.reason, result.message))
            continue
        score_markings.setdefault(str(result.pair.score), result.markings)
        assert result.score_ids is not None and result.perf_ids is not None
        lines[split][0].append(" ".join(map(str, result.score_ids)))
        lines[split][1].append(" ".join(map(str, result.perf_ids)))
        score_lengths[split].append(len(result.score_ids))
        perf_lengths[split].append(len(result.perf_ids))
        bar_counts.append(result.perf_ids.count(BAR))
    for split, (score_lines, perf_lines) in lines.items():
        write_text_atomic(out_dir / f"{split}.score", "".join(f"{line}\n" for line in score_lines))
        write_text_atomic(out_dir / f"{split}.perf", "".join(f"{line}\n" for line in perf_lines))
        report.pairs[split] = len(score_lines)
        report.skipped[split] = dict(reasons[split])
    every_score = [n for lengths in score_lengths.values() for n in lengths]
    every_perf = [n for lengths in perf_lengths.values() for n in lengths]
    if every_score:
        report.tokens_per_score = {"mean": round(statistics.mean(every_score), 1), "max": max(every_score)}
        report.tokens_per_performance = {"mean": round(statistics.mean(every_perf), 1), "max": max(every_perf)}
        report.bars = {"mean": round(statistics.mean(bar_counts), 1), "max": max(bar_counts)}
    report.markings, report.marking_scores = _sum_markings(score_markings.values()), len(score_markings)
    with open(meta_dir / ".skipped.tsv.tmp", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["split", "score", "performance", "reason", "message"])
        writer.writerows(skipped_rows)
    os.replace(meta_dir / ".skipped.tsv.tmp", meta_dir / "skipped.tsv")


def _sum_markings(per_score: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Marking counts by type summed over scores (each score once, however many performances it has)."""
    total: dict[str, Counter] = {}
    for counts in per_score:
        for kind, numbers in counts.items():
            total.setdefault(kind, Counter()).update(numbers)
    return {kind: {"parsed": numbers["parsed"], "tokenized": numbers["tokenized"]}
            for kind, numbers in sorted(total.items())}
