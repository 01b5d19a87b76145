"""Several sampled renderings of one score -> one performance: per score note, the mean over the samples.

One sample is one draw from the model's distribution over performances; what a listener (and ``imf evaluate``)
compares with a pianist is its shape -- where the music slows, which notes are louder -- and a single draw
carries that shape under sampling noise of the same size. The note-wise mean of K draws estimates the
model's expected performance (the choice that minimises squared error): onset times, durations and
velocities are averaged per note, which keeps what the draws agree on and cancels what they do not.

Averaging also narrows the velocity range by about sqrt(K) where the draws disagree, which would make the
performance flatter than any pianist's; ``spread`` (default on) rescales each note's velocity deviation from
the piece's mean so the merged performance has the mean spread of its draws: the shape of the mean, the
dynamic range of a single performance.

Notes are matched across draws by (bar, pitch, occurrence in the bar): under score-constrained rendering
performance bar k plays exactly score bar k's notes, so every draw has the same keys. The sustain pedal is
not averaged (on/off events do not average): it is taken from the draw closest to the mean timing, its
times carried onto the merged timeline through the notes' onsets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from symusic import Note, Pedal, Score, Tempo, Track

from ..tokens.remi import add_sustain_controls, decode_ids_in_order, one_key_one_note
from ..tokens.tokenizer import Vocab

NoteKey = tuple[int, int, int]  # (bar, pitch, occurrence of that pitch in the bar)


@dataclass
class PlayedNotes:
    """One rendering's notes in seconds, keyed so that draws of the same score line up."""

    keys: list[NoteKey]
    onset: np.ndarray  # (notes,) seconds
    duration: np.ndarray  # (notes,) seconds
    velocity: np.ndarray  # (notes,)
    pedals: list[tuple[float, float]]  # (start, duration) seconds


def note_keys(bars: Sequence[int], pitches: Sequence[int]) -> list[NoteKey]:
    """The key of every note, given the bar and pitch of each in token order."""
    seen: dict[tuple[int, int], int] = defaultdict(int)
    keys = []
    for bar, pitch in zip(bars, pitches, strict=True):
        keys.append((bar, pitch, seen[(bar, pitch)]))
        seen[(bar, pitch)] += 1
    return keys


def keyed_notes(ids: Sequence[int], vocab: Vocab) -> tuple[Score, list[NoteKey]]:
    """The decoded tokens (ticks, notes in token order) and the key of each note."""
    score, bars = decode_ids_in_order(ids, vocab)
    return score, note_keys(bars, [n.pitch for n in score.tracks[0].notes])


def played_notes(ids: Sequence[int], vocab: Vocab) -> PlayedNotes:
    ticks, keys = keyed_notes(ids, vocab)
    score = ticks.to("second")  # element by element: the notes stay in token order
    notes, pedals = score.tracks[0].notes, [(p.time, p.duration) for p in score.tracks[0].pedals]
    return PlayedNotes(
        keys,
        np.array([n.time for n in notes], dtype=np.float64),
        np.array([n.duration for n in notes], dtype=np.float64),
        np.array([n.velocity for n in notes], dtype=np.float64),
        pedals,
    )


@dataclass
class Merged:
    score: Score  # seconds
    nearest: int  # the draw closest to the mean timing (its pedal is used)
    keys: list[NoteKey]
    onset: np.ndarray  # (notes,) merged onset of each key, seconds


def onset_tempo(score_ids: Sequence[int], vocab: Vocab, keys: Sequence[NoteKey], onset: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, qpm) of a performance given per note: the tempo between successive score onsets on a quarter,
    from when the performance plays them (a merged performance has no tempo map of its own)."""
    score, score_keys = keyed_notes(score_ids, vocab)
    quarter = {k: n.time / score.ticks_per_quarter for k, n in zip(score_keys, score.tracks[0].notes, strict=True)}
    by_onset: dict[float, list[float]] = defaultdict(list)
    for k, t in zip(keys, onset, strict=True):
        if k in quarter:
            by_onset[quarter[k]].append(float(t))
    qs = np.array(sorted(by_onset))
    on_beat = np.abs(qs - np.round(qs)) < 1e-6  # onsets on a quarter: a beat-level curve, not note-to-note jitter
    if on_beat.sum() >= 2:
        qs = qs[on_beat]
    ts = np.array([np.mean(by_onset[q]) for q in qs])
    if len(qs) < 2:
        return np.zeros(0), np.zeros(0)
    dt = np.diff(ts)
    ok = dt > 1e-3
    return ts[:-1][ok], 60.0 * np.diff(qs)[ok] / dt[ok]


def merge_renderings(renderings: Sequence[Sequence[int]], vocab: Vocab, spread: bool = True) -> Merged:
    """K performance token sequences of one score -> one performance (a ``symusic`` Score in seconds)."""
    draws = [played_notes(ids, vocab) for ids in renderings]
    keys = sorted({k for d in draws for k in d.keys}, key=lambda k: (k[0], k[2], k[1]))
    index = {k: i for i, k in enumerate(keys)}
    onset = np.full((len(draws), len(keys)), np.nan)
    duration, velocity = onset.copy(), onset.copy()
    for d, draw in enumerate(draws):
        cols = [index[k] for k in draw.keys]
        onset[d, cols], duration[d, cols], velocity[d, cols] = draw.onset, draw.duration, draw.velocity
    mean_onset = np.nanmean(onset, axis=0)
    mean_duration = np.nanmean(duration, axis=0)
    mean_velocity = np.nanmean(velocity, axis=0)
    if spread and len(draws) > 1 and len(keys) > 1:
        mean_velocity = _restore_spread(mean_velocity, velocity)
    medoid = int(np.argmin(np.nanmean((onset - mean_onset) ** 2, axis=1)))
    warp = _timeline_warp(onset[medoid], mean_onset)

    track = Track(name="Piano", program=0, is_drum=False, ttype="second")
    for k, t, dur, vel in zip(keys, mean_onset, mean_duration, mean_velocity, strict=True):
        track.notes.append(Note(float(t), float(max(dur, 1e-3)), k[1], int(np.clip(round(vel), 1, 127)),
                                ttype="second"))
    for start, length in draws[medoid].pedals:
        begin, end = warp(start), warp(start + length)
        if end > begin:
            track.pedals.append(Pedal(float(begin), float(end - begin), ttype="second"))
    track.notes = one_key_one_note(list(track.notes))
    add_sustain_controls(track)  # what a MIDI file keeps of the pedal
    out = Score(vocab.ticks_per_quarter, ttype="second")
    out.tempos.append(Tempo(0.0, 120.0, ttype="second"))
    out.tracks.append(track)
    return Merged(out, medoid, keys, mean_onset)


def _restore_spread(mean: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The mean's deviations from the piece's mean velocity, scaled to the draws' own mean spread."""
    centre = float(np.nanmean(mean))
    spread_mean = float(np.nanstd(mean))
    spread_draws = float(np.nanmean(np.nanstd(draws, axis=1)))
    if spread_mean < 1e-6:
        return mean
    return centre + (mean - centre) * (spread_draws / spread_mean)


def _timeline_warp(source: np.ndarray, target: np.ndarray):
    """Seconds of one draw -> seconds of the merged performance, piecewise linear through the note onsets."""
    ok = ~np.isnan(source)
    src, dst = source[ok], target[ok]
    order = np.argsort(src, kind="stable")
    src, dst = src[order], np.maximum.accumulate(dst[order])
    if len(src) < 2:
        return lambda t: t
    src, first = np.unique(src, return_index=True)
    dst = dst[first]

    def warp(t: float) -> float:
        if t <= src[0]:
            return float(dst[0] + (t - src[0]))
        if t >= src[-1]:
            return float(dst[-1] + (t - src[-1]))
        return float(np.interp(t, src, dst))

    return warp
