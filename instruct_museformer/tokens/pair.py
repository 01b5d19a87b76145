"""Score + performance + alignment -> bar-aligned token ids for both sides, and round-trip measuring.

Both sides are encoded on one :class:`~.grid.BarGrid` built from the score's unfolded measures, so
performance bar k is the performance of score bar k and both sequences have the same number of Bar
tokens (id 4), each sequence ending with one.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import miditok
import numpy as np

from . import specials
from .alignment import anchors_from_annotations, anchors_from_match, anchors_from_note_alignment
from .errors import TokenizationError
from .performance import (
    PerformanceData,
    decode_performance,
    encode_performance,
    fit_tempo,
    load_performance,
    pedal_from_first_note,
)
from .score import MIDI_SUFFIXES, ScoreData, encode_score, load_score, read_beat_annotations, score_grid
from .tokenizer import Vocab
from .trust import check_alignment
from .unfolding import unfolding_for

__all__ = ["PairTokens", "TokenizationError", "roundtrip_errors", "tokenize_pair"]

MIN_BAR_AGREEMENT = 0.9  # below this share of anchors in their own score bar, the pair is refused


@dataclass
class PairTokens:
    """Token ids of both sides plus what round-trip measuring needs.

    ``origin`` is the performance time (s) of the start of bar 1: decoded times are relative to it.
    ``aligned`` marks the performance notes (``perf.onset`` order) whose onset is an alignment anchor.
    ``info``: ``tempo_beats`` (tempo segments), ``anchors`` (alignment anchors used) and
    ``bar_agreement`` (share of anchors whose performance bar is their score bar), ``markings`` (per marking
    type of the score: ``parsed`` by partitura and ``tokenized``).
    """

    score_ids: list[int]
    perf_ids: list[int]
    num_bars: int
    perf: PerformanceData
    origin: float
    aligned: np.ndarray
    seconds: float = 0.0
    source: str = ""
    info: dict = field(default_factory=dict)


def tokenize_pair(
    score: Path,
    performance: Path,
    tokenizer: miditok.REMI,
    *,
    alignment: Path | None = None,
    annotations: Path | None = None,
    score_annotations: Path | None = None,
    match: Path | None = None,
    unverified_alignment: Path | None = None,
) -> PairTokens:
    """Tokenize one pair; the first alignment source given wins (note alignment, match, annotations).

    ``unverified_alignment``: a note alignment nobody vouched for ((n)ASAP's non-robust ones, parangonar's),
    used where the sources before it are not given or fail with "bar mismatch" / "no alignment", and kept
    only if it passes the checks of :mod:`.trust`.

    Raises TokenizationError with reason "missing file", "parse error", "no alignment", "bar mismatch" or
    "alignment below threshold", naming the file.
    """
    started = time.perf_counter()
    score, performance = Path(score), Path(performance)
    if alignment is None and match is None and annotations is None and unverified_alignment is None:
        raise TokenizationError("no alignment", f"{performance}: no alignment, match file or beat annotations given")
    midi_score = score.suffix.lower() in MIDI_SUFFIXES
    data = load_score(score, score_annotations if midi_score else None)
    perf = load_performance(performance)
    vocab = Vocab(tokenizer)
    if alignment is None and match is None and annotations is None:
        pair = _tokenize_unverified(score, data, perf, vocab, Path(unverified_alignment), None)
    else:
        try:
            anchors = _anchors(score, data, alignment, match, annotations, score_annotations)
            pair = _tokenize_on_anchors(perf, vocab, anchors)
        except TokenizationError as error:
            if unverified_alignment is None or error.reason not in FALLBACK_REASONS:
                raise
            pair = _fallback(score, data, perf, vocab, Path(unverified_alignment), annotations, error)
    pair.seconds = time.perf_counter() - started
    return pair


FALLBACK_REASONS = ("bar mismatch", "no alignment")  # where an unverified note alignment may step in


@dataclass
class _Anchors:
    """The score (unfolded as the alignment needs) and the (quarter, second) anchors linking it to the
    performance; ``name`` is the alignment file, named in errors."""

    data: ScoreData
    q: np.ndarray
    s: np.ndarray
    source: str
    name: Path


def _anchors(score: Path, data: ScoreData, alignment: Path | None, match: Path | None,
             annotations: Path | None, score_annotations: Path | None) -> _Anchors:
    """Anchors from the first source given: note alignment, match file, beat annotations (``data``: the
    score, maximally unfolded)."""
    midi_score = score.suffix.lower() in MIDI_SUFFIXES
    if alignment is not None:
        return _note_alignment_anchors(score, data, Path(alignment))
    if match is not None:
        q, s = anchors_from_match(Path(match), data)
        return _Anchors(data, q, s, "match", Path(match))
    assert annotations is not None
    q, s = anchors_from_annotations(
        Path(annotations), data, score_annotations if midi_score else None, score if midi_score else None
    )
    return _Anchors(data, q, s, "annotations", Path(annotations))


def _note_alignment_anchors(score: Path, data: ScoreData, alignment: Path) -> _Anchors:
    """Anchors of a note alignment, against the unfolding of the score its note ids refer to."""
    if score.suffix.lower() not in MIDI_SUFFIXES:
        labels = unfolding_for(score, data.ids, alignment)
        if labels is not None:
            data = load_score(score, unfolding=labels)
    q, s = anchors_from_note_alignment(alignment, data)
    return _Anchors(data, q, s, "note_alignment", alignment)


def _tokenize_unverified(score: Path, data: ScoreData, perf: PerformanceData, vocab: Vocab, alignment: Path,
                         annotations: Path | None) -> PairTokens:
    """A pair through an alignment nobody vouched for: checked (:mod:`.trust`, against the beat annotations
    too where they are given) before it is used."""
    anchors = _note_alignment_anchors(score, data, alignment)
    downbeats = None
    if annotations is not None:
        downbeats = np.array([t for t, label in read_beat_annotations(Path(annotations)) if label.startswith("db")])
    check_alignment(score_grid(anchors.data, vocab), anchors.data, anchors.q, anchors.s, perf.onset, str(alignment),
                    downbeats)
    return _tokenize_on_anchors(perf, vocab, anchors)


def _fallback(score: Path, data: ScoreData, perf: PerformanceData, vocab: Vocab, alignment: Path,
              annotations: Path | None, refused: TokenizationError) -> PairTokens:
    """The unverified alignment where the first source refused the pair; if it fails too, the first
    refusal stands, with why the alignment could not replace it."""
    try:
        return _tokenize_unverified(score, data, perf, vocab, alignment, annotations)
    except TokenizationError as error:
        raise TokenizationError(refused.reason, f"{refused}; unverified note alignment: {error}") from None


def _tokenize_on_anchors(perf: PerformanceData, vocab: Vocab, anchors: _Anchors) -> PairTokens:
    """Both sides on the score's bar grid, the performance through the tempo map fitted to the anchors."""
    data, anchor_q, anchor_s, source = anchors.data, anchors.q, anchors.s, anchors.source
    grid = score_grid(data, vocab)
    perf = pedal_from_first_note(perf)
    events = np.concatenate([perf.onset, perf.pedal_on, perf.pedal_off])
    try:
        fit = fit_tempo(grid, anchor_q, anchor_s, float(events.min()), float(events.max()))
    except ValueError as error:
        raise TokenizationError("no alignment", f"{anchors.name}: {error}") from None
    tokenized: Counter = Counter()
    score_ids = encode_score(data, grid, tokenized)
    perf_ids = encode_performance(perf, grid, fit)
    n_score, n_perf = score_ids.count(specials.BAR), perf_ids.count(specials.BAR)
    if n_score != n_perf or n_score != grid.num_bars:  # cannot happen by construction; guard the invariant
        raise TokenizationError("bar mismatch", f"{perf.path}: {n_perf} performance bars vs {n_score} score bars")
    # How often an aligned note lands in the same bar on both sides (1.0 = perfect bar alignment; notes
    # played across a bar line, e.g. an early bass under a downbeat, count as disagreements).
    score_bar, _ = grid.snap(grid.quarter_to_tick(anchor_q))
    perf_bar, _ = grid.snap(fit.seconds_to_ticks(anchor_s))
    bar_agreement = float(np.mean(score_bar == perf_bar))
    if bar_agreement < MIN_BAR_AGREEMENT:
        # A corrupt alignment (e.g. a run of beat annotations 4 ms apart) or a tempo beyond the tempo
        # range: the time round trip would still be exact, but bar k would not be score bar k.
        raise TokenizationError(
            "bar mismatch",
            f"{anchors.name}: only {100 * bar_agreement:.1f}% of the aligned notes/beats "
            f"fall in their score bar (corrupt alignment?)",
        )
    anchor_times = np.sort(anchor_s)
    nearest = np.clip(np.searchsorted(anchor_times, perf.onset), 1, len(anchor_times) - 1)
    gap = np.minimum(np.abs(perf.onset - anchor_times[nearest - 1]), np.abs(perf.onset - anchor_times[nearest]))
    aligned = gap < 1e-4 if source != "annotations" else np.ones(len(perf.onset), dtype=bool)
    return PairTokens(score_ids, perf_ids, grid.num_bars, perf, fit.origin, aligned, 0.0, source,
                      {"tempo_beats": len(fit.tempo_index), "anchors": len(anchor_q),
                       "bar_agreement": bar_agreement, "markings": _marking_counts(data, tokenized, vocab)})


def _marking_counts(data: ScoreData, tokenized: Counter, vocab: Vocab) -> dict[str, dict[str, int]]:
    """Markings of the score by type: as partitura parsed them and as tokens (empty for a MIDI score)."""
    if data.markings is None:
        return {}
    parsed = data.markings.parsed
    return {kind: {"parsed": int(parsed[kind]), "tokenized": int(tokenized[kind]) if vocab.score_markings else 0}
            for kind in sorted(set(parsed) | set(tokenized))}


def _pair_by_pitch(orig_t: np.ndarray, orig_p: np.ndarray, dec_t: np.ndarray, dec_p: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (original, decoded): per pitch, the k-th onset with the k-th onset."""
    oi, di = [], []
    for pitch in np.unique(orig_p):
        o = np.flatnonzero(orig_p == pitch)
        d = np.flatnonzero(dec_p == pitch)
        o = o[np.argsort(orig_t[o], kind="stable")]
        d = d[np.argsort(dec_t[d], kind="stable")]
        n = min(len(o), len(d))
        oi.append(o[:n])
        di.append(d[:n])
    if not oi:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(oi), np.concatenate(di)


def _stats(errors_s: np.ndarray) -> dict:
    if len(errors_s) == 0:
        return {"median_ms": None, "p95_ms": None, "max_ms": None, "n": 0}
    ms = np.abs(errors_s) * 1000.0
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max()), "n": int(len(ms))}


def _nearest_errors(orig: np.ndarray, dec: np.ndarray) -> np.ndarray:
    if len(orig) == 0:
        return np.zeros(0)
    if len(dec) == 0:
        return np.full(len(orig), np.inf)
    dec = np.sort(dec)
    k = np.clip(np.searchsorted(dec, orig), 1, max(len(dec) - 1, 1))
    left = np.abs(orig - dec[np.maximum(k - 1, 0)])
    right = np.abs(orig - dec[np.minimum(k, len(dec) - 1)])
    return np.minimum(left, right)


def roundtrip_errors(pair: PairTokens, tokenizer: miditok.REMI) -> dict:
    """Performance MIDI -> tokens -> MIDI errors: onsets (all and aligned notes), velocity, pedal.

    Decoded times are compared with the original ones relative to the start of bar 1
    (``pair.origin``). The velocity step is the spacing of the vocabulary's velocity bins.
    """
    vocab = Vocab(tokenizer)
    decoded = decode_performance(pair.perf_ids, tokenizer).to("second")
    notes = [n for track in decoded.tracks for n in track.notes]
    dec_t = np.array([n.time for n in notes], dtype=np.float64)
    dec_p = np.array([n.pitch for n in notes], dtype=np.int64)
    dec_v = np.array([n.velocity for n in notes], dtype=np.int64)
    perf = pair.perf
    in_range = np.isin(perf.pitch, [int(t.split("_")[1]) for t in vocab.ids if t.startswith("Pitch_")])
    orig_t = perf.onset - pair.origin
    oi, di = _pair_by_pitch(orig_t[in_range], perf.pitch[in_range], dec_t, dec_p)
    idx = np.flatnonzero(in_range)[oi]
    onset_err = dec_t[di] - orig_t[idx]
    aligned = pair.aligned[idx]
    vel_err = np.abs(dec_v[di] - perf.velocity[idx])
    step = float(np.diff(vocab.velocities).max())
    pedals = [p for track in decoded.tracks for p in track.pedals]
    dec_on = np.array([p.time for p in pedals])
    dec_off = np.array([p.time + p.duration for p in pedals])
    pedal_err = np.concatenate([_nearest_errors(perf.pedal_on - pair.origin, dec_on),
                                _nearest_errors(perf.pedal_off - pair.origin, dec_off)])
    return {
        "notes": int(in_range.sum()),
        "notes_decoded": len(notes),
        "onset_all": _stats(onset_err),
        "onset_aligned": _stats(onset_err[aligned]),
        "velocity": {"max_error": int(vel_err.max()) if len(vel_err) else None, "step": step,
                     "within_step": float(np.mean(vel_err <= step)) if len(vel_err) else None},
        "pedal": _stats(pedal_err),
        "pedal_changes": int(len(perf.pedal_on) + len(perf.pedal_off)),
        "bars": pair.num_bars,
        "bar_agreement": pair.info.get("bar_agreement"),
        "score_tokens": len(pair.score_ids),
        "perf_tokens": len(pair.perf_ids),
    }
