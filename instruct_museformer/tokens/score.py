"""Scores: loading (MusicXML/MEI/kern through partitura, score MIDI through symusic) and deadpan tokens.

A score is unfolded with ``unfold_part_maximal(merge_parts(parts))``, the unfolding (n)ASAP's note
ids (``n6-1``) refer to (read by :mod:`.score_reader`, which works around partitura's failures on files
from the wild), and reduced to what tokenization needs: notes in quarters of the unfolded score, its
measures, a tempo and dynamics. The deadpan rendering is the score in the same token language as
performances, on the same :class:`~.grid.BarGrid`: one tempo (the score's marking, else 100 bpm),
velocities from the score's dynamics (else mf), notated durations, no pedal.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import miditok
import numpy as np

from .errors import TokenizationError
from .grid import BarGrid, Measure
from .markings import ScoreMarkings, count_note_tokens, note_attributes, place_directions, read_markings_safely
from .remi import BarWriter
from .score_reader import read_unfolded_part
from .tokenizer import Vocab

PARTITURA_SUFFIXES = {".musicxml", ".mxl", ".xml", ".mei", ".krn", ".kern"}
MIDI_SUFFIXES = {".mid", ".midi"}
DEFAULT_SCORE_TEMPO = 100.0
DEFAULT_SCORE_VELOCITY = 72
GRACE_QUARTERS = 0.125

# Velocities for dynamic markings when partitura gives no Dynamic velocity.
DYNAMIC_VELOCITIES = {"pppp": 16, "ppp": 24, "pp": 36, "p": 48, "mp": 60, "mf": 72, "f": 84, "ff": 96,
                      "fff": 108, "ffff": 118}


@dataclass
class ScoreData:
    """A score reduced to what the tokenizer needs (times in quarters of the unfolded score)."""

    path: Path
    measures: list[Measure]
    onset: np.ndarray  # float64 (N,)
    duration: np.ndarray  # float64 (N,), grace notes get GRACE_QUARTERS
    pitch: np.ndarray  # int64 (N,)
    velocity: np.ndarray  # int64 (N,), from dynamics
    ids: list[str]  # note ids (partitura ids of the unfolded score; "" for MIDI)
    is_grace: np.ndarray  # bool (N,)
    tempo_qpm: float
    markings: ScoreMarkings | None = None  # what partitura read beyond the notes (None: a MIDI score)

    def id_to_onset(self) -> dict[str, float]:
        return {note_id: float(q) for note_id, q in zip(self.ids, self.onset, strict=True) if note_id}


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise TokenizationError("missing file", f"{path}: file not found")


def load_score(path: Path, score_annotations: Path | None = None, unfolding: str | None = None) -> ScoreData:
    """Load and unfold a score; TokenizationError ("missing file"/"parse error") names the file.

    ``unfolding``: a path through the score's repeats (:mod:`.unfolding`) instead of the maximal unfolding.

    The last few scores are cached (keyed by path, size and modification time): a corpus has several
    performances per score, and parsing a large MusicXML with partitura takes seconds. Callers must not
    modify the returned arrays.
    """
    path = Path(path)
    _check_file(path)
    key = [_file_key(path)]
    if score_annotations is not None:
        _check_file(Path(score_annotations))
        key.append(_file_key(Path(score_annotations)))
    key.append(unfolding)
    return _load_score_cached(tuple(key), path, None if score_annotations is None else Path(score_annotations),
                              unfolding)


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _load_score_cached(key: tuple, path: Path, score_annotations: Path | None, unfolding: str | None) -> ScoreData:
    suffix = path.suffix.lower()
    if suffix in MIDI_SUFFIXES:
        data = _load_midi_score(path, score_annotations)
    elif suffix in PARTITURA_SUFFIXES:
        data = _load_partitura_score(path, unfolding)
    else:
        raise TokenizationError(
            "parse error",
            f"{path}: unsupported score format '{path.suffix}' (use MusicXML, MEI, kern or MIDI)",
        )
    if len(data.pitch) == 0:
        raise TokenizationError("parse error", f"{path}: the score has no notes")
    if not data.measures:
        raise TokenizationError("parse error", f"{path}: the score has no measures")
    return data


def _load_partitura_score(path: Path, unfolding: str | None = None) -> ScoreData:
    import partitura as pt

    try:
        merged, part = read_unfolded_part(path, unfolding)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            notes = part.note_array(include_grace_notes=True)
            measures = list(part.measures)
            signatures = sorted(
                (ts.start.t, ts.beats, ts.beat_type) for ts in part.iter_all(pt.score.TimeSignature)
            )
            tempos = sorted(
                ((t.start.t, t.microseconds_per_quarter) for t in part.iter_all(pt.score.Tempo)),
                key=lambda x: x[0],
            )
            dynamics = _partitura_dynamics(part, pt)
            qmap = part.quarter_map
            markings = read_markings_safely(merged, part, path, notes)
    except TokenizationError:
        raise
    except Exception as error:  # partitura raises many types on malformed files
        raise TokenizationError("parse error", f"{path}: cannot read score ({type(error).__name__}: {error})") from None
    if len(notes) == 0:
        raise TokenizationError("parse error", f"{path}: the score has no notes")
    if not measures:
        raise TokenizationError("parse error", f"{path}: the score has no measures")
    starts = np.asarray(qmap([m.start.t for m in measures]), dtype=np.float64)
    ends = np.asarray(qmap([m.end.t for m in measures]), dtype=np.float64)
    sig_times = [s[0] for s in signatures]
    out_measures = []
    for m, start, end in zip(measures, starts, ends, strict=True):
        k = int(np.searchsorted(sig_times, m.start.t, side="right")) - 1
        n, d = (signatures[k][1], signatures[k][2]) if k >= 0 else (4, 4)
        out_measures.append(Measure(float(start), float(end), int(n), int(d)))
    out_measures.sort(key=lambda m: m.start)
    onset = notes["onset_quarter"].astype(np.float64)
    is_grace = notes["is_grace"].astype(bool) if "is_grace" in notes.dtype.names else np.zeros(len(notes), bool)
    duration = notes["duration_quarter"].astype(np.float64)
    duration = np.where(is_grace | (duration <= 0), GRACE_QUARTERS, duration)
    velocity = _velocity_at(dynamics, notes["onset_div"])
    qpm = DEFAULT_SCORE_TEMPO
    if tempos:
        candidate = 60e6 / float(tempos[0][1])
        if 20.0 <= candidate <= 300.0:
            qpm = candidate
    return ScoreData(path, out_measures, onset, duration, notes["pitch"].astype(np.int64), velocity,
                     [str(i) for i in notes["id"]], is_grace, qpm, markings)


def _partitura_dynamics(part, pt) -> list[tuple[int, int]]:
    """(time in divs, velocity) steps from the score's dynamic markings, in time order."""
    steps: list[tuple[int, int]] = []
    for dyn in part.iter_all(pt.score.Dynamic):
        velocity = getattr(dyn, "velocity", None)
        if velocity:
            steps.append((int(dyn.start.t), int(velocity)))
    if not steps:
        for direction in part.iter_all(pt.score.ConstantLoudnessDirection):
            velocity = DYNAMIC_VELOCITIES.get(str(getattr(direction, "text", "")).strip().lower())
            if velocity:
                steps.append((int(direction.start.t), velocity))
    steps.sort()
    return steps


def _velocity_at(steps: list[tuple[int, int]], times: np.ndarray) -> np.ndarray:
    if not steps:
        return np.full(len(times), DEFAULT_SCORE_VELOCITY, dtype=np.int64)
    step_times = np.array([s[0] for s in steps])
    values = np.array([s[1] for s in steps], dtype=np.int64)
    k = np.searchsorted(step_times, np.asarray(times), side="right") - 1
    return np.where(k >= 0, values[np.clip(k, 0, None)], values[0]).astype(np.int64)


def read_midi(path: Path, ttype: str):
    """symusic Score of a MIDI file; TokenizationError("parse error") for anything unreadable."""
    from symusic import Score

    _check_file(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
        if head != b"MThd":
            raise TokenizationError("parse error", f"{path}: not a MIDI file")
        return Score(str(path), ttype=ttype)
    except TokenizationError:
        raise
    except Exception as error:  # symusic raises RuntimeError/ValueError on corrupt files
        raise TokenizationError("parse error", f"{path}: corrupt MIDI file ({type(error).__name__}: {error})") from None


def midi_seconds_to_quarters(score_q) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, quarters) breakpoints of a quarter-time symusic Score's tempo map."""
    tempos = sorted((float(t.time), float(t.qpm)) for t in score_q.tempos) or [(0.0, 120.0)]
    if tempos[0][0] > 0:
        tempos.insert(0, (0.0, tempos[0][1]))
    quarters = [tempos[0][0]]
    seconds = [0.0]
    for (q0, qpm), (q1, _) in zip(tempos, tempos[1:], strict=False):
        quarters.append(q1)
        seconds.append(seconds[-1] + (q1 - q0) * 60.0 / qpm)
    # One far point past the end with the last tempo, so np.interp extends linearly.
    last_q, last_qpm = tempos[-1]
    quarters.append(quarters[-1] + 1e6)
    seconds.append(seconds[-1] + 1e6 * 60.0 / last_qpm)
    return np.asarray(seconds), np.asarray(quarters)


def read_beat_annotations(path: Path) -> list[tuple[float, str]]:
    """ASAP beat annotations (Audacity labels ``time<TAB>time<TAB>label``) as (seconds, label)."""
    _check_file(path)
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TokenizationError("parse error", f"{path}: cannot read annotations ({error})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            time = float(fields[0])
            label = fields[2].strip() if len(fields) > 2 else "b"
        except (ValueError, IndexError):
            raise TokenizationError("parse error", f"{path}:{number}: not a beat annotation line") from None
        out.append((time, label))
    if not out:
        raise TokenizationError("parse error", f"{path}: no beat annotations")
    out.sort(key=lambda x: x[0])
    return out


def _signature_of(label: str) -> tuple[int, int] | None:
    fields = label.split(",")
    if len(fields) >= 2 and "/" in fields[1]:
        try:
            n, d = (int(x) for x in fields[1].split("/"))
            return n, d
        except ValueError:
            return None
    return None


def _load_midi_score(path: Path, score_annotations: Path | None) -> ScoreData:
    score = read_midi(path, "quarter")
    notes = [n for track in score.tracks if not track.is_drum for n in track.notes]
    if not notes:
        raise TokenizationError("parse error", f"{path}: the score has no notes")
    onset = np.array([n.time for n in notes], dtype=np.float64)
    duration = np.array([max(n.duration, 0.0) for n in notes], dtype=np.float64)
    duration = np.where(duration <= 0, GRACE_QUARTERS, duration)
    pitch = np.array([n.pitch for n in notes], dtype=np.int64)
    velocity = np.array([n.velocity for n in notes], dtype=np.int64)
    end = float((onset + duration).max())
    signatures = sorted((float(ts.time), ts.numerator, ts.denominator) for ts in score.time_signatures)
    if score_annotations is not None:
        measures = _measures_from_annotations(score, read_beat_annotations(Path(score_annotations)), end)
    else:
        measures = _measures_from_signatures(signatures, end)
    tempos = sorted((float(t.time), float(t.qpm)) for t in score.tempos)
    qpm = tempos[0][1] if tempos and 20.0 <= tempos[0][1] <= 300.0 else DEFAULT_SCORE_TEMPO
    order = np.lexsort((pitch, onset))
    return ScoreData(path, measures, onset[order], duration[order], pitch[order], velocity[order],
                     [""] * len(order), np.zeros(len(order), bool), qpm)


def _measures_from_signatures(signatures: list[tuple[float, int, int]], end: float) -> list[Measure]:
    if not signatures or signatures[0][0] > 0:
        signatures = [(0.0, 4, 4), *signatures]
    measures: list[Measure] = []
    for k, (start, n, d) in enumerate(signatures):
        stop = signatures[k + 1][0] if k + 1 < len(signatures) else end
        length = 4.0 * n / d
        t = start
        while t < stop - 1e-9:
            measures.append(Measure(t, t + length, n, d))
            t += length
    return measures


def _measures_from_annotations(score_q, beats: list[tuple[float, str]], end: float) -> list[Measure]:
    """Measures of a MIDI score from its own beat annotations: a measure per downbeat (``db``)."""
    seconds, quarters = midi_seconds_to_quarters(score_q)
    times = np.interp([b[0] for b in beats], seconds, quarters)
    downbeats = [(float(q), label) for q, (_, label) in zip(times, beats, strict=True) if label.startswith("db")]
    if not downbeats:
        return []
    measures: list[Measure] = []
    signature = _signature_of(downbeats[0][1]) or (4, 4)
    if times[0] < downbeats[0][0] - 1e-6:  # pickup beats before the first downbeat
        measures.append(Measure(float(times[0]), downbeats[0][0], *signature))
    for k, (q, label) in enumerate(downbeats):
        signature = _signature_of(label) or signature
        stop = downbeats[k + 1][0] if k + 1 < len(downbeats) else max(q + 4.0 * signature[0] / signature[1], q)
        if stop > q:
            measures.append(Measure(q, stop, *signature))
    return measures


def score_grid(data: ScoreData, vocab: Vocab) -> BarGrid:
    try:
        return BarGrid.from_measures(data.measures, vocab)
    except ValueError as error:
        raise TokenizationError("parse error", f"{data.path}: {error}") from None


def encode_score(data: ScoreData, grid: BarGrid, tokenized: Counter | None = None) -> list[int]:
    """Deadpan tokens of a score on ``grid`` (see the module docstring), with its marking tokens when the
    vocabulary has them; ``tokenized`` receives how many markings of each type became tokens."""
    vocab = grid.vocab
    writer = BarWriter(grid)
    writer.add_tempo(0, 0, vocab.tempo_index(data.tempo_qpm))
    marks = data.markings if vocab.score_markings else None
    staffs, attributes = note_attributes(marks, data.ids, vocab.ids) if marks is not None else (None, None)
    onset_tick = grid.quarter_to_tick(data.onset)
    end_tick = grid.quarter_to_tick(data.onset + data.duration)
    bar, pos = grid.snap(onset_tick)
    snapped = grid.position_tick(bar, pos)
    written = []
    for i in range(len(data.pitch)):
        duration = max(end_tick[i] - snapped[i], vocab.ticks_per_quarter * GRACE_QUARTERS)
        extra = {} if staffs is None else {"staff": staffs[i], "attributes": attributes[i]}
        written.append(writer.add_note(int(bar[i]), int(pos[i]), int(data.pitch[i]), int(data.velocity[i]),
                                       float(duration), **extra))
    if marks is not None:
        counts = place_directions(writer, marks) + count_note_tokens(marks, data.ids, written)
        if tokenized is not None:
            tokenized.update(counts)
    return writer.ids()


def tokenize_score(score: Path, tokenizer: miditok.REMI) -> list[int]:
    """Deadpan token ids of a score file (for rendering a new score); UserError names a bad file."""
    data = load_score(Path(score))
    vocab = Vocab(tokenizer)
    return encode_score(data, score_grid(data, vocab))
