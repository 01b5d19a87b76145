"""The DEADPAN baseline: the score played mechanically (constant tempo, constant velocity, no pedal).

It is the floor every rendering must beat: whatever a model gets right beyond it is expression. The tempo
is the score's first tempo marking, else 100 quarter notes per minute. The MIDI is written with its tempo
meta event equal to that tempo, so every score position lands on an exact tick and the mechanical timing
survives the MIDI round trip (no tick-rounding jitter that would fake a tempo curve). A key struck again
while it still sounds in another voice ends its earlier note there, as on a piano: MIDI cannot hold one key
twice, and a reader would otherwise lose one of the two notes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .features import DEFAULT_BPM, PerformanceData, ScoreInfo

DEADPAN_VELOCITY = 64
GRACE_QUARTERS = 0.125  # a grace note (zero score duration) is played as a 32nd note on the beat
PPQ = 480


def deadpan_tempo(score: ScoreInfo, bpm: float | None = None) -> float:
    """Quarter notes per minute of the deadpan: the given bpm, else the score's marking, else 100."""
    return float(bpm or score.bpm or DEFAULT_BPM)


def deadpan_note_array(score: ScoreInfo, bpm: float | None = None, velocity: int = DEADPAN_VELOCITY) -> np.ndarray:
    """Performance note array (onset_sec, duration_sec, pitch, velocity, track, channel, id) of the deadpan."""
    seconds_per_quarter = 60.0 / deadpan_tempo(score, bpm)
    sna = score.note_array
    onset_quarter = sna["onset_quarter"].astype(np.float64)
    onset_quarter = onset_quarter - min(0.0, float(onset_quarter.min()))  # an anacrusis may start below 0
    duration_quarter = _until_restruck(onset_quarter, np.maximum(sna["duration_quarter"].astype(np.float64),
                                                                 GRACE_QUARTERS), sna["pitch"])
    out = np.zeros(
        len(sna),
        dtype=[
            ("onset_sec", "f8"),
            ("duration_sec", "f8"),
            ("pitch", "i4"),
            ("velocity", "i4"),
            ("track", "i4"),
            ("channel", "i4"),
            ("id", "U256"),
        ],
    )
    out["onset_sec"] = onset_quarter * seconds_per_quarter
    out["duration_sec"] = duration_quarter * seconds_per_quarter
    out["pitch"] = sna["pitch"]
    out["velocity"] = int(velocity)
    out["id"] = [f"n{i}" for i in range(len(sna))]
    return out[np.lexsort((out["pitch"], out["onset_sec"]))]


def _until_restruck(onsets: np.ndarray, durations: np.ndarray, pitches: np.ndarray) -> np.ndarray:
    """Durations cut at the next later onset of the same pitch (unisons, at one onset, stay one MIDI note)."""
    out = durations.copy()
    for pitch in np.unique(pitches):
        rows = np.flatnonzero(pitches == pitch)
        starts = np.unique(onsets[rows])  # ascending
        later = np.searchsorted(starts, onsets[rows], side="right")
        has_next = later < len(starts)
        nxt = np.where(has_next, starts[np.minimum(later, len(starts) - 1)], np.inf)
        out[rows] = np.minimum(out[rows], nxt - onsets[rows])
    return out


def write_deadpan_midi(
    score: ScoreInfo, path: Path, bpm: float | None = None, velocity: int = DEADPAN_VELOCITY
) -> float:
    """Write the deadpan performance MIDI (via partitura) to ``path`` atomically; returns the tempo used."""
    import partitura as pt
    from partitura.performance import PerformedPart

    tempo = deadpan_tempo(score, bpm)
    performed = PerformedPart.from_note_array(deadpan_note_array(score, tempo, velocity))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        pt.save_performance_midi(performed, str(temporary), mpq=_mpq(tempo), ppq=PPQ)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return tempo


def _mpq(bpm: float) -> int:
    return int(round(60e6 / bpm))


def deadpan_alignment(score: ScoreInfo, performance: PerformanceData, bpm: float) -> list[dict]:
    """The deadpan's alignment, known by construction: each MIDI note is the score note at its pitch and tick.

    Notes are matched on (pitch, onset tick computed as the MIDI writer computes it), unisons in score order;
    MIDI notes the writer merged (two voices striking one key at once) leave their score note unmatched.
    """
    expected = deadpan_note_array(score, bpm)
    scale = 1e6 * PPQ / _mpq(bpm)  # seconds -> ticks, exactly as partitura's save_performance_midi rounds them
    rows: dict[tuple[int, int], list[int]] = {}
    for note in expected:
        key = (int(note["pitch"]), int(np.round(scale * float(note["onset_sec"]))))
        rows.setdefault(key, []).append(int(str(note["id"])[1:]))
    pna = performance.note_array
    if "onset_tick" in (pna.dtype.names or ()):
        ticks = pna["onset_tick"].astype(np.int64)
    else:
        ticks = np.round(scale * pna["onset_sec"].astype(np.float64)).astype(np.int64)
    alignment: list[dict] = []
    for note, tick in zip(pna, ticks, strict=True):
        candidates = rows.get((int(note["pitch"]), int(tick)))
        if candidates:
            row = candidates.pop(0)
            alignment.append(
                {"label": "match", "score_id": str(score.note_array["id"][row]), "performance_id": str(note["id"])}
            )
        else:
            alignment.append({"label": "insertion", "performance_id": str(note["id"])})
    for remaining in rows.values():
        alignment += [{"label": "deletion", "score_id": str(score.note_array["id"][row])} for row in remaining]
    return alignment
