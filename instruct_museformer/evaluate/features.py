"""Scores, performances, alignments and the per-performance features every metric is computed from.

Everything is indexed by *score* positions (note index in the unfolded score, onset in divs, beat, bar),
so a rendering and a human performance of the same score can be compared point by point whatever notes
either of them dropped or added. The score is always ``unfold_part_maximal(merge_parts(parts))``: that is
the note-id space of the (n)ASAP alignments (``n6-1``, ``n6-2`` for a repeated note).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import Curve, empty_curve, make_curve

DEFAULT_BPM = 100.0  # deadpan tempo when the score has no tempo marking (quarter notes per minute)


class EvaluationInputError(Exception):
    """A file of one piece cannot be used (missing, corrupt, alignment not matching): skipped, never fatal."""


@dataclass
class ScoreInfo:
    """What the metrics need of a score, as plain arrays (cheap to pickle to worker processes)."""

    path: str
    note_array: np.ndarray  # partitura note array of the unfolded score, grace notes included
    bar_starts: np.ndarray  # onset of every bar of the unfolded score, in quarter notes, ascending
    beat_starts: np.ndarray  # onset of every notated beat (time-signature denominator), in quarter notes
    bpm: float | None  # first tempo marking in quarter notes per minute, None if the score has none
    index_of: dict[str, int] = field(default_factory=dict)  # score note id -> row of note_array

    @property
    def n_notes(self) -> int:
        return len(self.note_array)

    def unison_groups(self) -> np.ndarray:
        """Row -> one index per distinct (onset, pitch): two voices sharing a note are one key on a piano, and a
        MIDI file (a deadpan, a rendering, a pianist) can hold it only once."""
        if not len(self.note_array):
            return np.zeros(0, dtype=np.int64)
        keys = np.stack([self.note_array["onset_div"].astype(np.int64), self.note_array["pitch"].astype(np.int64)], 1)
        return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)


@dataclass
class PerformanceData:
    path: str
    note_array: np.ndarray  # onset_sec, duration_sec, pitch, velocity, id
    pedal_times: np.ndarray  # CC64 event times, seconds, ascending
    pedal_values: np.ndarray  # CC64 values at those times


@dataclass
class Features:
    """Per-performance features on score positions, plus raw samples for the distribution metrics."""

    # tempo is always log seconds per QUARTER note, so a time-signature change (4/4 -> 2/2) is no tempo step
    tempo_onset: Curve  # key: score onset (divs); to the next score onset (partitura codec, tempo_by_average)
    tempo_beat: Curve  # key: notated-beat index; from beat b to beat b+1
    tempo_bar: Curve  # key: bar index; over the bar
    velocity: Curve  # key: score note index; MIDI velocity
    articulation: Curve  # key: score note index; log2(performed duration / (score duration * local tempo))
    asynchrony: Curve  # key: score note index; onset minus the mean onset of its chord, seconds
    samples: dict[str, np.ndarray]  # velocity, ioi, duration, pedal: raw values of the whole performance
    score_notes: int
    matched: int  # score notes found in the performance
    added: int  # performance notes matched to no score note
    distinct_notes: int  # score notes with unisons counted once (one per onset and pitch)
    distinct_matched: int  # of those, found in the performance (any of the unison's notes matched)

    @property
    def coverage(self) -> float:
        return self.matched / self.score_notes if self.score_notes else 0.0

    @property
    def coverage_unisons_once(self) -> float:
        return self.distinct_matched / self.distinct_notes if self.distinct_notes else 0.0


# ------------------------------------------------------------------------------------------------ loading


@contextmanager
def _quiet() -> Iterator[None]:
    """partitura warns about every odd MusicXML reference; in a corpus run that is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def load_score(path: Path) -> ScoreInfo:
    """Load a MusicXML/MEI/kern/MIDI score, merge its parts and unfold every repeat (the (n)ASAP id space)."""
    import partitura as pt

    if not path.is_file():
        raise EvaluationInputError(f"{path}: score not found")
    try:
        with _quiet():
            score = pt.load_score(str(path))
            part = pt.score.unfold_part_maximal(pt.score.merge_parts(score.parts))
            note_array = part.note_array(include_grace_notes=True)
            if len(note_array) == 0:
                raise EvaluationInputError(f"{path}: score has no notes")
            measures = list(part.iter_all(pt.score.Measure))
            starts = np.array(sorted({m.start.t for m in measures}), dtype=np.float64)
            bar_starts = np.asarray(part.quarter_map(starts), dtype=np.float64) if len(starts) else np.zeros(0)
            beats = note_array["onset_beat"]
            beat_grid = np.arange(np.floor(beats.min()), np.ceil((beats + note_array["duration_beat"]).max()) + 1)
            beat_starts = np.asarray(part.quarter_map(part.inv_beat_map(beat_grid)), dtype=np.float64)
            tempos = sorted(part.iter_all(pt.score.Tempo), key=lambda t: t.start.t)
        bpm = None
        for tempo in tempos:
            try:
                bpm = 60e6 / float(tempo.microseconds_per_quarter)
                break
            except (TypeError, ValueError, ZeroDivisionError, AttributeError):
                continue
    except EvaluationInputError:
        raise
    except Exception as error:  # any parser failure is a property of the file, not a bug of ours
        raise EvaluationInputError(f"{path}: cannot read score ({type(error).__name__}: {error})") from error
    if bpm is not None and not 10.0 <= bpm <= 400.0:
        bpm = None
    ids = [str(i) for i in note_array["id"]]
    index_of = {note_id: i for i, note_id in enumerate(ids)}
    return ScoreInfo(str(path), note_array, bar_starts, np.unique(beat_starts), bpm, index_of)


def load_performance(path: Path) -> PerformanceData:
    """Load a performance MIDI (notes and sustain pedal) with partitura."""
    import partitura as pt

    if not path.is_file():
        raise EvaluationInputError(f"{path}: performance MIDI not found")
    try:
        with _quiet():
            performance = pt.load_performance_midi(str(path))
            note_array = performance.note_array()
        controls = [c for pp in performance.performedparts for c in pp.controls if c.get("number") == 64]
    except Exception as error:
        raise EvaluationInputError(f"{path}: cannot read MIDI ({type(error).__name__}: {error})") from error
    if len(note_array) == 0:
        raise EvaluationInputError(f"{path}: MIDI file has no notes")
    controls.sort(key=lambda c: c["time"])
    return PerformanceData(
        str(path),
        note_array,
        np.array([c["time"] for c in controls], dtype=np.float64),
        np.array([c["value"] for c in controls], dtype=np.float64),
    )


def read_alignment(path: Path) -> list[dict]:
    """An (n)ASAP ``note_alignment.tsv`` as partitura alignment dicts (match / insertion / deletion)."""
    import partitura as pt

    if not path.is_file():
        raise EvaluationInputError(f"{path}: note alignment not found")
    try:
        alignment = pt.io.importparangonada.load_alignment_from_ASAP(str(path))
    except Exception as error:
        raise EvaluationInputError(f"{path}: cannot read note alignment ({type(error).__name__}: {error})") from error
    if not any(a.get("label") == "match" for a in alignment):
        raise EvaluationInputError(f"{path}: note alignment has no matched notes")
    return alignment


def align(score: ScoreInfo, performance: PerformanceData) -> list[dict]:
    """Score-to-performance note alignment with parangonar's DualDTWNoteMatcher (its default, SOTA matcher);
    the same matcher ``imf tokenize`` aligns pairs without an alignment with (``tokens.autoalign``)."""
    from ..tokens.autoalign import match_notes

    try:
        return match_notes(score.note_array, performance.note_array)
    except Exception as error:
        raise EvaluationInputError(
            f"{performance.path}: alignment to {score.path} failed ({type(error).__name__}: {error})"
        ) from error


# ------------------------------------------------------------------------------------------------ features


def _matched_pairs(score: ScoreInfo, performance: PerformanceData, alignment: list[dict]) -> tuple[np.ndarray, ...]:
    perf_index = {str(note_id): i for i, note_id in enumerate(performance.note_array["id"])}
    score_rows, perf_rows, used_perf = [], [], set()
    matches = unknown = 0
    for entry in alignment:
        if entry.get("label") != "match":
            continue
        matches += 1
        s = score.index_of.get(str(entry.get("score_id")))
        p = perf_index.get(str(entry.get("performance_id")))
        if s is None or p is None or p in used_perf:
            unknown += 1
            continue
        used_perf.add(p)
        score_rows.append(s)
        perf_rows.append(p)
    if matches and unknown > matches / 2:
        raise EvaluationInputError(
            f"{performance.path}: {unknown} of {matches} aligned notes are not in the score or the MIDI "
            f"(alignment made for another score version?)"
        )
    s_idx = np.array(score_rows, dtype=np.int64)
    p_idx = np.array(perf_rows, dtype=np.int64)
    # one performance note per score note (the first match wins)
    _, first = np.unique(s_idx, return_index=True)
    first.sort()
    return s_idx[first], p_idx[first]


def _pedal_at(performance: PerformanceData, times: np.ndarray) -> np.ndarray:
    if len(performance.pedal_times) == 0:
        return np.zeros(len(times))
    index = np.searchsorted(performance.pedal_times, times, side="right") - 1
    return np.where(index >= 0, performance.pedal_values[np.clip(index, 0, None)], 0.0)


def performance_samples(performance: PerformanceData) -> dict[str, np.ndarray]:
    """Raw values for the distribution metrics: they need no score and no alignment."""
    na = performance.note_array
    onsets = np.sort(na["onset_sec"].astype(np.float64))
    return {
        "velocity": na["velocity"].astype(np.float64),
        "ioi": np.diff(onsets),
        "duration": na["duration_sec"].astype(np.float64),
        "pedal": _pedal_at(performance, na["onset_sec"].astype(np.float64)),
    }


def extract_features(score: ScoreInfo, performance: PerformanceData, alignment: list[dict]) -> Features:
    """Tempo, velocity, articulation and asynchrony curves on score positions, plus coverage counts."""
    from partitura.musicanalysis.performance_codec import encode_tempo, monotonize_times

    sna, pna = score.note_array, performance.note_array
    s_idx, p_idx = _matched_pairs(score, performance, alignment)
    samples = performance_samples(performance)
    velocity = make_curve(s_idx, pna["velocity"][p_idx])
    tempo_onset = tempo_beat = tempo_bar = articulation = asynchrony = empty_curve()

    # timing uses real (non-grace, non-zero-length) notes only: grace notes have no metrical position of their own
    timing = sna["duration_beat"][s_idx] > 0
    if "is_grace" in sna.dtype.names:
        timing &= sna["is_grace"][s_idx] == 0
    ts, tp = s_idx[timing], p_idx[timing]
    s_on = sna["onset_quarter"][ts].astype(np.float64)
    divs = sna["onset_div"][ts].astype(np.int64)
    p_on = pna["onset_sec"][tp].astype(np.float64)
    if len(np.unique(divs)) >= 3:
        with _quiet():
            params, groups = encode_tempo(
                score_onsets=s_on,
                performed_onsets=p_on,
                score_durations=sna["duration_quarter"][ts].astype(np.float64),
                performed_durations=pna["duration_sec"][tp].astype(np.float64),
                return_u_onset_idx=True,
            )
        # onset level: partitura's beat period at each unique score onset (the last one is extrapolated: dropped)
        firsts = np.array([g[0] for g in groups[:-1]], dtype=np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            tempo_onset = make_curve(divs[firsts], np.log(params["beat_period"][firsts].astype(np.float64)))
        articulation = make_curve(ts, params["articulation_log"].astype(np.float64))

        # one performed time per unique score onset (median: robust to a stray match), made monotonic
        order = np.argsort(divs, kind="stable")
        _, start = np.unique(divs[order], return_index=True)
        bounds = np.append(start, len(order))
        u_quarters = np.array([s_on[order[a]] for a in start])
        u_times = np.array([np.median(p_on[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        if len(u_quarters) >= 3:
            mono_times, mono_quarters = monotonize_times(u_times, x=u_quarters)
            for grid, name in ((score.beat_starts, "beat"), (score.bar_starts, "bar")):
                inside = np.flatnonzero((grid >= u_quarters[0]) & (grid <= u_quarters[-1]))
                curve = _interval_curve(mono_quarters, mono_times, grid[inside], inside)
                if name == "beat":
                    tempo_beat = curve
                else:
                    tempo_bar = curve

        # asynchrony: each chord note's onset relative to its chord's mean onset
        keys, values = [], []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if b - a >= 2:
                rows = order[a:b]
                keys.append(ts[rows])
                values.append(p_on[rows] - p_on[rows].mean())
        if keys:
            asynchrony = make_curve(np.concatenate(keys), np.concatenate(values))

    matched_perf = np.zeros(len(pna), dtype=bool)
    matched_perf[p_idx] = True
    unison = score.unison_groups()
    return Features(
        tempo_onset=tempo_onset,
        tempo_beat=tempo_beat,
        tempo_bar=tempo_bar,
        velocity=velocity,
        articulation=articulation,
        asynchrony=asynchrony,
        samples=samples,
        score_notes=score.n_notes,
        matched=len(s_idx),
        added=int((~matched_perf).sum()),
        distinct_notes=int(unison.max()) + 1 if len(unison) else 0,
        distinct_matched=len(np.unique(unison[s_idx])),
    )


def _interval_curve(quarters: np.ndarray, times: np.ndarray, grid: np.ndarray, keys: np.ndarray) -> Curve:
    """log(seconds per quarter) between consecutive grid points (keyed by the first), times interpolated."""
    if len(grid) < 2:
        return empty_curve()
    at = np.interp(grid, quarters, times)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.log(np.diff(at) / np.diff(grid))
    return make_curve(np.asarray(keys[:-1], dtype=np.int64), values)
