"""Writing and reading our REMI token sequences (Bar *closes* each bar) on a :class:`BarGrid`.

Layout of one bar, in the order the writer emits it::

    TimeSig_n/d  { Position_p [Tempo_t] [PedalOff_0] [Pedal_0] (Pitch_x Velocity_v Duration_d)* }*  Bar_None

A score written with the ``score_markings`` vocabulary (docs/tokens.md) adds direction tokens after a
position's Tempo, attribute tokens after a note's Duration, and ``Staff_k`` before the notes of staff k > 1::

    Position_p [Tempo_t] Direction* (Pitch Velocity Duration Attribute*)* {Staff_k (Pitch ...)*}*

This is MidiTok REMI's grammar with the bar's leading ``Bar_None`` moved to its end (Museformer's
``b-1``); :func:`to_remi_order` undoes the rotation for MidiTok's own decoder. The reader
(:func:`decode_ids`) is our own because it has to accept anything a model may emit: it never raises on
a token sequence, skips what it cannot place and fills missing velocities/durations with defaults.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from symusic import ControlChange, Note, Pedal, Score, Tempo, TimeSignature, Track

from . import specials
from .grid import BarGrid
from .markings import MARKING_KINDS
from .tokenizer import Vocab

DEFAULT_TEMPO = 120.0
DEFAULT_VELOCITY = 64
SUSTAIN_CC = 64


@dataclass
class _BarContent:
    tempo: dict[int, int] = field(default_factory=dict)  # position -> Tempo id
    pedals: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    directions: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    # (staff, pitch, Velocity id, Duration id, attribute ids); staff 1 and no attributes: the plain REMI note
    notes: dict[int, list[tuple[int, int, int, int, tuple[int, ...]]]] = field(
        default_factory=lambda: defaultdict(list))


class BarWriter:
    """Collects events by (bar, position) and writes the token ids of the whole grid."""

    def __init__(self, grid: BarGrid) -> None:
        self.grid = grid
        self.vocab = grid.vocab
        self.bars = [_BarContent() for _ in range(grid.num_bars)]

    def add_tempo(self, bar: int, pos: int, qpm_index: int) -> None:
        self.bars[bar].tempo[pos] = self.vocab.tempo_ids[qpm_index]

    def add_pedal(self, bar: int, pos: int, down: bool, order: float) -> None:
        token = "Pedal_0" if down else "PedalOff_0"
        self.bars[bar].pedals[pos].append((order, self.vocab.ids[token]))

    def add_direction(self, bar: int, pos: int, token_id: int) -> None:
        """A score marking at a position (written once however often it is added)."""
        self.bars[bar].directions[pos].add(token_id)

    def add_note(self, bar: int, pos: int, pitch: int, velocity: int, duration_ticks: float, staff: int = 1,
                 attributes: tuple[int, ...] = ()) -> bool:
        """Velocity in MIDI units and duration in ticks; both are snapped to the nearest token.

        ``staff`` > 1 and ``attributes`` (marking token ids) exist only in score_markings vocabularies.
        Returns False for a pitch outside the vocabulary's piano range (the note is not written).
        """
        v = self.vocab
        if f"Pitch_{int(pitch)}" not in v.ids:  # outside the piano range of the vocabulary
            return False
        vel_index = int(np.abs(v.velocities - velocity).argmin())
        durations, dur_ids = v.durations(self.grid.bars[bar].denominator)
        dur_index = int(np.abs(durations - duration_ticks).argmin())
        note = (int(staff), int(pitch), v.ids[f"Velocity_{int(v.velocities[vel_index])}"], dur_ids[dur_index],
                tuple(attributes))
        self.bars[bar].notes[pos].append(note)
        return True

    def ids(self) -> list[int]:
        v = self.vocab
        out: list[int] = []
        for bar, content in zip(self.grid.bars, self.bars, strict=True):
            out.append(v.ids[f"TimeSig_{bar.numerator}/{bar.denominator}"])
            positions = sorted(set(content.tempo) | set(content.pedals) | set(content.notes) | set(content.directions))
            for pos in positions:
                out.append(v.ids[f"Position_{pos}"])
                if pos in content.tempo:
                    out.append(content.tempo[pos])
                out += sorted(content.directions.get(pos, ()))
                for _, token_id in sorted(content.pedals.get(pos, ())):
                    out.append(token_id)
                staff = 1
                for note_staff, pitch, vel_id, dur_id, attributes in sorted(content.notes.get(pos, ())):
                    if note_staff != staff:
                        out.append(v.ids[f"Staff_{note_staff}"])
                        staff = note_staff
                    out += [v.ids[f"Pitch_{pitch}"], vel_id, dur_id, *attributes]
            out.append(specials.BAR)
        return out


def to_remi_order(ids: Sequence[int]) -> list[int]:
    """Our closing-Bar order -> MidiTok REMI's opening-Bar order (for ``tokenizer.decode``)."""
    out: list[int] = []
    current: list[int] = []
    for token in ids:
        if token == specials.BAR:
            out += [specials.BAR, *current]
            current = []
        else:
            current.append(token)
    if current:
        out += [specials.BAR, *current]
    return out


def one_key_one_note(notes: list[Note]) -> list[Note]:
    """Sorted notes in which a key is never struck while it still sounds.

    A piano key cannot be re-struck before it is released, and MIDI readers (partitura, players) drop or
    cut the second note-on of a sounding pitch. So a note ends at the latest where the next note of its
    pitch starts, and of two notes of one pitch at one tick only the louder (then longer) one is kept.
    """
    notes.sort(key=lambda n: (n.pitch, n.time, -n.velocity, -n.duration))
    kept: list[Note] = []
    for note in notes:
        previous = kept[-1] if kept and kept[-1].pitch == note.pitch else None
        if previous is not None and previous.time == note.time:
            continue
        if previous is not None and previous.time + previous.duration > note.time:
            previous.duration = note.time - previous.time
        kept.append(note)
    kept.sort(key=lambda n: (n.time, n.pitch))
    return kept


def decode_ids(ids: Sequence[int], vocab: Vocab) -> Score:
    """Token ids (closing-Bar order) -> ``symusic.Score`` in ticks with tempos, time signatures, pedal.

    Tolerant by design: unknown ids, tokens out of place and incomplete notes never raise. Decoding
    stops at the first EOS; PAD/BOS/MASK are skipped. A Position past the end of its bar is clamped.
    """
    score, _ = decode_ids_in_order(ids, vocab)
    track = score.tracks[0]
    track.notes = one_key_one_note(list(track.notes))
    add_sustain_controls(track)
    return score


def add_sustain_controls(track: Track) -> None:
    """symusic writes controls, not Pedal objects, to a MIDI file: the sustain pedal as CC64 too."""
    for pedal in track.pedals:
        track.controls.append(ControlChange(pedal.time, SUSTAIN_CC, 127, ttype=track.ttype))
        track.controls.append(ControlChange(pedal.time + pedal.duration, SUSTAIN_CC, 0, ttype=track.ttype))
    track.controls.sort(key=lambda c: (c.time, c.value))


def decode_ids_in_order(ids: Sequence[int], vocab: Vocab) -> tuple[Score, list[int]]:
    """:func:`decode_ids` before the one-key-one-note cleanup and the pedal controls: the notes in token order
    (one per Pitch token), and the bar of each, so that renderings of one score can be lined up note by note."""
    tokens = vocab.tokens
    tpq = vocab.ticks_per_quarter
    score = Score(tpq)
    track = Track(name="Piano", program=0, is_drum=False)
    tempos: dict[int, float] = {}
    signatures: list[tuple[int, int, int]] = []
    numerator, denominator = 4, 4
    bar_start, tick = 0, 0
    bar_has_position = False
    pedal_on: int | None = None
    last_velocity = DEFAULT_VELOCITY
    pending: list[int | None] | None = None  # [pitch, velocity, duration_ticks, tick]
    duration_table = vocab.duration_ticks_by_id
    end_tick = 0
    bar, note_bars = 0, []

    def bar_length() -> int:
        return numerator * vocab.ticks_per_beat(denominator)

    def flush() -> None:
        nonlocal pending, last_velocity, end_tick
        if pending is None:
            return
        pitch, velocity, duration, onset = pending
        velocity = last_velocity if velocity is None else velocity
        duration = vocab.ticks_per_beat(denominator) if duration is None else duration
        track.notes.append(Note(onset, max(int(duration), 1), pitch, int(velocity)))
        note_bars.append(bar)
        last_velocity = velocity
        end_tick = max(end_tick, onset + int(duration))
        pending = None

    for token_id in ids:
        token_id = int(token_id)
        if token_id == specials.EOS:
            break
        if token_id < specials.NUM_SPECIALS or token_id >= len(tokens):
            continue
        kind, _, value = tokens[token_id].partition("_")
        if kind in MARKING_KINDS:  # score markings: nothing to play, and a note's triple stays open across them
            continue
        if kind in ("Velocity", "Duration"):
            if pending is not None:
                if kind == "Velocity" and pending[1] is None:
                    pending[1] = int(value)
                elif kind == "Duration" and pending[2] is None:
                    beats, pos, res = duration_table[token_id]
                    pending[2] = (beats * res + pos) * vocab.ticks_per_beat(denominator) // res
                if pending[1] is not None and pending[2] is not None:
                    flush()
            continue
        flush()
        if kind == "Bar":
            bar += 1
            bar_start += bar_length()
            tick = bar_start
            bar_has_position = False
        elif kind == "TimeSig":
            if not bar_has_position:
                n, d = (int(x) for x in value.split("/"))
                if (n, d) != (numerator, denominator) or not signatures:
                    numerator, denominator = n, d
                    signatures.append((bar_start, n, d))
        elif kind == "Position":
            bar_has_position = True
            step = vocab.ticks_per_position(denominator)
            pos = min(int(value), bar_length() // step - 1)
            tick = bar_start + pos * step
        elif kind == "Tempo":
            tempos[tick] = float(value)
        elif kind == "Pedal":
            if pedal_on is None:
                pedal_on = tick
        elif kind == "PedalOff":
            if pedal_on is not None:
                if tick > pedal_on:
                    track.pedals.append(Pedal(pedal_on, tick - pedal_on))
                pedal_on = None
        elif kind == "Pitch":
            pending = [int(value), None, None, tick]
    flush()
    end_tick = max(end_tick, bar_start)
    if pedal_on is not None and end_tick > pedal_on:
        track.pedals.append(Pedal(pedal_on, end_tick - pedal_on))
    if not signatures or signatures[0][0] != 0:
        signatures.insert(0, (0, 4, 4))
    if 0 not in tempos:
        tempos[0] = DEFAULT_TEMPO if not tempos else tempos[min(tempos)]
    score.tempos = [Tempo(t, qpm) for t, qpm in sorted(tempos.items())]
    score.time_signatures = [TimeSignature(t, n, d) for t, n, d in signatures]
    score.tracks.append(track)
    return score, note_bars
